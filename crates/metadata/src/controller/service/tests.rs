//! The controller service on real quorums (temporary directories, the in-process router):
//! requests decided and answered after commit, fencing driven by a manual clock, NOT_CONTROLLER
//! off the leader, and a new leader taking over with everything committed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::broker_registration_request::Feature;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{
    BrokerHeartbeatRequest, BrokerHeartbeatResponse, BrokerId, BrokerRegistrationRequest,
    CreateTopicsRequest, ResponseKind, TopicName,
};
use tempfile::TempDir;
use uuid::Uuid;

use super::*;
use crate::controller::{str_bytes, ControllerConfig, IdSource};
use crate::quorum::testing::Router;
use crate::quorum::{MetadataLogConfig, Quorum, QuorumConfig};
use crate::records::{METADATA_VERSION_FEATURE, RECORD_VERSION as V};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);
const CLUSTER_ID: &str = "service-test-cluster";
const SESSION_MS: i64 = ControllerConfig::DEFAULT_BROKER_SESSION_TIMEOUT_MS;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub(crate) fn quorum_config(node_id: u64) -> QuorumConfig {
    QuorumConfig {
        election_timeout_ms: 400,
        heartbeat_interval_ms: 100,
        snapshot_after_entries: None,
        entries_kept_below_snapshot: 0,
        log: MetadataLogConfig {
            segment_bytes: 4096,
            ..MetadataLogConfig::default()
        },
        ..QuorumConfig::new(node_id)
    }
}

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not happen within {WAIT:?}"),
    }
}

pub(crate) async fn until_active(handle: &ControllerHandle) {
    let mut states = handle.states();
    bounded(
        "the controller becoming active",
        states.wait_for(|s| matches!(s, ControllerState::Active { .. })),
    )
    .await
    .expect("the controller service runs");
}

pub(crate) async fn image_where(
    quorum: &QuorumClient,
    what: &str,
    check: impl Fn(&MetadataImage) -> bool,
) -> Arc<MetadataImage> {
    let mut images = quorum.images();
    let image = bounded(what, images.wait_for(|image| check(image)))
        .await
        .expect("the quorum runs")
        .clone();
    image
}

pub(crate) fn registration(cluster_id: &str, broker_id: i32) -> BrokerRegistrationRequest {
    BrokerRegistrationRequest::default()
        .with_broker_id(BrokerId(broker_id))
        .with_cluster_id(str_bytes(cluster_id))
        .with_incarnation_id(Uuid::from_u128(0xB0 + broker_id as u128))
        .with_features(vec![Feature::default()
            .with_name(str_bytes(METADATA_VERSION_FEATURE))
            .with_min_supported_version(1)
            .with_max_supported_version(1)])
}

pub(crate) fn beat(broker_id: i32, epoch: i64, offset: i64) -> BrokerHeartbeatRequest {
    BrokerHeartbeatRequest::default()
        .with_broker_id(BrokerId(broker_id))
        .with_broker_epoch(epoch)
        .with_current_metadata_offset(offset)
}

pub(crate) fn create_topic(name: &str, partitions: i32) -> ControllerRequest {
    let topic = CreatableTopic::default()
        .with_name(TopicName(str_bytes(name)))
        .with_num_partitions(partitions)
        .with_replication_factor(1);
    ControllerRequest::CreateTopics(CreateTopicsRequest::default().with_topics(vec![topic]), 7)
}

/// Registers `broker_id` in the image's cluster and heartbeats it until unfenced; returns its
/// epoch.
pub(crate) async fn live_broker(handle: &ControllerHandle, quorum: &QuorumClient, id: i32) -> i64 {
    let cluster_id = quorum.image().cluster_id().unwrap_or_default().to_string();
    let epoch = match handle
        .call(ControllerRequest::RegisterBroker(
            registration(&cluster_id, id),
            4,
        ))
        .await
    {
        Ok(ResponseKind::BrokerRegistration(r)) => {
            assert_eq!(r.error_code, 0, "registration refused: {r:?}");
            r.broker_epoch
        }
        other => panic!("not a registration answer: {other:?}"),
    };
    // The answer came after the commit: the image here already holds the registration at the
    // epoch it names.
    let image = quorum.image();
    let registered = image.broker(id).expect("registered in the image");
    assert_eq!(registered.epoch, epoch);
    assert!(registered.fenced, "a new registration starts fenced");
    let offset = image.provenance().index as i64;
    let beat = heartbeat(handle, beat(id, epoch, offset)).await;
    assert!(beat.is_caught_up && !beat.is_fenced, "{beat:?}");
    assert!(!quorum.image().broker(id).unwrap().fenced);
    epoch
}

pub(crate) async fn heartbeat(
    handle: &ControllerHandle,
    request: BrokerHeartbeatRequest,
) -> BrokerHeartbeatResponse {
    match handle.call(ControllerRequest::Heartbeat(request, 1)).await {
        Ok(ResponseKind::BrokerHeartbeat(r)) => r,
        other => panic!("not a heartbeat answer: {other:?}"),
    }
}

pub(crate) async fn create(
    handle: &ControllerHandle,
    name: &str,
    partitions: i32,
) -> Result<CreatableTopicResult, ControllerCallError> {
    match handle.call(create_topic(name, partitions)).await? {
        ResponseKind::CreateTopics(mut r) => Ok(r.topics.remove(0)),
        other => panic!("not a CreateTopics answer: {other:?}"),
    }
}

fn bootstrap_records() -> EntryRecords {
    EntryRecords(vec![
        MetadataRecord::ClusterId {
            v: V,
            cluster_id: CLUSTER_ID.into(),
        },
        MetadataRecord::FeatureLevel {
            v: V,
            name: METADATA_VERSION_FEATURE.into(),
            level: 1,
        },
    ])
}

fn controller(node_id: i32) -> Controller {
    Controller::new(
        ControllerConfig::new(node_id),
        IdSource::seeded(0x5EED_0008),
    )
}

/// A lone voter on a temporary directory, initialised and bootstrapped.
async fn lone_voter() -> (TempDir, Quorum) {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let quorum = Quorum::start(&quorum_config(1), dir.path(), Router::default().network(1))
        .await
        .unwrap();
    assert!(quorum.initialize(&BTreeSet::from([1])).await.unwrap());
    let client = quorum.client();
    bounded("the lone voter leading", async {
        let mut statuses = client.statuses();
        while !statuses.current().is_leader {
            statuses.changed().await.unwrap();
        }
    })
    .await;
    quorum.propose(bootstrap_records()).await.unwrap();
    (dir, quorum)
}

/// The id of the node whose controller is active, once one is.
async fn active_one(services: &std::collections::BTreeMap<u64, ControllerService>) -> u64 {
    loop {
        if let Some((id, _)) = services
            .iter()
            .find(|(_, s)| matches!(s.handle().state(), ControllerState::Active { .. }))
        {
            return *id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lone voter whose controller is active, on a clock the test moves.
async fn active_lone_controller() -> (
    tempfile::TempDir,
    Quorum,
    ControllerService,
    ControllerClock,
) {
    let (dir, quorum) = lone_voter().await;
    let clock = ControllerClock::manual(1_000);
    let service = ControllerService::start(
        controller(1),
        quorum.client(),
        clock.clone(),
        ControllerServiceConfig::default(),
    );
    until_active(&service.handle()).await;
    (dir, quorum, service, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_after_their_records_commit() {
    let (_dir, quorum, service, _clock) = active_lone_controller().await;
    let client = quorum.client();
    let handle = service.handle();

    live_broker(&handle, &client, 1).await;
    let result = create(&handle, "orders", 3).await.unwrap();
    assert_eq!(result.error_code, 0, "{result:?}");
    let orders = client.image().topic_by_name("orders").cloned();
    let orders = orders.expect("the topic is in the image when the answer comes");
    assert_eq!(orders.id, result.topic_id);
    assert_eq!(orders.partitions.len(), 3);
    // Serial decisions: the second creation sees the first.
    let again = create(&handle, "orders", 1).await.unwrap();
    assert_eq!(again.error_code, E::TopicAlreadyExists.code());

    service.shutdown().await;
    assert_eq!(
        create(&handle, "late", 1).await.unwrap_err(),
        ControllerCallError::Stopped
    );
    assert_eq!(handle.state(), ControllerState::Stopped);
    quorum.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_fenced_by_the_clock_and_not_a_millisecond_before() {
    let (_dir, quorum, service, clock) = active_lone_controller().await;
    let client = quorum.client();
    let handle = service.handle();
    let epoch = live_broker(&handle, &client, 1).await;
    let last_beat = clock.now_ms();
    live_broker(&handle, &client, 2).await;

    clock.set_ms(last_beat + SESSION_MS - 1);
    // A round trip through the queue: the timer is polled before requests, so a tick due now
    // would have been decided (and committed) before this answer.
    let probe = create(&handle, "probe", 1).await.unwrap();
    assert_eq!(probe.error_code, 0);
    assert!(!client.image().broker(1).unwrap().fenced);

    // Broker 2 keeps its session alive; broker 1 stays silent.
    let offset = client.image().provenance().index as i64;
    let epoch2 = client.image().broker(2).unwrap().epoch;
    heartbeat(&handle, beat(2, epoch2, offset)).await;
    clock.set_ms(last_beat + SESSION_MS);
    let image = image_where(&client, "broker 1 fenced", |image| {
        image.broker(1).is_some_and(|b| b.fenced)
    })
    .await;
    assert!(!image.broker(2).unwrap().fenced, "broker 2 was heard from");
    // The partition it led moved to nobody (its only replica), or to broker 2 where it could.
    for partition in &image.topic_by_name("probe").unwrap().partitions {
        assert_ne!(partition.leader, 1);
    }
    // Heard from again, it is unfenced.
    let offset = image.provenance().index as i64;
    let answer = heartbeat(&handle, beat(1, epoch, offset)).await;
    assert!(!answer.is_fenced, "{answer:?}");
    service.shutdown().await;
    quorum.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_lead_answers_not_controller() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    // Never initialised: it waits for a leader that never comes.
    let quorum = Quorum::start(&quorum_config(2), dir.path(), Router::default().network(2))
        .await
        .unwrap();
    let service = ControllerService::start(
        controller(2),
        quorum.client(),
        ControllerClock::monotonic(),
        ControllerServiceConfig::default(),
    );
    let handle = service.handle();
    let refused = bounded("an answer", create(&handle, "t", 1)).await;
    let err = refused.unwrap_err();
    assert_eq!(err, ControllerCallError::NotController { leader: None });
    assert_eq!(err.kafka_error(), E::NotController);
    assert_eq!(err.kafka_error().code(), 41);
    assert_eq!(handle.state(), ControllerState::Inactive);
    // The quorum stopping ends the service.
    quorum.shutdown().await.unwrap();
    let mut states = handle.states();
    bounded(
        "the service stopping with its quorum",
        states.wait_for(|s| *s == ControllerState::Stopped),
    )
    .await
    .unwrap();
    assert_eq!(
        create(&handle, "t", 1).await.unwrap_err(),
        ControllerCallError::Stopped
    );
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_with_everything_committed() {
    init_logs();
    let router = Router::default();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut quorums = std::collections::BTreeMap::new();
    let mut services = std::collections::BTreeMap::new();
    for id in 1..=3u64 {
        let quorum = Quorum::start(
            &quorum_config(id),
            dirs[id as usize - 1].path(),
            router.network(id),
        )
        .await
        .unwrap();
        router.add(id, quorum.raft().clone());
        let service = ControllerService::start(
            controller(id as i32),
            quorum.client(),
            ControllerClock::monotonic(),
            ControllerServiceConfig::default(),
        );
        quorums.insert(id, quorum);
        services.insert(id, service);
    }
    assert!(quorums[&1]
        .initialize(&BTreeSet::from([1, 2, 3]))
        .await
        .unwrap());
    // Whoever leads becomes the active controller; the others refuse and name it.
    let leader = bounded("one active controller", active_one(&services)).await;
    let active = services[&leader].handle();
    quorums[&leader].propose(bootstrap_records()).await.unwrap();
    live_broker(&active, &quorums[&leader].client(), 1).await;
    assert_eq!(create(&active, "before", 1).await.unwrap().error_code, 0);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let refused = bounded("a follower's answer", async {
        loop {
            match create(&services[&follower].handle(), "x", 1).await {
                Err(ControllerCallError::NotController { leader: Some(hint) }) => return hint,
                Err(ControllerCallError::NotController { leader: None }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => panic!("a follower decided a request: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(refused, leader);

    // The leader stops; its service stops with it.
    router.remove(leader);
    services.remove(&leader).unwrap().shutdown().await;
    quorums.remove(&leader).unwrap().shutdown().await.unwrap();
    assert_eq!(
        create(&active, "gone", 1).await.unwrap_err(),
        ControllerCallError::Stopped
    );

    let next = bounded("a new active controller", active_one(&services)).await;
    let handle = services[&next].handle();
    // Activated on an image with everything committed before: the old topic is there.
    let again = create(&handle, "before", 1).await.unwrap();
    assert_eq!(again.error_code, E::TopicAlreadyExists.code());
    assert_eq!(create(&handle, "after", 1).await.unwrap().error_code, 0);
    for quorum in quorums.values() {
        image_where(&quorum.client(), "the new leader's topic", |image| {
            image.topic_by_name("after").is_some()
        })
        .await;
    }
    for (_, service) in services {
        service.shutdown().await;
    }
    for (_, quorum) in quorums {
        quorum.shutdown().await.unwrap();
    }
}
