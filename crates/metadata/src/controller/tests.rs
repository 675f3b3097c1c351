//! The controller driven as its runtime will drive it: each decision's records are replayed into
//! the next image (one entry per decision, as Raft commits them), replies that need the commit
//! are resolved against it, and time is a number the test moves.

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::broker_registration_request::Feature;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    AllocateProducerIdsRequest, AllocateProducerIdsResponse, BrokerHeartbeatRequest,
    BrokerHeartbeatResponse, BrokerId, BrokerRegistrationRequest, BrokerRegistrationResponse,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, ElectLeadersRequest,
    ResponseKind, TopicName, UnregisterBrokerRequest, UnregisterBrokerResponse,
};
use uuid::Uuid;

use super::*;
use crate::image::{ConfigResource, MetadataDelta, Provenance};
use crate::records::{LeaderChange, METADATA_VERSION_FEATURE, RECORD_VERSION as V};

/// Every test's id source starts here; a failure names it so the run can be repeated.
const SEED: u64 = 0x5EED_0008;
const CLUSTER_ID: &str = "caudal-test-cluster";
const TIMEOUT_MS: i64 = ControllerConfig::DEFAULT_BROKER_SESSION_TIMEOUT_MS;

/// A controller and the image its committed decisions built.
struct Cluster {
    controller: Controller,
    image: Arc<MetadataImage>,
    now_ms: i64,
    /// Incarnation ids handed to brokers so far, to make new ones.
    incarnations: u128,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with_config(|_| {})
    }

    fn with_config(adjust: impl FnOnce(&mut ControllerConfig)) -> Cluster {
        eprintln!("controller test seed: {SEED:#x}");
        let mut config = ControllerConfig::new(0);
        adjust(&mut config);
        let mut cluster = Cluster {
            controller: Controller::new(config, IdSource::seeded(SEED)),
            image: Arc::new(MetadataImage::empty()),
            now_ms: 1_000,
            incarnations: 0,
        };
        cluster.commit(&[
            MetadataRecord::ClusterId {
                v: V,
                cluster_id: CLUSTER_ID.into(),
            },
            MetadataRecord::FeatureLevel {
                v: V,
                name: METADATA_VERSION_FEATURE.into(),
                level: 1,
            },
        ]);
        cluster.controller.activate(&cluster.image, cluster.now_ms);
        cluster
    }

    fn index(&self) -> i64 {
        self.image.provenance().index as i64
    }

    /// Commits `records` as the next entry. The controller must never write a record replay
    /// skips: that would be a decision the image does not reflect.
    fn commit(&mut self, records: &[MetadataRecord]) {
        let at = Provenance {
            index: self.image.provenance().index + 1,
            term: 1,
        };
        let mut delta = MetadataDelta::new(Arc::clone(&self.image));
        delta.advance(at);
        for record in records {
            if let Err(e) = delta.replay(record, at) {
                panic!("the controller wrote a record replay skips ({e}): {record:?}");
            }
        }
        self.image = Arc::new(delta.apply());
    }

    /// Decides, commits the records (if any) and answers, as the runtime will.
    fn handle(&mut self, request: ControllerRequest) -> (ResponseKind, Vec<MetadataRecord>) {
        let decision = self.controller.handle(&self.image, request, self.now_ms);
        if !decision.records.is_empty() {
            self.commit(&decision.records);
        }
        let response = match decision.reply {
            Reply::Now(response) => response,
            Reply::AtCommit(reply) => {
                assert!(
                    !decision.records.is_empty(),
                    "an answer at commit needs an entry to commit"
                );
                reply.resolve(self.image.provenance().index, &self.image)
            }
        };
        (response, decision.records)
    }

    fn tick(&mut self) -> Vec<MetadataRecord> {
        let records = self.controller.tick(&self.image, self.now_ms);
        if !records.is_empty() {
            self.commit(&records);
        }
        records
    }

    fn registration(&mut self, broker_id: i32, rack: Option<&str>) -> BrokerRegistrationRequest {
        self.incarnations += 1;
        BrokerRegistrationRequest::default()
            .with_broker_id(BrokerId(broker_id))
            .with_cluster_id(str_bytes(CLUSTER_ID))
            .with_incarnation_id(Uuid::from_u128(self.incarnations))
            .with_rack(rack.map(str_bytes))
            .with_features(vec![Feature::default()
                .with_name(str_bytes(METADATA_VERSION_FEATURE))
                .with_min_supported_version(1)
                .with_max_supported_version(1)])
    }

    fn register_with(
        &mut self,
        request: BrokerRegistrationRequest,
    ) -> (BrokerRegistrationResponse, Vec<MetadataRecord>) {
        match self.handle(ControllerRequest::RegisterBroker(request, 4)) {
            (ResponseKind::BrokerRegistration(r), records) => (r, records),
            (other, _) => panic!("not a registration response: {other:?}"),
        }
    }

    fn register(&mut self, broker_id: i32, rack: Option<&str>) -> i64 {
        let request = self.registration(broker_id, rack);
        let (response, _) = self.register_with(request);
        assert_eq!(response.error_code, 0, "registration of {broker_id}");
        response.broker_epoch
    }

    fn heartbeat_with(
        &mut self,
        request: BrokerHeartbeatRequest,
    ) -> (BrokerHeartbeatResponse, Vec<MetadataRecord>) {
        match self.handle(ControllerRequest::Heartbeat(request, 1)) {
            (ResponseKind::BrokerHeartbeat(r), records) => (r, records),
            (other, _) => panic!("not a heartbeat response: {other:?}"),
        }
    }

    fn heartbeat(&mut self, broker_id: i32, epoch: i64) -> BrokerHeartbeatResponse {
        let offset = self.index();
        self.heartbeat_with(beat(broker_id, epoch, offset)).0
    }

    /// A registered, caught-up, unfenced broker; its epoch.
    fn live_broker(&mut self, broker_id: i32, rack: Option<&str>) -> i64 {
        let epoch = self.register(broker_id, rack);
        let response = self.heartbeat(broker_id, epoch);
        assert!(!response.is_fenced, "broker {broker_id} should be unfenced");
        epoch
    }

    fn create(
        &mut self,
        topics: Vec<CreatableTopic>,
        validate_only: bool,
    ) -> (Vec<CreatableTopicResult>, Vec<MetadataRecord>) {
        let request = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_validate_only(validate_only);
        match self.handle(ControllerRequest::CreateTopics(request, 7)) {
            (ResponseKind::CreateTopics(r), records) => (r.topics, records),
            (other, _) => panic!("not a CreateTopics response: {other:?}"),
        }
    }

    fn create_one(&mut self, topic: CreatableTopic) -> CreatableTopicResult {
        let (mut results, _) = self.create(vec![topic], false);
        results.remove(0)
    }

    fn delete(&mut self, request: DeleteTopicsRequest, version: i16) -> Vec<DeletableTopicResult> {
        match self.handle(ControllerRequest::DeleteTopics(request, version)) {
            (ResponseKind::DeleteTopics(r), _) => r.responses,
            (other, _) => panic!("not a DeleteTopics response: {other:?}"),
        }
    }

    fn add_partitions(
        &mut self,
        topics: Vec<CreatePartitionsTopic>,
        validate_only: bool,
    ) -> Vec<(i16, String)> {
        let request = CreatePartitionsRequest::default()
            .with_topics(topics)
            .with_validate_only(validate_only);
        match self.handle(ControllerRequest::CreatePartitions(request, 3)) {
            (ResponseKind::CreatePartitions(r), _) => r
                .results
                .into_iter()
                .map(|r| {
                    (
                        r.error_code,
                        r.error_message.map(|m| m.to_string()).unwrap_or_default(),
                    )
                })
                .collect(),
            (other, _) => panic!("not a CreatePartitions response: {other:?}"),
        }
    }

    fn leaders(&self, name: &str) -> Vec<i32> {
        self.topic(name)
            .partitions
            .iter()
            .map(|p| p.leader)
            .collect()
    }

    fn topic(&self, name: &str) -> Arc<crate::image::TopicImage> {
        Arc::clone(
            self.image
                .topic_by_name(name)
                .unwrap_or_else(|| panic!("topic {name} should exist")),
        )
    }
}

fn beat(broker_id: i32, epoch: i64, offset: i64) -> BrokerHeartbeatRequest {
    BrokerHeartbeatRequest::default()
        .with_broker_id(BrokerId(broker_id))
        .with_broker_epoch(epoch)
        .with_current_metadata_offset(offset)
}

fn topic(name: &str, partitions: i32, replication_factor: i16) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(TopicName(str_bytes(name)))
        .with_num_partitions(partitions)
        .with_replication_factor(replication_factor)
}

fn assigned(name: &str, assignments: &[(i32, &[i32])]) -> CreatableTopic {
    topic(name, -1, -1).with_assignments(
        assignments
            .iter()
            .map(|(p, brokers)| {
                CreatableReplicaAssignment::default()
                    .with_partition_index(*p)
                    .with_broker_ids(brokers.iter().map(|b| BrokerId(*b)).collect())
            })
            .collect(),
    )
}

fn config(key: &str, value: Option<&str>) -> CreatableTopicConfig {
    CreatableTopicConfig::default()
        .with_name(str_bytes(key))
        .with_value(value.map(str_bytes))
}

fn message(result: &CreatableTopicResult) -> String {
    result
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// A cluster for the placement and ISR rules of replicated topics.
fn replicated() -> Cluster {
    Cluster::new()
}

// ---- registration ----

#[test]
fn a_registration_gets_its_entry_index_as_epoch_and_starts_fenced() {
    let mut cluster = Cluster::new();
    let request = cluster.registration(1, Some("r1"));
    let (response, records) = cluster.register_with(request);
    assert_eq!(response.error_code, 0);
    assert_eq!(records.len(), 1, "one RegisterBroker record: {records:?}");
    assert_eq!(response.broker_epoch, cluster.index());
    let broker = cluster.image.broker(1).expect("registered");
    assert!(broker.fenced, "a new registration is fenced");
    assert_eq!(broker.epoch, response.broker_epoch);
    assert_eq!(broker.rack.as_deref(), Some("r1"));
}

#[test]
fn a_retried_registration_gets_the_same_epoch_and_writes_nothing() {
    let mut cluster = Cluster::new();
    let request = cluster.registration(1, None);
    let (first, _) = cluster.register_with(request.clone());
    let (again, records) = cluster.register_with(request);
    assert_eq!(again.error_code, 0);
    assert_eq!(again.broker_epoch, first.broker_epoch);
    assert!(records.is_empty(), "a retry writes nothing: {records:?}");
}

#[test]
fn the_cluster_id_must_match_but_an_empty_one_is_adopted() {
    let mut cluster = Cluster::new();
    let request = cluster
        .registration(1, None)
        .with_cluster_id(str_bytes("another-cluster"));
    let (response, records) = cluster.register_with(request);
    assert_eq!(response.error_code, E::InconsistentClusterId.code());
    assert!(records.is_empty());
    let request = cluster.registration(1, None).with_cluster_id(str_bytes(""));
    let (response, _) = cluster.register_with(request);
    assert_eq!(
        response.error_code, 0,
        "a broker new to any cluster joins this one"
    );
}

#[test]
fn a_controller_only_voters_id_is_not_a_brokers() {
    let mut cluster = Cluster::with_config(|c| {
        c.controller_only_node_ids.insert(5);
    });
    let request = cluster.registration(5, None);
    let (response, records) = cluster.register_with(request);
    assert_eq!(response.error_code, E::InvalidRegistration.code());
    assert!(records.is_empty());
    assert_eq!(cluster.register(6, None), cluster.index());
}

#[test]
fn a_broker_must_support_the_current_metadata_version() {
    let mut cluster = Cluster::new();
    for (features, accepted) in [
        (vec![], false),
        (vec![(1, 1)], true),
        (vec![(0, 3)], true),
        (vec![(2, 3)], false),
        (vec![(0, 0)], false),
    ] {
        let request = cluster.registration(1, None).with_features(
            features
                .iter()
                .map(|(min, max)| {
                    Feature::default()
                        .with_name(str_bytes(METADATA_VERSION_FEATURE))
                        .with_min_supported_version(*min)
                        .with_max_supported_version(*max)
                })
                .collect(),
        );
        let (response, _) = cluster.register_with(request);
        let expected = if accepted {
            0
        } else {
            E::UnsupportedVersion.code()
        };
        assert_eq!(response.error_code, expected, "features {features:?}");
    }
}

#[test]
fn a_new_incarnation_takes_leadership_off_the_old_one_in_the_same_entry() {
    let mut cluster = Cluster::new();
    let old_epoch = cluster.live_broker(1, None);
    assert_eq!(cluster.create_one(topic("orders", 2, 1)).error_code, 0);
    assert_eq!(cluster.leaders("orders"), vec![1, 1]);

    // While the old incarnation's session is live, an unannounced second one is refused.
    let (response, records) = {
        let request = cluster.registration(1, None);
        cluster.register_with(request)
    };
    assert_eq!(response.error_code, E::DuplicateBrokerRegistration.code());
    assert!(records.is_empty());

    // A clean restart names the epoch it stopped at.
    let request = cluster
        .registration(1, None)
        .with_previous_broker_epoch(old_epoch);
    let (response, records) = cluster.register_with(request);
    assert_eq!(response.error_code, 0);
    assert!(response.broker_epoch > old_epoch);
    assert!(matches!(records[0], MetadataRecord::RegisterBroker { .. }));
    assert_eq!(
        records.len(),
        3,
        "RegisterBroker and one change per partition, in one entry: {records:?}"
    );
    assert_eq!(cluster.leaders("orders"), vec![-1, -1]);
    assert_eq!(
        cluster.topic("orders").partitions[0].isr,
        vec![1],
        "the last ISR member stays"
    );

    // Caught up, the new incarnation is unfenced and takes its partitions back.
    let response = cluster.heartbeat(1, response.broker_epoch);
    assert!(!response.is_fenced);
    assert_eq!(cluster.leaders("orders"), vec![1, 1]);
}

#[test]
fn a_new_incarnation_is_accepted_once_the_old_session_lapsed() {
    let mut cluster = Cluster::new();
    cluster.live_broker(1, None);
    cluster.now_ms += TIMEOUT_MS;
    let request = cluster.registration(1, None);
    let (response, _) = cluster.register_with(request);
    assert_eq!(
        response.error_code, 0,
        "the old process stopped heartbeating"
    );
}

// ---- heartbeats ----

#[test]
fn heartbeats_from_unknown_brokers_or_old_epochs_are_refused() {
    let mut cluster = Cluster::new();
    let (response, _) = cluster.heartbeat_with(beat(7, 1, 0));
    assert_eq!(response.error_code, E::BrokerIdNotRegistered.code());
    let epoch = cluster.register(1, None);
    let (response, records) = cluster.heartbeat_with(beat(1, epoch - 1, 100));
    assert_eq!(response.error_code, E::StaleBrokerEpoch.code());
    assert!(records.is_empty());
    assert!(cluster.image.broker(1).is_some_and(|b| b.fenced));
}

#[test]
fn a_broker_is_unfenced_once_caught_up_unless_it_asks_to_stay_fenced() {
    let mut cluster = Cluster::new();
    let epoch = cluster.register(1, None);

    let (response, records) = cluster.heartbeat_with(beat(1, epoch, epoch - 1));
    assert!(!response.is_caught_up && response.is_fenced);
    assert!(records.is_empty());

    let (response, records) = cluster.heartbeat_with(beat(1, epoch, epoch).with_want_fence(true));
    assert!(response.is_caught_up && response.is_fenced);
    assert!(records.is_empty(), "it asked to stay fenced");

    let (response, records) = cluster.heartbeat_with(beat(1, epoch, epoch));
    assert!(response.is_caught_up && !response.is_fenced);
    assert_eq!(
        records,
        vec![MetadataRecord::BrokerRegistrationChange {
            v: V,
            broker_id: 1,
            broker_epoch: epoch,
            fenced: Some(false),
            in_controlled_shutdown: None,
        }]
    );
    assert!(cluster.image.broker(1).is_some_and(|b| !b.fenced));

    let (response, records) = cluster.heartbeat_with(beat(1, epoch, epoch + 1));
    assert!(!response.is_fenced);
    assert!(records.is_empty(), "a plain heartbeat writes nothing");
}

#[test]
fn unfencing_elects_the_broker_where_it_is_the_only_isr_member_left() {
    let mut cluster = replicated();
    let e1 = cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2]), (1, &[2, 1])]))
            .error_code,
        0
    );
    // Broker 2 goes silent and is fenced; then broker 1 too: partition 0 and 1 keep ISR [1].
    cluster.now_ms += TIMEOUT_MS / 2;
    cluster.heartbeat(1, e1);
    cluster.now_ms += TIMEOUT_MS / 2;
    cluster.tick();
    assert_eq!(cluster.leaders("t"), vec![1, 1]);
    assert_eq!(cluster.topic("t").partitions[1].isr, vec![1]);
    cluster.now_ms += TIMEOUT_MS;
    cluster.tick();
    assert_eq!(cluster.leaders("t"), vec![-1, -1], "no alive ISR member");
    assert_eq!(cluster.topic("t").partitions[0].isr, vec![1]);

    // Broker 2 comes back first: it is not in the ISR, so it leads nothing (no unclean
    // election). Broker 1 comes back and takes both.
    let e2 = cluster.register(2, None);
    cluster.heartbeat(2, e2);
    assert_eq!(cluster.leaders("t"), vec![-1, -1]);
    let e1 = cluster.register(1, None);
    cluster.heartbeat(1, e1);
    assert_eq!(cluster.leaders("t"), vec![1, 1]);
}

// ---- session fencing ----

#[test]
fn a_silent_broker_is_fenced_at_exactly_the_session_timeout() {
    let mut cluster = Cluster::new();
    let epoch = cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    assert_eq!(cluster.create_one(topic("t", 4, 1)).error_code, 0);
    let led_by_1 = cluster.leaders("t").iter().filter(|l| **l == 1).count();
    assert!(led_by_1 > 0, "placement gave broker 1 some leaders");

    let last_contact = cluster.now_ms;
    cluster.now_ms += 500;
    cluster.heartbeat(2, cluster.image.broker(2).map_or(0, |b| b.epoch));
    assert_eq!(
        cluster.controller.next_deadline(),
        Some(last_contact + TIMEOUT_MS)
    );

    cluster.now_ms = last_contact + TIMEOUT_MS - 1;
    assert!(cluster.tick().is_empty(), "one millisecond early");
    assert!(cluster.image.broker(1).is_some_and(|b| !b.fenced));

    cluster.now_ms = last_contact + TIMEOUT_MS;
    let records = cluster.tick();
    assert_eq!(
        records[0],
        MetadataRecord::BrokerRegistrationChange {
            v: V,
            broker_id: 1,
            broker_epoch: epoch,
            fenced: Some(true),
            in_controlled_shutdown: None,
        }
    );
    assert_eq!(records.len(), 1 + led_by_1, "one change per led partition");
    assert!(cluster.image.broker(1).is_some_and(|b| b.fenced));
    assert!(
        !cluster.leaders("t").contains(&1),
        "a fenced broker leads nothing"
    );
    // Broker 2's session is next; broker 1's is done until it speaks again.
    assert_eq!(
        cluster.controller.next_deadline(),
        Some(last_contact + 500 + TIMEOUT_MS)
    );
    assert!(cluster.tick().is_empty(), "fenced once");
}

#[test]
fn a_failover_controller_starts_every_session_afresh() {
    let mut cluster = Cluster::new();
    for id in 1..=3 {
        cluster.live_broker(id, None);
    }
    let last_contact = cluster.now_ms;
    // The old controller would fence all three at the timeout...
    let mut old = Controller::new(ControllerConfig::new(0), IdSource::seeded(SEED));
    old.activate(&cluster.image, last_contact);
    assert_eq!(
        old.tick(&cluster.image, last_contact + TIMEOUT_MS)
            .iter()
            .filter(|r| matches!(r, MetadataRecord::BrokerRegistrationChange { .. }))
            .count(),
        3
    );
    // ...but a controller activated later counts from its own activation.
    let activated = last_contact + TIMEOUT_MS - 100;
    cluster.controller = Controller::new(ControllerConfig::new(1), IdSource::seeded(SEED + 1));
    cluster.controller.activate(&cluster.image, activated);
    cluster.now_ms = last_contact + TIMEOUT_MS;
    assert!(cluster.tick().is_empty(), "no mass fencing at failover");
    cluster.now_ms = activated + TIMEOUT_MS - 1;
    assert!(cluster.tick().is_empty());
    cluster.now_ms = activated + TIMEOUT_MS;
    assert_eq!(
        cluster.tick().len(),
        3,
        "silent brokers are fenced one timeout later"
    );
    assert_eq!(cluster.image.live_brokers().count(), 0);
}

#[test]
fn fencing_two_brokers_in_one_tick_keeps_the_isr_from_emptying() {
    let mut cluster = replicated();
    for id in 1..=3 {
        cluster.live_broker(id, None);
    }
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2, 3]), (1, &[2, 1, 3])]))
            .error_code,
        0
    );
    // Broker 3 keeps heartbeating; 1 and 2 fall silent together.
    cluster.now_ms += TIMEOUT_MS;
    let e3 = cluster.image.broker(3).map_or(0, |b| b.epoch);
    cluster.heartbeat(3, e3);
    cluster.tick();
    for p in &cluster.topic("t").partitions {
        assert_eq!(p.leader, 3, "{p:?}");
        assert_eq!(p.isr, vec![3], "{p:?}");
    }
    // Now broker 3 goes too: it is the last ISR member and stays in it, leaderless.
    cluster.now_ms += TIMEOUT_MS;
    cluster.tick();
    for p in &cluster.topic("t").partitions {
        assert_eq!((p.leader, p.isr.clone()), (-1, vec![3]), "{p:?}");
    }
}

#[test]
fn a_broker_asking_to_be_fenced_is_fenced_and_hands_over() {
    let mut cluster = Cluster::new();
    let epoch = cluster.live_broker(1, None);
    assert_eq!(cluster.create_one(topic("t", 2, 1)).error_code, 0);
    let offset = cluster.index();
    let (response, records) = cluster.heartbeat_with(beat(1, epoch, offset).with_want_fence(true));
    assert!(response.is_fenced);
    assert_eq!(
        records.len(),
        3,
        "the fence and two leader changes: {records:?}"
    );
    assert_eq!(cluster.leaders("t"), vec![-1, -1]);
}

#[test]
fn a_tick_stops_at_the_bound_and_the_rest_stay_due() {
    let mut cluster = Cluster::with_config(|c| c.max_records_per_decision = 4);
    for id in 1..=3 {
        cluster.live_broker(id, None);
    }
    assert_eq!(cluster.create_one(topic("t", 3, 1)).error_code, 0);
    cluster.now_ms += TIMEOUT_MS;
    let mut fenced_per_tick = Vec::new();
    for _ in 0..5 {
        if cluster
            .controller
            .next_deadline()
            .is_none_or(|d| d > cluster.now_ms)
        {
            break;
        }
        let records = cluster.tick();
        assert!(records.len() <= 4 + 1 + 3, "bounded: {records:?}");
        fenced_per_tick.push(
            records
                .iter()
                .filter(|r| matches!(r, MetadataRecord::BrokerRegistrationChange { .. }))
                .count(),
        );
    }
    assert!(
        fenced_per_tick.len() > 1,
        "more than one tick: {fenced_per_tick:?}"
    );
    assert_eq!(fenced_per_tick.iter().sum::<usize>(), 3);
    assert_eq!(cluster.image.live_brokers().count(), 0);
}

// ---- controlled shutdown ----

#[test]
fn controlled_shutdown_moves_leaders_before_the_broker_may_stop() {
    let mut cluster = replicated();
    let e1 = cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2]), (1, &[2, 1])]))
            .error_code,
        0
    );
    assert_eq!(
        cluster
            .create_one(assigned("solo", &[(0, &[1])]))
            .error_code,
        0
    );
    let (response, records) =
        cluster.heartbeat_with(beat(1, e1, cluster.index()).with_want_shut_down(true));
    assert!(!response.should_shut_down && !response.is_fenced);
    assert!(matches!(
        records[0],
        MetadataRecord::BrokerRegistrationChange {
            in_controlled_shutdown: Some(true),
            ..
        }
    ));
    assert_eq!(cluster.leaders("t"), vec![2, 2]);
    assert_eq!(
        cluster.leaders("solo"),
        vec![-1],
        "a single replica goes offline"
    );
    let partitions = &cluster.topic("t").partitions;
    assert_eq!(partitions[0].isr, vec![2]);
    assert_eq!(partitions[1].isr, vec![2]);
    assert_eq!(
        cluster.topic("solo").partitions[0].isr,
        vec![1],
        "the last ISR member stays"
    );
    let moved_at = cluster.index();

    // It has not yet seen the moves: keep going.
    let (response, records) = cluster.heartbeat_with(beat(1, e1, moved_at - 1));
    assert!(!response.should_shut_down);
    assert!(records.is_empty());
    // It has: it may stop, and is fenced.
    let (response, records) = cluster.heartbeat_with(beat(1, e1, moved_at));
    assert!(response.should_shut_down && response.is_fenced);
    assert!(matches!(
        records[0],
        MetadataRecord::BrokerRegistrationChange {
            fenced: Some(true),
            ..
        }
    ));
    assert!(cluster.image.broker(1).is_some_and(|b| b.fenced));
    // And it stays told.
    let (response, records) = cluster.heartbeat_with(beat(1, e1, cluster.index()));
    assert!(response.should_shut_down);
    assert!(records.is_empty());
}

#[test]
fn a_broker_in_controlled_shutdown_leads_no_new_partition() {
    let mut cluster = Cluster::new();
    let e1 = cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    cluster.heartbeat_with(beat(1, e1, cluster.index()).with_want_shut_down(true));
    assert_eq!(cluster.create_one(topic("t", 6, 1)).error_code, 0);
    assert_eq!(cluster.leaders("t"), vec![2; 6]);
}

#[test]
fn a_fenced_broker_may_shut_down_at_once() {
    let mut cluster = Cluster::new();
    let epoch = cluster.register(1, None);
    let (response, records) = cluster.heartbeat_with(beat(1, epoch, 0).with_want_shut_down(true));
    assert!(response.should_shut_down && response.is_fenced);
    assert!(records.is_empty());
}

// ---- unregistration ----

#[test]
fn unregistering_removes_the_broker_and_its_leaderships() {
    let mut cluster = Cluster::with_config(|c| c.auto_leader_rebalance = false);
    cluster.live_broker(1, None);
    assert_eq!(cluster.create_one(topic("t", 1, 1)).error_code, 0);
    let request = UnregisterBrokerRequest::default().with_broker_id(BrokerId(1));
    let (response, _) = cluster.handle(ControllerRequest::UnregisterBroker(request.clone(), 0));
    assert_eq!(
        response,
        ResponseKind::UnregisterBroker(UnregisterBrokerResponse::default())
    );
    assert!(cluster.image.broker(1).is_none());
    assert_eq!(cluster.leaders("t"), vec![-1]);
    assert_eq!(cluster.controller.next_deadline(), None, "no session left");
    match cluster
        .handle(ControllerRequest::UnregisterBroker(request, 0))
        .0
    {
        ResponseKind::UnregisterBroker(r) => {
            assert_eq!(r.error_code, E::BrokerIdNotRegistered.code())
        }
        other => panic!("{other:?}"),
    }
}

// ---- leader elections ----

fn elect(
    cluster: &mut Cluster,
    election: ElectionType,
    partitions: Option<&[(&str, &[i32])]>,
) -> Vec<(String, i32, i16)> {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    let request = ElectLeadersRequest::default()
        .with_election_type(election.code())
        .with_topic_partitions(partitions.map(|ps| {
            ps.iter()
                .map(|(t, p)| {
                    TopicPartitions::default()
                        .with_topic(TopicName(str_bytes(*t)))
                        .with_partitions(p.to_vec())
                })
                .collect()
        }));
    match cluster
        .handle(ControllerRequest::ElectLeaders(request, 2))
        .0
    {
        ResponseKind::ElectLeaders(r) => {
            assert_eq!(r.error_code, 0);
            r.replica_election_results
                .iter()
                .flat_map(|t| {
                    t.partition_result
                        .iter()
                        .map(|p| (t.topic.to_string(), p.partition_id, p.error_code))
                })
                .collect()
        }
        other => panic!("not an ElectLeaders response: {other:?}"),
    }
}

/// Brokers 1 to 3 with topic `t` on replicas [1, 2, 3] (preferred leader 1), whose leadership
/// moved to 2 when 1 was fenced; 1 is back, unfenced but out of the ISR.
fn moved_leader(auto_rebalance: bool) -> (Cluster, i64) {
    let mut cluster = Cluster::with_config(|c| c.auto_leader_rebalance = auto_rebalance);
    let e1 = cluster.live_broker(1, None);
    let e2 = cluster.live_broker(2, None);
    let e3 = cluster.live_broker(3, None);
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2, 3])]))
            .error_code,
        0
    );
    cluster.now_ms += TIMEOUT_MS / 2;
    cluster.heartbeat(2, e2);
    cluster.heartbeat(3, e3);
    cluster.now_ms += TIMEOUT_MS / 2;
    cluster.tick();
    assert_eq!(cluster.leaders("t"), vec![2]);
    assert_eq!(cluster.topic("t").partitions[0].isr, vec![2, 3]);
    let _ = e1;
    let e1 = cluster.register(1, None);
    cluster.heartbeat(1, e1);
    cluster.heartbeat(2, e2);
    cluster.heartbeat(3, e3);
    (cluster, e1)
}

/// The leader takes broker 1 back into the ISR, as it does once 1 caught up.
fn rejoin(cluster: &mut Cluster, broker_id: i32) {
    use kafka_protocol::messages::alter_partition_request::{PartitionData, TopicData};
    let t = cluster.topic("t");
    let p = &t.partitions[0];
    let mut isr = p.isr.clone();
    isr.push(broker_id);
    let request = kafka_protocol::messages::AlterPartitionRequest::default()
        .with_broker_id(BrokerId(p.leader))
        .with_broker_epoch(-1)
        .with_topics(vec![TopicData::default()
            .with_topic_id(t.id)
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_leader_epoch(p.leader_epoch)
                .with_partition_epoch(p.partition_epoch)
                .with_new_isr(isr.into_iter().map(BrokerId).collect())])]);
    cluster.handle(ControllerRequest::AlterPartition(request, 2));
}

#[test]
fn a_preferred_election_needs_the_preferred_replica_in_the_isr() {
    let (mut cluster, _) = moved_leader(false);
    let asked: &[(&str, &[i32])] = &[("t", &[0]), ("t", &[7]), ("nope", &[0])];
    assert_eq!(
        elect(&mut cluster, ElectionType::Preferred, Some(asked)),
        vec![
            ("t".into(), 0, E::PreferredLeaderNotAvailable.code()),
            ("t".into(), 7, E::UnknownTopicOrPartition.code()),
            ("nope".into(), 0, E::UnknownTopicOrPartition.code()),
        ]
    );
    rejoin(&mut cluster, 1);
    let epoch = cluster.topic("t").partitions[0].leader_epoch;
    assert_eq!(
        elect(&mut cluster, ElectionType::Preferred, Some(&[("t", &[0])])),
        vec![("t".into(), 0, 0)]
    );
    assert_eq!(cluster.leaders("t"), vec![1]);
    assert_eq!(cluster.topic("t").partitions[0].leader_epoch, epoch + 1);
    assert_eq!(
        elect(&mut cluster, ElectionType::Preferred, Some(&[("t", &[0])])),
        vec![("t".into(), 0, E::ElectionNotNeeded.code())]
    );
    // With no partitions named, those needing nothing are left out.
    assert_eq!(elect(&mut cluster, ElectionType::Preferred, None), vec![]);
}

#[test]
fn an_unclean_election_takes_a_live_replica_outside_the_isr_only_when_leaderless() {
    let mut cluster = Cluster::with_config(|c| c.auto_leader_rebalance = false);
    let e1 = cluster.live_broker(1, None);
    let e2 = cluster.live_broker(2, None);
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2])]))
            .error_code,
        0
    );
    assert_eq!(
        elect(&mut cluster, ElectionType::Unclean, Some(&[("t", &[0])])),
        vec![("t".into(), 0, E::ElectionNotNeeded.code())],
        "a partition with a leader needs no unclean election"
    );
    // Broker 2 is fenced (ISR [1]), then broker 1: leaderless, ISR [1].
    cluster.now_ms += TIMEOUT_MS / 2;
    cluster.heartbeat(1, e1);
    cluster.now_ms += TIMEOUT_MS / 2;
    cluster.tick();
    cluster.now_ms += TIMEOUT_MS;
    cluster.tick();
    assert_eq!(cluster.leaders("t"), vec![-1]);
    assert_eq!(
        elect(&mut cluster, ElectionType::Unclean, None),
        vec![("t".into(), 0, E::EligibleLeadersNotAvailable.code())],
        "no replica alive"
    );
    let _ = e2;
    let e2 = cluster.register(2, None);
    cluster.heartbeat(2, e2);
    assert_eq!(cluster.leaders("t"), vec![-1], "no clean leader");
    assert_eq!(
        elect(&mut cluster, ElectionType::Preferred, None),
        vec![("t".into(), 0, E::PreferredLeaderNotAvailable.code())]
    );
    assert_eq!(
        elect(&mut cluster, ElectionType::Unclean, None),
        vec![("t".into(), 0, 0)]
    );
    assert_eq!(cluster.leaders("t"), vec![2]);
    assert_eq!(cluster.topic("t").partitions[0].isr, vec![2]);
}

#[test]
fn an_unknown_election_type_is_an_invalid_request() {
    let mut cluster = Cluster::new();
    let request = ElectLeadersRequest::default().with_election_type(5);
    match cluster.handle(ControllerRequest::ElectLeaders(request, 1)) {
        (ResponseKind::ElectLeaders(r), records) => {
            assert_eq!(r.error_code, E::InvalidRequest.code());
            assert!(records.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn balancing_gives_leadership_back_to_the_preferred_replica_at_the_interval() {
    let interval = ControllerConfig::DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS;
    let (mut cluster, e1) = moved_leader(true);
    rejoin(&mut cluster, 1);
    assert_eq!(cluster.leaders("t"), vec![2]);
    // The first pass is due one interval after activation (at 1_000).
    let due = 1_000 + interval;
    assert!(cluster.controller.next_deadline().is_some_and(|d| d <= due));
    // Keep the sessions alive up to the pass.
    while cluster.now_ms + TIMEOUT_MS / 2 < due {
        cluster.now_ms += TIMEOUT_MS / 2;
        for b in 1..=3 {
            let epoch = cluster.image.broker(b).map_or(e1, |r| r.epoch);
            cluster.heartbeat(b, epoch);
        }
        assert!(cluster.tick().is_empty(), "nothing due before the pass");
    }
    cluster.now_ms = due;
    let records = cluster.tick();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(cluster.leaders("t"), vec![1]);
    assert_eq!(
        cluster.controller.next_deadline().map(|d| d > due),
        Some(true)
    );
}

#[test]
fn balancing_leaves_a_partition_whose_preferred_replica_cannot_lead() {
    // Broker 1 is back and alive but not in the ISR: the pass runs and moves nothing.
    let (mut cluster, _) = moved_leader(true);
    let due = 1_000 + ControllerConfig::DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS;
    while cluster.now_ms + TIMEOUT_MS / 2 < due {
        cluster.now_ms += TIMEOUT_MS / 2;
        for b in 1..=3 {
            let epoch = cluster.image.broker(b).map_or(0, |r| r.epoch);
            cluster.heartbeat(b, epoch);
        }
        assert!(cluster.tick().is_empty());
    }
    cluster.now_ms = due;
    assert!(cluster.tick().is_empty(), "nothing to give back");
    assert_eq!(cluster.leaders("t"), vec![2]);
    assert_eq!(cluster.topic("t").partitions[0].isr, vec![2, 3]);
    assert!(
        cluster.controller.next_deadline().is_some_and(|d| d > due),
        "the pass ran and the next one is an interval away"
    );
}

// ---- CreateTopics ----

#[test]
fn create_topics_writes_the_topic_its_partitions_and_its_configs() {
    let mut cluster = Cluster::new();
    for id in 1..=3 {
        cluster.live_broker(id, None);
    }
    let (results, records) = cluster.create(
        vec![topic("orders", 6, -1).with_configs(vec![config("retention.ms", Some("60000"))])],
        false,
    );
    let result = &results[0];
    assert_eq!(result.error_code, 0, "{}", message(result));
    assert_eq!((result.num_partitions, result.replication_factor), (6, 1));
    assert_eq!(records.len(), 1 + 6 + 1);
    let orders = cluster.topic("orders");
    assert_eq!(result.topic_id, orders.id);
    assert_eq!(orders.partitions.len(), 6);
    for id in 1..=3 {
        assert_eq!(
            cluster
                .leaders("orders")
                .iter()
                .filter(|l| **l == id)
                .count(),
            2,
            "leaders spread evenly (seed {SEED:#x})"
        );
    }
    for p in &orders.partitions {
        assert_eq!(p.isr, p.replicas);
        assert_eq!(p.leader, p.replicas[0]);
    }
    assert_eq!(
        cluster
            .image
            .config(&ConfigResource::topic("orders"))
            .and_then(|c| c.get("retention.ms"))
            .map(String::as_str),
        Some("60000")
    );
    let configs = result.configs.as_ref().expect("v5+ echoes configs");
    assert_eq!(configs.len(), 1);
    // Defaults: -1 partitions is the configured default.
    let result = cluster.create_one(topic("defaults", -1, -1));
    assert_eq!((result.error_code, result.num_partitions), (0, 1));
}

#[test]
fn validate_only_answers_without_writing() {
    let mut cluster = Cluster::new();
    cluster.live_broker(1, None);
    let (results, records) = cluster.create(vec![topic("t", 3, 1)], true);
    assert_eq!(results[0].error_code, 0);
    assert_eq!(results[0].num_partitions, 3);
    assert!(records.is_empty());
    assert!(cluster.image.topic_by_name("t").is_none());
}

#[test]
fn create_topics_refuses_bad_names_with_kafkas_codes() {
    let mut cluster = Cluster::new();
    cluster.live_broker(1, None);
    assert_eq!(cluster.create_one(topic("a.b", 1, 1)).error_code, 0);
    let long = "x".repeat(250);
    for (name, code) in [
        ("", E::InvalidTopicException),
        (".", E::InvalidTopicException),
        ("..", E::InvalidTopicException),
        ("with space", E::InvalidTopicException),
        ("slash/x", E::InvalidTopicException),
        (long.as_str(), E::InvalidTopicException),
        (METADATA_TOPIC, E::InvalidTopicException),
        ("a.b", E::TopicAlreadyExists),
        ("a_b", E::InvalidTopicException),
    ] {
        let result = cluster.create_one(topic(name, 1, 1));
        assert_eq!(
            result.error_code,
            code.code(),
            "{name:?}: {}",
            message(&result)
        );
        assert!(!message(&result).is_empty(), "{name:?} needs a message");
    }
    assert!(message(&cluster.create_one(topic("a_b", 1, 1))).contains("collides"));
    assert_eq!(
        cluster.create_one(topic(&"x".repeat(249), 1, 1)).error_code,
        0
    );
}

#[test]
fn names_in_one_request_are_checked_against_each_other() {
    let mut cluster = Cluster::new();
    cluster.live_broker(1, None);
    let (results, _) = cluster.create(
        vec![
            topic("dup", 1, 1),
            topic("dup", 1, 1),
            topic("x.y", 1, 1),
            topic("x_y", 1, 1),
            topic("ok", 1, 1),
        ],
        false,
    );
    let codes: Vec<i16> = results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            E::InvalidRequest.code(),
            E::InvalidRequest.code(),
            0,
            E::InvalidTopicException.code(),
            0
        ]
    );
    assert!(cluster.image.topic_by_name("dup").is_none());
    assert!(
        cluster.image.topic_by_name("ok").is_some(),
        "one bad topic fails only itself"
    );
}

#[test]
fn create_topics_refuses_bad_counts_and_factors() {
    let mut cluster = Cluster::new();
    let (results, _) = cluster.create(vec![topic("t", 1, 1)], false);
    assert_eq!(
        results[0].error_code,
        E::InvalidReplicationFactor.code(),
        "no unfenced broker to lead"
    );
    cluster.live_broker(1, None);
    for (partitions, factor, code) in [
        (0, 1, E::InvalidPartitions),
        (-2, 1, E::InvalidPartitions),
        (1, 0, E::InvalidReplicationFactor),
        (1, -2, E::InvalidReplicationFactor),
        (1, 2, E::InvalidReplicationFactor),
    ] {
        let result = cluster.create_one(topic("t", partitions, factor));
        assert_eq!(result.error_code, code.code(), "{partitions} x {factor}");
    }
    cluster.live_broker(2, None);
    let result = cluster.create_one(topic("t", 1, 3));
    assert_eq!(
        result.error_code,
        E::InvalidReplicationFactor.code(),
        "three replicas on two brokers"
    );
    let mut capped = Cluster::with_config(|c| c.max_replication_factor = 1);
    capped.live_broker(1, None);
    capped.live_broker(2, None);
    let result = capped.create_one(topic("t", 1, 2));
    assert_eq!(result.error_code, E::InvalidReplicationFactor.code());
    assert!(
        message(&result).contains("above the largest served, 1"),
        "{}",
        message(&result)
    );
    // The core places any factor once it is allowed.
    let mut cluster = replicated();
    cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    let result = cluster.create_one(topic("t", 2, 3));
    assert_eq!(
        result.error_code,
        E::InvalidReplicationFactor.code(),
        "3 replicas, 2 brokers"
    );
    assert_eq!(cluster.create_one(topic("t", 2, 2)).error_code, 0);
    for p in &cluster.topic("t").partitions {
        assert_eq!(p.replicas.len(), 2);
    }
}

#[test]
fn explicit_assignments_follow_kafkas_rules() {
    let mut cluster = replicated();
    cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    cluster.register(3, None); // registered, fenced
    for (assignments, code, why) in [
        (
            &[(0, &[1][..]), (2, &[2][..])][..],
            E::InvalidReplicaAssignment,
            "gap",
        ),
        (
            &[(1, &[1][..])][..],
            E::InvalidReplicaAssignment,
            "not from 0",
        ),
        (
            &[(0, &[1][..]), (0, &[2][..])][..],
            E::InvalidReplicaAssignment,
            "twice",
        ),
        (
            &[(0, &[1, 1][..])][..],
            E::InvalidReplicaAssignment,
            "broker twice",
        ),
        (
            &[(0, &[1, 9][..])][..],
            E::InvalidReplicaAssignment,
            "unregistered",
        ),
        (
            &[(0, &[1][..]), (1, &[1, 2][..])][..],
            E::InvalidReplicaAssignment,
            "uneven",
        ),
        (&[(0, &[][..])][..], E::InvalidReplicaAssignment, "empty"),
        (
            &[(0, &[3][..])][..],
            E::InvalidReplicaAssignment,
            "all fenced",
        ),
    ] {
        let result = cluster.create_one(assigned("t", assignments));
        assert_eq!(
            result.error_code,
            code.code(),
            "{why}: {}",
            message(&result)
        );
    }
    let result = cluster.create_one(assigned("t", &[(0, &[1][..])]).with_num_partitions(1));
    assert_eq!(result.error_code, E::InvalidRequest.code());

    let result = cluster.create_one(assigned("t", &[(1, &[3, 2][..]), (0, &[2, 1][..])]));
    assert_eq!(result.error_code, 0, "{}", message(&result));
    assert_eq!((result.num_partitions, result.replication_factor), (2, 2));
    let t = cluster.topic("t");
    assert_eq!(t.partitions[0].replicas, vec![2, 1]);
    assert_eq!(
        (t.partitions[1].leader, t.partitions[1].isr.clone()),
        (2, vec![2]),
        "a fenced replica is not in sync and does not lead"
    );

    // Above the served factor, an assignment is refused like a factor.
    let mut cluster = Cluster::with_config(|c| c.max_replication_factor = 1);
    cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    let result = cluster.create_one(assigned("t", &[(0, &[1, 2][..])]));
    assert_eq!(result.error_code, E::InvalidReplicationFactor.code());
}

#[test]
fn configs_are_checked() {
    fn check(key: &str, value: &str) -> Result<String, String> {
        match key {
            "retention.ms" => value
                .parse::<i64>()
                .map(|v| v.to_string())
                .map_err(|_| format!("{key} must be a whole number")),
            _ => Err(format!("unknown topic config {key}")),
        }
    }
    let mut cluster = Cluster::with_config(|c| c.topic_config_check = Some(check));
    cluster.live_broker(1, None);
    for (configs, accepted) in [
        (vec![config("retention.ms", None)], false),
        (vec![config("retention.ms", Some("soon"))], false),
        (vec![config("bogus", Some("1"))], false),
        (
            vec![
                config("retention.ms", Some("1")),
                config("retention.ms", Some("2")),
            ],
            false,
        ),
        (vec![config("", Some("1"))], false),
        (vec![config("retention.ms", Some("5"))], true),
    ] {
        let result = cluster.create_one(topic("t", 1, 1).with_configs(configs.clone()));
        let expected = if accepted { 0 } else { E::InvalidConfig.code() };
        assert_eq!(
            result.error_code,
            expected,
            "{configs:?}: {}",
            message(&result)
        );
    }
}

#[test]
fn a_decision_is_bounded() {
    let mut cluster = Cluster::with_config(|c| c.max_records_per_decision = 10);
    cluster.live_broker(1, None);
    let result = cluster.create_one(topic("big", 10, 1));
    assert_eq!(result.error_code, E::InvalidPartitions.code());
    assert!(message(&result).contains("at most") || message(&result).contains("more than 10"));
    let (results, records) = cluster.create(vec![topic("a", 5, 1), topic("b", 5, 1)], false);
    assert_eq!(results[0].error_code, 0);
    assert_eq!(
        results[1].error_code,
        E::InvalidPartitions.code(),
        "the bound is per decision"
    );
    assert_eq!(records.len(), 6);
    assert_eq!(cluster.create_one(topic("nine", 9, 1)).error_code, 0);
    // Bytes are bounded too: a config value can be large.
    let mut small = Cluster::with_config(|c| c.max_bytes_per_decision = 2_000);
    small.live_broker(1, None);
    let big = "x".repeat(3_000);
    let result = small.create_one(topic("t", 1, 1).with_configs(vec![config("k", Some(&big))]));
    assert_eq!(result.error_code, E::InvalidRequest.code());
    assert!(
        message(&result).contains("2000 bytes"),
        "{}",
        message(&result)
    );
    assert_eq!(small.create_one(topic("t", 1, 1)).error_code, 0);
    // A huge count is refused before anything is placed.
    assert_eq!(
        cluster.create_one(topic("huge", i32::MAX, 1)).error_code,
        E::InvalidPartitions.code()
    );
}

#[test]
fn topic_ids_repeat_with_the_seed() {
    let run = || {
        let mut cluster = Cluster::new();
        cluster.live_broker(1, None);
        cluster.create_one(topic("t", 1, 1)).topic_id
    };
    let id = run();
    assert_eq!(id, run(), "seed {SEED:#x}");
    assert_eq!(id.get_version_num(), 4);
}

// ---- DeleteTopics ----

#[test]
fn delete_topics_by_name_or_id() {
    let mut cluster = Cluster::new();
    cluster.live_broker(1, None);
    for name in ["a", "b", "__consumer_offsets"] {
        assert_eq!(cluster.create_one(topic(name, 2, 1)).error_code, 0);
    }
    let b = cluster.topic("b").id;
    let results = cluster.delete(
        DeleteTopicsRequest::default().with_topic_names(vec![
            TopicName(str_bytes("a")),
            TopicName(str_bytes("missing")),
            TopicName(str_bytes("__consumer_offsets")),
        ]),
        5,
    );
    let codes: Vec<i16> = results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            0,
            E::UnknownTopicOrPartition.code(),
            E::InvalidTopicException.code()
        ]
    );
    assert!(cluster.image.topic_by_name("a").is_none());

    let by_id = |id: Uuid| DeleteTopicState::default().with_topic_id(id);
    let results = cluster.delete(
        DeleteTopicsRequest::default().with_topics(vec![
            by_id(Uuid::from_u128(42)),
            by_id(b).with_name(Some(TopicName(str_bytes("b")))),
            by_id(b),
            by_id(b),
        ]),
        6,
    );
    let codes: Vec<i16> = results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            E::UnknownTopicId.code(),
            E::InvalidRequest.code(),
            0,
            E::InvalidRequest.code()
        ]
    );
    assert_eq!(
        results[2].name.as_ref().map(|n| n.0.to_string()),
        Some("b".to_string()),
        "a deletion by id names the topic"
    );
    assert!(cluster.image.topic(b).is_none());
    // The name is free again.
    assert_eq!(cluster.create_one(topic("b", 1, 1)).error_code, 0);
}

// ---- CreatePartitions ----

fn grow(name: &str, count: i32) -> CreatePartitionsTopic {
    CreatePartitionsTopic::default()
        .with_name(TopicName(str_bytes(name)))
        .with_count(count)
}

#[test]
fn create_partitions_continues_the_stripe() {
    let mut cluster = Cluster::new();
    for id in 1..=3 {
        cluster.live_broker(id, None);
    }
    assert_eq!(cluster.create_one(topic("t", 2, 1)).error_code, 0);
    let results = cluster.add_partitions(vec![grow("t", 6)], false);
    assert_eq!(results, vec![(0, String::new())]);
    let leaders = cluster.leaders("t");
    assert_eq!(leaders.len(), 6);
    for id in 1..=3 {
        assert_eq!(
            leaders.iter().filter(|l| **l == id).count(),
            2,
            "as spread as if created with 6: {leaders:?} (seed {SEED:#x})"
        );
    }
    let results = cluster.add_partitions(vec![grow("t", 7)], true);
    assert_eq!(results[0].0, 0);
    assert_eq!(cluster.topic("t").partitions.len(), 6, "validate only");
}

#[test]
fn create_partitions_refuses_with_kafkas_codes() {
    let mut cluster = Cluster::new();
    cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    cluster.register(3, None);
    assert_eq!(cluster.create_one(topic("t", 2, 1)).error_code, 0);
    let with = |count: i32, assignments: &[&[i32]]| {
        grow("t", count).with_assignments(Some(
            assignments
                .iter()
                .map(|a| {
                    CreatePartitionsAssignment::default()
                        .with_broker_ids(a.iter().map(|b| BrokerId(*b)).collect())
                })
                .collect(),
        ))
    };
    for (request, code) in [
        (grow("missing", 3), E::UnknownTopicOrPartition),
        (grow("t", 1), E::InvalidPartitions),
        (grow("t", 2), E::InvalidPartitions),
        (with(4, &[&[1]]), E::InvalidReplicaAssignment),
        (with(3, &[&[1, 2]]), E::InvalidReplicaAssignment),
        (with(3, &[&[9]]), E::InvalidReplicaAssignment),
        (with(3, &[&[3]]), E::InvalidReplicaAssignment),
    ] {
        let results = cluster.add_partitions(vec![request.clone()], false);
        assert_eq!(results[0].0, code.code(), "{request:?}: {}", results[0].1);
    }
    let results = cluster.add_partitions(vec![grow("t", 3), grow("t", 4)], false);
    assert_eq!(results[0].0, E::InvalidRequest.code());
    assert_eq!(cluster.topic("t").partitions.len(), 2);

    let results = cluster.add_partitions(vec![with(4, &[&[2], &[1]])], false);
    assert_eq!(results[0].0, 0, "{}", results[0].1);
    let t = cluster.topic("t");
    assert_eq!(t.partitions[2].replicas, vec![2]);
    assert_eq!(t.partitions[3].leader, 1);
}

// ---- producer ids ----

#[test]
fn producer_ids_come_in_blocks_that_never_overlap() {
    let mut cluster = Cluster::new();
    let e1 = cluster.live_broker(1, None);
    let e2 = cluster.live_broker(2, None);
    let allocate =
        |cluster: &mut Cluster, broker: i32, epoch: i64| -> AllocateProducerIdsResponse {
            let request = AllocateProducerIdsRequest::default()
                .with_broker_id(BrokerId(broker))
                .with_broker_epoch(epoch);
            match cluster
                .handle(ControllerRequest::AllocateProducerIds(request, 0))
                .0
            {
                ResponseKind::AllocateProducerIds(r) => r,
                other => panic!("{other:?}"),
            }
        };
    let first = allocate(&mut cluster, 1, e1);
    let second = allocate(&mut cluster, 2, e2);
    assert_eq!(
        (
            first.error_code,
            first.producer_id_start.0,
            first.producer_id_len
        ),
        (0, 0, 1000)
    );
    assert_eq!(
        (second.producer_id_start.0, second.producer_id_len),
        (1000, 1000)
    );
    assert_eq!(cluster.image.next_producer_id(), 2000);
    assert_eq!(
        allocate(&mut cluster, 1, e1 - 1).error_code,
        E::StaleBrokerEpoch.code()
    );
    assert_eq!(
        allocate(&mut cluster, 9, 1).error_code,
        E::BrokerIdNotRegistered.code()
    );
    assert_eq!(cluster.image.next_producer_id(), 2000);
}

// ---- the shared name rule ----

#[test]
fn topic_names_follow_kafkas_rules() {
    for good in ["a", "orders", "my.topic_v2-x", &"x".repeat(249)] {
        assert_eq!(validate_topic_name(good), Ok(()), "{good}");
    }
    assert_eq!(validate_topic_name(""), Err(InvalidTopicName::Empty));
    assert_eq!(
        validate_topic_name(".."),
        Err(InvalidTopicName::DotOrDotDot)
    );
    assert_eq!(
        validate_topic_name(&"x".repeat(250)),
        Err(InvalidTopicName::TooLong(250))
    );
    assert_eq!(
        validate_topic_name("emoji😀"),
        Err(InvalidTopicName::IllegalCharacter)
    );
    assert_eq!(
        validate_topic_name(METADATA_TOPIC),
        Err(InvalidTopicName::Reserved)
    );
}

#[test]
fn replayed_leader_changes_bump_epochs_once_per_move() {
    // The records the controller writes are what the image follows: a move is one change.
    let mut cluster = replicated();
    cluster.live_broker(1, None);
    cluster.live_broker(2, None);
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2])]))
            .error_code,
        0
    );
    cluster.now_ms += TIMEOUT_MS;
    let e2 = cluster.image.broker(2).map_or(0, |b| b.epoch);
    cluster.heartbeat(2, e2);
    let records = cluster.tick();
    assert!(records.contains(&MetadataRecord::PartitionChange {
        v: V,
        topic_id: cluster.topic("t").id,
        partition: 0,
        leader: LeaderChange::To(2),
        isr: Some(vec![2]),
        replicas: None,
        elr: None,
    }));
    let p = &cluster.topic("t").partitions[0];
    assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (2, 1, 1));
}

// ---- reassignments ----

/// Asks for partition `index` of `name` to move to `replicas` (`None`: cancel); its error code.
fn reassign(cluster: &mut Cluster, name: &str, index: i32, replicas: Option<&[i32]>) -> i16 {
    reassign_with(cluster, name, index, replicas, 0, false).0
}

fn reassign_with(
    cluster: &mut Cluster,
    name: &str,
    index: i32,
    replicas: Option<&[i32]>,
    version: i16,
    allow_factor_change: bool,
) -> (i16, Vec<MetadataRecord>) {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    let request = kafka_protocol::messages::AlterPartitionReassignmentsRequest::default()
        .with_allow_replication_factor_change(allow_factor_change)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(str_bytes(name)))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(index)
                .with_replicas(
                    replicas.map(|r| r.iter().copied().map(BrokerId).collect()),
                )])]);
    match cluster.handle(ControllerRequest::AlterPartitionReassignments(
        request, version,
    )) {
        (ResponseKind::AlterPartitionReassignments(r), records) => {
            assert_eq!(r.error_code, 0);
            (r.responses[0].partitions[0].error_code, records)
        }
        other => panic!("not an AlterPartitionReassignments response: {other:?}"),
    }
}

/// One partition's reassignment as ListPartitionReassignments gives it: topic, partition,
/// replicas, adding, removing.
type Ongoing = (String, i32, Vec<i32>, Vec<i32>, Vec<i32>);

/// ListPartitionReassignments of `topics` (every partition of each), or of all: its error code
/// and what it lists.
fn list_reassignments(cluster: &mut Cluster, topics: Option<&[&str]>) -> (i16, Vec<Ongoing>) {
    use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
    let request = kafka_protocol::messages::ListPartitionReassignmentsRequest::default()
        .with_topics(topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    ListPartitionReassignmentsTopics::default()
                        .with_name(TopicName(str_bytes(*n)))
                        .with_partition_indexes(vec![0])
                })
                .collect()
        }));
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
    match cluster.handle(ControllerRequest::ListPartitionReassignments(request, 0)) {
        (ResponseKind::ListPartitionReassignments(r), records) => {
            assert!(records.is_empty(), "a list decides nothing");
            let listed = r
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(|p| {
                        (
                            t.name.0.to_string(),
                            p.partition_index,
                            ids(&p.replicas),
                            ids(&p.adding_replicas),
                            ids(&p.removing_replicas),
                        )
                    })
                })
                .collect();
            (r.error_code, listed)
        }
        other => panic!("not a ListPartitionReassignments response: {other:?}"),
    }
}

/// The leader of partition 0 of `name` asks for every alive replica in the ISR; the error code
/// of its answer, if it has a leader.
fn catch_up(cluster: &mut Cluster, name: &str) -> Option<i16> {
    propose_isr(cluster, name, true)
}

/// The leader of partition 0 of `name` asks for every alive replica in the ISR (`grow`: as once
/// they have caught up) or for itself alone (as once the others fell behind); its error code,
/// `None` when the partition has no leader.
fn propose_isr(cluster: &mut Cluster, name: &str, grow: bool) -> Option<i16> {
    use kafka_protocol::messages::alter_partition_request::{
        BrokerState, PartitionData, TopicData,
    };
    let t = Arc::clone(cluster.image.topic_by_name(name)?);
    let p = &t.partitions[0];
    if p.leader < 0 {
        return None;
    }
    let alive = |b: &i32| {
        cluster
            .image
            .broker(*b)
            .is_some_and(|r| !r.fenced && !r.in_controlled_shutdown)
    };
    let isr: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|b| *b == p.leader || (grow && alive(b)))
        .collect();
    let request = kafka_protocol::messages::AlterPartitionRequest::default()
        .with_broker_id(BrokerId(p.leader))
        .with_broker_epoch(-1)
        .with_topics(vec![TopicData::default()
            .with_topic_id(t.id)
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_leader_epoch(p.leader_epoch)
                .with_partition_epoch(p.partition_epoch)
                .with_new_isr_with_epochs(
                    isr.into_iter()
                        .map(|b| {
                            BrokerState::default()
                                .with_broker_id(BrokerId(b))
                                .with_broker_epoch(-1)
                        })
                        .collect(),
                )])]);
    match cluster
        .handle(ControllerRequest::AlterPartition(request, 3))
        .0
    {
        ResponseKind::AlterPartition(r) => Some(
            r.topics
                .first()
                .and_then(|t| t.partitions.first())
                .map_or(r.error_code, |p| p.error_code),
        ),
        other => panic!("not an AlterPartition response: {other:?}"),
    }
}

#[test]
fn a_reassignment_adds_first_and_removes_once_the_new_replicas_are_in_sync() {
    let mut cluster = replicated();
    for b in 1..=3 {
        cluster.live_broker(b, None);
    }
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2])]))
            .error_code,
        0
    );
    assert_eq!(reassign(&mut cluster, "t", 0, Some(&[3, 2])), 0);
    let p = cluster.topic("t").partitions[0].clone();
    assert_eq!(
        (
            p.replicas.as_slice(),
            p.adding.as_slice(),
            p.removing.as_slice()
        ),
        (&[3, 2, 1][..], &[3][..], &[1][..])
    );
    assert_eq!(
        (p.leader, p.isr.as_slice()),
        (1, &[1, 2][..]),
        "leader and ISR untouched"
    );
    assert_eq!(
        list_reassignments(&mut cluster, None),
        (
            0,
            vec![("t".to_string(), 0, vec![3, 2, 1], vec![3], vec![1])]
        )
    );
    assert_eq!(
        list_reassignments(&mut cluster, Some(&["t"])),
        list_reassignments(&mut cluster, None)
    );
    assert_eq!(
        list_reassignments(&mut cluster, Some(&["t", "missing"])).0,
        E::UnknownTopicOrPartition.code()
    );
    // A snapshot keeps the reassignment.
    let mut fresh = Cluster::new();
    fresh.image = Arc::new(MetadataImage::empty());
    fresh.commit(&crate::image::writer::image_records(&cluster.image));
    assert_eq!(fresh.topic("t").partitions[0], p);

    // Broker 3 caught up: the leader takes it in, the reassignment completes in the same
    // change, and leader 1, removed, hands over to the first new replica.
    let epoch = p.leader_epoch;
    assert_eq!(
        catch_up(&mut cluster, "t"),
        Some(E::NewLeaderElected.code())
    );
    let p = cluster.topic("t").partitions[0].clone();
    assert_eq!(
        (p.replicas.as_slice(), p.isr.as_slice(), p.leader),
        (&[3, 2][..], &[3, 2][..], 3)
    );
    assert!(!p.is_reassigning());
    assert_eq!(p.leader_epoch, epoch + 1);
    assert_eq!(list_reassignments(&mut cluster, None), (0, vec![]));
    assert_eq!(
        reassign(&mut cluster, "t", 0, None),
        E::NoReassignmentInProgress.code()
    );
}

#[test]
fn a_reassignment_that_only_removes_completes_at_once_and_a_cancel_reverts() {
    let mut cluster = replicated();
    for b in 1..=4 {
        cluster.live_broker(b, None);
    }
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2, 3])]))
            .error_code,
        0
    );
    assert_eq!(reassign(&mut cluster, "t", 0, Some(&[2, 1])), 0);
    let p = cluster.topic("t").partitions[0].clone();
    assert_eq!(
        (p.replicas.as_slice(), p.isr.as_slice(), p.leader),
        (&[2, 1][..], &[1, 2][..], 1)
    );
    assert!(!p.is_reassigning());

    assert_eq!(reassign(&mut cluster, "t", 0, Some(&[4, 1])), 0);
    assert!(cluster.topic("t").partitions[0].is_reassigning());
    assert_eq!(reassign(&mut cluster, "t", 0, None), 0);
    // Back to the replicas before, in the order the move kept them (as Kafka reverts).
    let p = cluster.topic("t").partitions[0].clone();
    assert_eq!(
        (p.replicas.as_slice(), p.isr.as_slice(), p.leader),
        (&[1, 2][..], &[1, 2][..], 1)
    );
    assert!(!p.is_reassigning());
}

#[test]
fn reassignments_are_refused_with_kafkas_codes() {
    let mut cluster = replicated();
    for b in 1..=3 {
        cluster.live_broker(b, None);
    }
    assert_eq!(
        cluster
            .create_one(assigned("t", &[(0, &[1, 2])]))
            .error_code,
        0
    );
    let bad = E::InvalidReplicaAssignment.code();
    assert_eq!(
        reassign(&mut cluster, "t", 0, Some(&[])),
        bad,
        "no replicas"
    );
    assert_eq!(
        reassign(&mut cluster, "t", 0, Some(&[3, 3])),
        bad,
        "a broker twice"
    );
    assert_eq!(
        reassign(&mut cluster, "t", 0, Some(&[9])),
        bad,
        "an unknown broker"
    );
    assert_eq!(
        reassign(&mut cluster, "t", 1, Some(&[1])),
        E::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        reassign(&mut cluster, "nope", 0, Some(&[1])),
        E::UnknownTopicOrPartition.code()
    );
    // v1 may forbid changing the replication factor; v0 always allows it.
    let (code, records) = reassign_with(&mut cluster, "t", 0, Some(&[1, 2, 3]), 1, false);
    assert_eq!(
        (code, records.len()),
        (E::InvalidReplicationFactor.code(), 0)
    );
    assert_eq!(
        reassign_with(&mut cluster, "t", 0, Some(&[1, 2, 3]), 1, true).0,
        0
    );
}

// ---- any history ----

mod histories {
    use std::collections::{BTreeSet, HashMap};

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Register(i32),
        Heartbeat {
            broker: i32,
            caught_up: bool,
        },
        WantShutDown(i32),
        WantFence(i32),
        Unregister(i32),
        Advance(i64),
        CreateTopic {
            partitions: i32,
            replication_factor: i16,
            /// With `min.insync.replicas` 2, so that eligible leader replicas come into play.
            strict: bool,
        },
        /// Reassign partition 0 of the `topic`th topic to `replicas` (`None`: cancel).
        Reassign {
            topic: usize,
            replicas: Option<Vec<i32>>,
        },
        /// The leader of partition 0 of the `topic`th topic takes every alive replica into
        /// the ISR, as once they have caught up.
        CatchUp(usize),
        /// The leader of partition 0 of the `topic`th topic drops every other replica from the
        /// ISR, as once they fell behind.
        FallBehind(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let broker = 1..=4i32;
        prop_oneof![
            2 => broker.clone().prop_map(Op::Register),
            6 => (broker.clone(), any::<bool>())
                .prop_map(|(broker, caught_up)| Op::Heartbeat { broker, caught_up }),
            1 => broker.clone().prop_map(Op::WantShutDown),
            1 => broker.clone().prop_map(Op::WantFence),
            1 => broker.prop_map(Op::Unregister),
            2 => (1..=TIMEOUT_MS).prop_map(Op::Advance),
            2 => (1..=4i32, 1..=3i16, any::<bool>()).prop_map(
                |(partitions, replication_factor, strict)| Op::CreateTopic {
                    partitions,
                    replication_factor,
                    strict,
                }
            ),
            2 => (0..4usize, proptest::option::weighted(0.8, vec(1..=4i32, 1..=3)))
                .prop_map(|(topic, replicas)| Op::Reassign { topic, replicas }),
            3 => (0..4usize).prop_map(Op::CatchUp),
            1 => (0..4usize).prop_map(Op::FallBehind),
        ]
    }

    /// What must hold of every image the controller's records build.
    fn check_invariants(image: &MetadataImage) -> Result<(), TestCaseError> {
        let alive = |b: i32| {
            image
                .broker(b)
                .is_some_and(|r| !r.fenced && !r.in_controlled_shutdown)
        };
        for topic in image.topics() {
            for (index, p) in topic.partitions.iter().enumerate() {
                let at = format!("{}-{index}: {p:?}", topic.name);
                prop_assert!(!p.isr.is_empty(), "the ISR never empties: {}", at);
                prop_assert!(
                    p.isr.iter().all(|b| p.replicas.contains(b)),
                    "the ISR is made of replicas: {}",
                    at
                );
                prop_assert!(
                    p.adding
                        .iter()
                        .chain(&p.removing)
                        .all(|b| p.replicas.contains(b))
                        && !p.adding.iter().any(|b| p.removing.contains(b)),
                    "replicas being added and removed are replicas, and not both: {}",
                    at
                );
                prop_assert!(
                    !p.is_reassigning() || !p.target_replicas().iter().all(|b| p.isr.contains(b)),
                    "a reassignment whose target is all in the ISR has completed: {}",
                    at
                );
                prop_assert!(
                    p.elr
                        .iter()
                        .all(|b| p.replicas.contains(b) && !p.isr.contains(b)),
                    "eligible leader replicas are replicas outside the ISR: {}",
                    at
                );
                if p.leader >= 0 {
                    prop_assert!(
                        p.isr.contains(&p.leader),
                        "the leader is in the ISR: {}",
                        at
                    );
                    prop_assert!(alive(p.leader), "the leader is alive: {}", at);
                } else {
                    prop_assert!(
                        !p.isr.iter().chain(&p.elr).any(|b| alive(*b)),
                        "a leaderless partition has no alive ISR member or eligible replica: {}",
                        at
                    );
                }
            }
        }
        Ok(())
    }

    /// Which replicas of each partition hold everything committed, as the controller cannot
    /// see but a model can: all replicas at creation; while the ISR has `min.insync.replicas`
    /// members the high watermark may move, so only they; below that it stands still, so those
    /// who held it still do, and so does whoever the leader vouches caught up.
    #[derive(Default)]
    struct Committed {
        holders: HashMap<(String, usize), BTreeSet<i32>>,
        strict: BTreeSet<String>,
    }

    impl Committed {
        fn min_isr(&self, topic: &str) -> usize {
            if self.strict.contains(topic) {
                2
            } else {
                1
            }
        }

        /// Whoever the leader of partition 0 of `topic` took into the ISR has caught up.
        fn caught_up(&mut self, image: &MetadataImage, topic: &str) {
            if let Some(p) = image.topic_by_name(topic).map(|t| t.partitions[0].clone()) {
                if let Some(holders) = self.holders.get_mut(&(topic.to_string(), 0)) {
                    holders.extend(&p.isr);
                }
            }
        }

        /// Checks that every leader holds everything committed, then moves the model on.
        fn check_and_advance(&mut self, image: &MetadataImage) -> Result<(), TestCaseError> {
            for topic in image.topics() {
                let min_isr = self.min_isr(&topic.name);
                for (index, p) in topic.partitions.iter().enumerate() {
                    let holders = self
                        .holders
                        .entry((topic.name.clone(), index))
                        .or_insert_with(|| p.replicas.iter().copied().collect());
                    prop_assert!(
                        p.leader < 0 || holders.contains(&p.leader),
                        "{}-{index}: leader {} may lack committed data (holders {holders:?}): {p:?}",
                        topic.name,
                        p.leader
                    );
                    if p.isr.len() >= min_isr {
                        *holders = p.isr.iter().copied().collect();
                    } else {
                        holders.extend(&p.isr);
                    }
                    holders.retain(|b| p.replicas.contains(b));
                }
            }
            Ok(())
        }
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut cluster = replicated();
        let mut topics = 0;
        let mut committed = Committed::default();
        for op in ops {
            let epoch = |cluster: &Cluster, b: i32| cluster.image.broker(b).map_or(1, |r| r.epoch);
            match op {
                Op::Register(b) => {
                    let request = cluster.registration(b, None);
                    cluster.register_with(request);
                }
                Op::Heartbeat { broker, caught_up } => {
                    let offset = if caught_up { cluster.index() } else { 0 };
                    let e = epoch(&cluster, broker);
                    cluster.heartbeat_with(beat(broker, e, offset));
                }
                Op::WantShutDown(b) => {
                    let e = epoch(&cluster, b);
                    let offset = cluster.index();
                    cluster.heartbeat_with(beat(b, e, offset).with_want_shut_down(true));
                }
                Op::WantFence(b) => {
                    let e = epoch(&cluster, b);
                    let offset = cluster.index();
                    cluster.heartbeat_with(beat(b, e, offset).with_want_fence(true));
                }
                Op::Unregister(b) => {
                    let request = UnregisterBrokerRequest::default().with_broker_id(BrokerId(b));
                    cluster.handle(ControllerRequest::UnregisterBroker(request, 0));
                }
                Op::Advance(ms) => cluster.now_ms += ms,
                Op::CreateTopic {
                    partitions,
                    replication_factor,
                    strict,
                } => {
                    topics += 1;
                    let name = format!("t{topics}");
                    let mut t = topic(&name, partitions, replication_factor);
                    if strict {
                        t = t.with_configs(vec![config("min.insync.replicas", Some("2"))]);
                        committed.strict.insert(name);
                    }
                    cluster.create_one(t);
                }
                Op::Reassign { topic, replicas } => {
                    if topic < topics {
                        reassign(
                            &mut cluster,
                            &format!("t{}", topic + 1),
                            0,
                            replicas.as_deref(),
                        );
                    }
                }
                Op::CatchUp(topic) => {
                    if topic < topics {
                        let name = format!("t{}", topic + 1);
                        catch_up(&mut cluster, &name);
                        committed.caught_up(&cluster.image, &name);
                    }
                }
                Op::FallBehind(topic) => {
                    if topic < topics {
                        propose_isr(&mut cluster, &format!("t{}", topic + 1), false);
                    }
                }
            }
            // The runtime ticks whenever a deadline has passed.
            for _ in 0..8 {
                match cluster.controller.next_deadline() {
                    Some(deadline) if deadline <= cluster.now_ms => {
                        cluster.tick();
                    }
                    _ => break,
                }
            }
            prop_assert!(
                cluster
                    .controller
                    .next_deadline()
                    .is_none_or(|d| d > cluster.now_ms),
                "a due deadline is dealt with"
            );
            check_invariants(&cluster.image)?;
            committed.check_and_advance(&cluster.image)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any history of registrations, heartbeats, shutdowns, silences and creations leaves
        /// every partition with a non-empty ISR of its replicas and a live leader from it, or
        /// no leader only when no ISR member is alive. (Replay panics if the controller ever
        /// writes a record it would skip.)
        #[test]
        fn leadership_invariants_hold_under_any_broker_history(ops in vec(op(), 1..60)) {
            run(ops)?;
        }
    }
}

// ---- AlterPartition ----

mod alter_partition {
    use kafka_protocol::messages::alter_partition_request::{
        BrokerState, PartitionData, TopicData,
    };
    use kafka_protocol::messages::{AlterPartitionRequest, AlterPartitionResponse};

    use super::*;
    use crate::image::PartitionRegistration;

    /// Three live brokers and topic "t" with partition 0 on [1, 2, 3], led by 1, ISR [1, 2, 3].
    fn cluster() -> (Cluster, Uuid, [i64; 3]) {
        let mut cluster = replicated();
        let epochs = [1, 2, 3].map(|id| cluster.live_broker(id, None));
        assert_eq!(
            cluster
                .create_one(assigned("t", &[(0, &[1, 2, 3])]))
                .error_code,
            0
        );
        let id = cluster.topic("t").id;
        (cluster, id, epochs)
    }

    fn partition(cluster: &Cluster) -> PartitionRegistration {
        let p = &cluster.topic("t").partitions[0];
        PartitionRegistration {
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            adding: Vec::new(),
            removing: Vec::new(),
            elr: p.elr.clone(),
        }
    }

    /// Broker `sender` asks for ISR `isr` (with broker epochs) at the partition's epochs.
    fn ask(
        cluster: &mut Cluster,
        topic_id: Uuid,
        sender: (i32, i64),
        isr: &[(i32, i64)],
        adjust: impl FnOnce(PartitionData) -> PartitionData,
    ) -> (AlterPartitionResponse, Vec<MetadataRecord>) {
        let current = partition(cluster);
        let data = PartitionData::default()
            .with_partition_index(0)
            .with_leader_epoch(current.leader_epoch)
            .with_partition_epoch(current.partition_epoch)
            .with_new_isr_with_epochs(
                isr.iter()
                    .map(|(b, e)| {
                        BrokerState::default()
                            .with_broker_id(BrokerId(*b))
                            .with_broker_epoch(*e)
                    })
                    .collect(),
            );
        let request = AlterPartitionRequest::default()
            .with_broker_id(BrokerId(sender.0))
            .with_broker_epoch(sender.1)
            .with_topics(vec![TopicData::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![adjust(data)])]);
        match cluster.handle(ControllerRequest::AlterPartition(request, 3)) {
            (ResponseKind::AlterPartition(r), records) => (r, records),
            (other, _) => panic!("not an AlterPartition response: {other:?}"),
        }
    }

    /// The partition's error code; 0 when the whole request was refused (no partitions).
    fn code(response: &AlterPartitionResponse) -> i16 {
        response
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(0, |p| p.error_code)
    }

    #[test]
    fn the_leader_shrinks_and_grows_the_isr_and_each_change_moves_the_partition_epoch() {
        let (mut cluster, id, [e1, e2, e3]) = cluster();
        let before = partition(&cluster);
        let (response, records) = ask(&mut cluster, id, (1, e1), &[(1, -1), (2, e2)], |p| p);
        assert_eq!(code(&response), 0, "{response:?}");
        assert_eq!(records.len(), 1, "{records:?}");
        let after = partition(&cluster);
        assert_eq!(after.isr, vec![1, 2]);
        assert_eq!(after.partition_epoch, before.partition_epoch + 1);
        assert_eq!(
            after.leader_epoch, before.leader_epoch,
            "an ISR change keeps the leader epoch"
        );
        let answered = &response.topics[0].partitions[0];
        assert_eq!(answered.partition_epoch, after.partition_epoch);
        assert_eq!(answered.isr, vec![BrokerId(1), BrokerId(2)]);
        let (response, _) = ask(
            &mut cluster,
            id,
            (1, e1),
            &[(1, -1), (2, e2), (3, e3)],
            |p| p,
        );
        assert_eq!(code(&response), 0);
        assert_eq!(partition(&cluster).isr, vec![1, 2, 3]);
        // The same ISR again: nothing written, the same partition epoch.
        let epoch = partition(&cluster).partition_epoch;
        let (response, records) = ask(
            &mut cluster,
            id,
            (1, e1),
            &[(1, -1), (2, e2), (3, e3)],
            |p| p,
        );
        assert_eq!((code(&response), records.len()), (0, 0));
        assert_eq!(response.topics[0].partitions[0].partition_epoch, epoch);
    }

    #[test]
    fn requests_are_refused_as_kafka_refuses_them() {
        let (mut cluster, id, [e1, e2, e3]) = cluster();
        let isr = [(1, -1), (2, e2)];
        let mut refused =
            |sender, isr: &[(i32, i64)], adjust: fn(PartitionData) -> PartitionData| {
                let (response, records) = ask(&mut cluster, id, sender, isr, adjust);
                assert!(records.is_empty(), "{records:?}");
                (response.error_code, code(&response))
            };
        let ok = |p| p;
        let none = 0;
        assert_eq!(
            refused((1, e1 + 100), &isr, ok),
            (E::StaleBrokerEpoch.code(), none)
        );
        assert_eq!(
            refused((1, e1), &isr, |p| {
                let e = p.leader_epoch;
                p.with_leader_epoch(e + 1)
            }),
            (none, E::NotController.code())
        );
        assert_eq!(
            refused((1, e1), &isr, |p| {
                let e = p.leader_epoch;
                p.with_leader_epoch(e - 1)
            }),
            (none, E::FencedLeaderEpoch.code())
        );
        assert_eq!(
            refused((2, e2), &isr, ok),
            (none, E::InvalidRequest.code()),
            "not the leader"
        );
        assert_eq!(
            refused((1, e1), &isr, |p| {
                let e = p.partition_epoch;
                p.with_partition_epoch(e - 1)
            }),
            (none, E::InvalidUpdateVersion.code())
        );
        assert_eq!(
            refused((1, e1), &[(1, -1), (4, 1)], ok),
            (none, E::InvalidRequest.code()),
            "not a replica"
        );
        assert_eq!(
            refused((1, e1), &[(2, e2), (3, e3)], ok),
            (none, E::InvalidRequest.code()),
            "without the leader"
        );
        assert_eq!(
            refused((1, e1), &[(1, -1), (2, e2 - 1)], ok),
            (none, E::IneligibleReplica.code()),
            "an old incarnation"
        );
        let mut p = partition(&cluster);
        assert_eq!(p.isr, vec![1, 2, 3], "nothing changed");
        // A fenced broker may not join.
        let (response, _) = ask(&mut cluster, id, (1, e1), &[(1, -1), (2, e2)], |p| p);
        assert_eq!(code(&response), 0);
        cluster.now_ms += TIMEOUT_MS;
        cluster.heartbeat(1, e1);
        cluster.heartbeat(2, e2);
        cluster.tick();
        assert!(cluster.image.broker(3).is_some_and(|b| b.fenced));
        let (response, _) = ask(
            &mut cluster,
            id,
            (1, e1),
            &[(1, -1), (2, e2), (3, e3)],
            |p| p,
        );
        assert_eq!(code(&response), E::IneligibleReplica.code());
        p = partition(&cluster);
        assert_eq!(p.isr, vec![1, 2]);
    }
}
