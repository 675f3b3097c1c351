//! The consumer group protocol (KIP-848), driven heartbeat by heartbeat with a fake clock.

use super::*;
use crate::group::GroupConfig;
use crate::OffsetCommit;

type C = Coordinator<u32>;

const T: Uuid = Uuid::from_u128(0x1111);
const U: Uuid = Uuid::from_u128(0x2222);
const SESSION: Ms = 45_000;
const REBALANCE: i32 = 60_000;

fn coordinator() -> C {
    C::new(GroupConfig::default())
}

fn topics(list: &[(&str, Uuid, i32)]) -> TopicsImage {
    list.iter()
        .map(|(n, id, p)| {
            (
                n.to_string(),
                TopicMetadata {
                    id: *id,
                    partitions: *p,
                },
            )
        })
        .collect()
}

fn join(member: &str, subscribed: &[&str]) -> HeartbeatRequest {
    HeartbeatRequest {
        group_id: "g".into(),
        member_id: member.into(),
        member_epoch: 0,
        rebalance_timeout_ms: REBALANCE,
        subscribed_topic_names: Some(subscribed.iter().map(|s| s.to_string()).collect()),
        owned_partitions: Some(Vec::new()),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        client_generates_member_id: true,
        ..HeartbeatRequest::default()
    }
}

/// A heartbeat reporting what the member owns (a full set, as clients send after a change).
fn beat(member: &str, epoch: i32, owned: &TopicPartitions) -> HeartbeatRequest {
    HeartbeatRequest {
        group_id: "g".into(),
        member_id: member.into(),
        member_epoch: epoch,
        rebalance_timeout_ms: -1,
        owned_partitions: Some(
            owned
                .iter()
                .map(|(t, ps)| (*t, ps.iter().copied().collect()))
                .collect(),
        ),
        client_generates_member_id: true,
        ..HeartbeatRequest::default()
    }
}

fn hb(c: &mut C, req: HeartbeatRequest, image: &TopicsImage, now: Ms) -> HeartbeatResponse {
    let (r, effects) = c.consumer_group_heartbeat(req, image, now);
    assert!(
        effects.iter().all(|e| matches!(e, Effect::TickBy(_))),
        "heartbeats write nothing"
    );
    r
}

fn count(tp: &TopicPartitions) -> usize {
    tp.values().map(|p| p.len()).sum()
}

fn parts(topic: Uuid, ps: &[i32]) -> TopicPartitions {
    TopicPartitions::from([(topic, ps.iter().copied().collect())])
}

/// A simple client: remembers its epoch and assignment and acknowledges what it is given.
struct Client {
    id: String,
    epoch: i32,
    owned: TopicPartitions,
}

impl Client {
    fn join(c: &mut C, id: &str, subscribed: &[&str], image: &TopicsImage, now: Ms) -> Client {
        let r = hb(c, join(id, subscribed), image, now);
        assert_eq!(r.error, 0, "{id} joins: {r:?}");
        Client {
            id: id.into(),
            epoch: r.member_epoch,
            owned: r.assignment.unwrap_or_default(),
        }
    }

    fn beat(&mut self, c: &mut C, image: &TopicsImage, now: Ms) -> HeartbeatResponse {
        let r = hb(c, beat(&self.id, self.epoch, &self.owned), image, now);
        if r.error == 0 {
            self.epoch = r.member_epoch;
            if let Some(a) = &r.assignment {
                self.owned = a.clone();
            }
        }
        r
    }
}

/// Heartbeats every client in turn until the group is stable; returns the rounds it took.
fn settle(c: &mut C, clients: &mut [Client], image: &TopicsImage, now: Ms) -> usize {
    for round in 0..10 {
        for cl in clients.iter_mut() {
            let r = cl.beat(c, image, now);
            assert_eq!(r.error, 0, "{} heartbeats: {r:?}", cl.id);
        }
        let owned: Vec<(Uuid, i32)> = clients
            .iter()
            .flat_map(|cl| {
                cl.owned
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(|p| (*t, *p)))
            })
            .collect();
        let unique: BTreeSet<_> = owned.iter().collect();
        assert_eq!(
            unique.len(),
            owned.len(),
            "a partition is owned twice: {owned:?}"
        );
        if c.consumer_groups_list()[0].state == ConsumerGroupState::Stable {
            return round;
        }
    }
    panic!("the group did not settle")
}

#[test]
fn a_first_member_gets_every_partition() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 4)]);
    let r = hb(&mut c, join("a", &["t"]), &image, 0);
    assert_eq!(r.error, 0);
    assert_eq!(r.member_id.as_deref(), Some("a"));
    assert_eq!(r.member_epoch, 1);
    assert_eq!(r.heartbeat_interval_ms, 5_000);
    assert_eq!(r.assignment, Some(parts(T, &[0, 1, 2, 3])));
    let list = c.consumer_groups_list();
    assert_eq!(list[0].state, ConsumerGroupState::Stable);
    // An unchanged heartbeat carries no assignment.
    let r = hb(&mut c, beat("a", 1, &parts(T, &[0, 1, 2, 3])), &image, 1);
    assert_eq!((r.error, r.member_epoch, r.assignment), (0, 1, None));
}

#[test]
fn v0_members_get_their_id_from_the_coordinator() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 1)]);
    let mut req = join("", &["t"]);
    req.client_generates_member_id = false;
    let r = hb(&mut c, req, &image, 0);
    assert_eq!(r.error, 0);
    assert!(!r.member_id.unwrap_or_default().is_empty());
    // v1 requires the client's id.
    let r = hb(&mut c, join("", &["t"]), &image, 0);
    assert_eq!(r.error, INVALID_REQUEST);
}

#[test]
fn a_second_member_gets_partitions_only_after_the_first_revoked_them() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 4)]);
    let mut a = Client::join(&mut c, "a", &["t"], &image, 0);
    assert_eq!(count(&a.owned), 4);
    let mut b = Client::join(&mut c, "b", &["t"], &image, 10);
    // b's target partitions are still a's: b waits at the new epoch with nothing.
    assert_eq!(b.epoch, 2);
    assert_eq!(count(&b.owned), 0);
    // a is told to keep two: the other two are pending revocation, a stays in epoch 1.
    let before = a.owned.clone();
    let r = hb(&mut c, beat("a", 1, &before), &image, 20);
    assert_eq!(r.error, 0);
    assert_eq!(r.member_epoch, 1);
    let kept = r.assignment.unwrap_or_default();
    assert_eq!(count(&kept), 2);
    assert_eq!(
        c.consumer_groups_list()[0].state,
        ConsumerGroupState::Reconciling
    );
    // b still gets nothing while a owns them.
    let r = b.beat(&mut c, &image, 30);
    assert_eq!((r.error, r.assignment), (0, None));
    // a confirms the revocation by reporting what it owns now: it moves to epoch 2.
    a.owned = kept;
    let r = a.beat(&mut c, &image, 40);
    assert_eq!((r.error, r.member_epoch), (0, 2));
    // Now b gets the released partitions.
    let r = b.beat(&mut c, &image, 50);
    assert_eq!(r.error, 0);
    assert_eq!(count(&b.owned), 2);
    let all: BTreeSet<i32> = a.owned[&T].union(&b.owned[&T]).copied().collect();
    assert_eq!(all, (0..4).collect());
    assert_eq!(
        c.consumer_groups_list()[0].state,
        ConsumerGroupState::Stable
    );
}

#[test]
fn a_lost_response_with_the_previous_epoch_is_accepted() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 2)]);
    let a = Client::join(&mut c, "a", &["t"], &image, 0);
    let _b = Client::join(&mut c, "b", &["t"], &image, 0);
    let r = hb(&mut c, beat("a", 1, &a.owned), &image, 1);
    let kept = r.assignment.unwrap_or_default();
    // a revokes; the answer moving it to epoch 2 is lost.
    let r = hb(&mut c, beat("a", 1, &kept), &image, 2);
    assert_eq!(r.member_epoch, 2);
    let r = hb(&mut c, beat("a", 1, &kept), &image, 3);
    assert_eq!((r.error, r.member_epoch), (0, 2));
}

#[test]
fn fencing_and_unknown_members() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 2)]);
    let a = Client::join(&mut c, "a", &["t"], &image, 0);
    let r = hb(&mut c, beat("a", a.epoch + 1, &a.owned), &image, 1);
    assert_eq!(r.error, FENCED_MEMBER_EPOCH);
    let r = hb(&mut c, beat("zz", 1, &a.owned), &image, 1);
    assert_eq!(r.error, UNKNOWN_MEMBER_ID);
    // An unknown group with a member epoch: a member the broker forgot (it keeps no
    // membership across restarts) is told to rejoin.
    let mut req = beat("a", 3, &a.owned);
    req.group_id = "other".into();
    assert_eq!(hb(&mut c, req, &image, 1).error, UNKNOWN_MEMBER_ID);
    // Two epoch bumps later, a's old epoch is fenced.
    let _b = Client::join(&mut c, "b", &["t"], &image, 2);
    let _d = Client::join(&mut c, "d", &["t"], &image, 3);
    let r = hb(&mut c, beat("a", 1, &a.owned), &image, 4);
    assert_eq!(r.error, 0, "a is still at epoch 1 until it revokes");
    let mut bad = join("x", &["t"]);
    bad.owned_partitions = Some(vec![(T, vec![0])]);
    assert_eq!(hb(&mut c, bad, &image, 5).error, INVALID_REQUEST);
    let mut bad = join("x", &["t"]);
    bad.server_assignor = Some("sticky".into());
    assert_eq!(hb(&mut c, bad, &image, 5).error, UNSUPPORTED_ASSIGNOR);
    let mut bad = join("x", &[]);
    bad.subscribed_topic_names = None;
    bad.subscribed_topic_regex = Some("t.*".into());
    assert_eq!(hb(&mut c, bad, &image, 5).error, INVALID_REGULAR_EXPRESSION);
}

#[test]
fn a_leaving_member_hands_its_partitions_to_the_others() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 6)]);
    let mut clients = vec![
        Client::join(&mut c, "a", &["t"], &image, 0),
        Client::join(&mut c, "b", &["t"], &image, 0),
        Client::join(&mut c, "c", &["t"], &image, 0),
    ];
    settle(&mut c, &mut clients, &image, 1);
    assert!(clients.iter().all(|cl| count(&cl.owned) == 2));
    let leaving = clients.remove(2);
    let r = hb(&mut c, beat(&leaving.id, -1, &leaving.owned), &image, 2);
    assert_eq!((r.error, r.member_epoch), (0, -1));
    settle(&mut c, &mut clients, &image, 3);
    assert!(clients.iter().all(|cl| count(&cl.owned) == 3));
    // Leaving twice: unknown.
    let r = hb(&mut c, beat(&leaving.id, -1, &leaving.owned), &image, 4);
    assert_eq!(r.error, UNKNOWN_MEMBER_ID);
}

#[test]
fn a_silent_member_is_removed_after_the_session_timeout() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 4)]);
    let mut clients = vec![
        Client::join(&mut c, "a", &["t"], &image, 0),
        Client::join(&mut c, "b", &["t"], &image, 0),
    ];
    settle(&mut c, &mut clients, &image, 0);
    assert_eq!(c.next_deadline(), Some(SESSION));
    // a keeps heartbeating, b goes silent.
    let mut a = clients.remove(0);
    a.beat(&mut c, &image, SESSION - 1);
    c.tick(SESSION - 1);
    assert_eq!(c.consumer_groups["g"].members.len(), 2);
    c.tick(SESSION);
    assert_eq!(c.consumer_groups["g"].members.len(), 1);
    a.beat(&mut c, &image, SESSION + 1);
    assert_eq!(count(&a.owned), 4);
    let r = hb(
        &mut c,
        beat("b", 2, &TopicPartitions::new()),
        &image,
        SESSION + 2,
    );
    assert_eq!(r.error, UNKNOWN_MEMBER_ID);
}

#[test]
fn a_member_that_does_not_revoke_in_time_is_fenced() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 4)]);
    let a = Client::join(&mut c, "a", &["t"], &image, 0);
    let mut b = Client::join(&mut c, "b", &["t"], &image, 0);
    // a learns about the revocation and never confirms, though it keeps heartbeating.
    hb(&mut c, beat("a", 1, &a.owned), &image, 1);
    for now in (0..Ms::from(REBALANCE)).step_by(5_000) {
        let r = hb(&mut c, beat("a", 1, &a.owned), &image, now + 1);
        assert_eq!(r.error, 0);
        b.beat(&mut c, &image, now + 1);
        c.tick(now + 1);
    }
    c.tick(Ms::from(REBALANCE) + 1);
    let r = hb(
        &mut c,
        beat("a", 1, &a.owned),
        &image,
        Ms::from(REBALANCE) + 2,
    );
    assert_eq!(r.error, UNKNOWN_MEMBER_ID);
    b.beat(&mut c, &image, Ms::from(REBALANCE) + 3);
    assert_eq!(count(&b.owned), 4);
}

#[test]
fn static_members_leave_and_return_without_a_rebalance() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 4)]);
    let mut req = join("a1", &["t"]);
    req.instance_id = Some("i".into());
    let r = hb(&mut c, req, &image, 0);
    assert_eq!(r.error, 0);
    let owned = r.assignment.unwrap_or_default();
    let mut b = Client::join(&mut c, "b", &["t"], &image, 0);
    // Another member with the same instance id while a1 is active.
    let mut req = join("a2", &["t"]);
    req.instance_id = Some("i".into());
    assert_eq!(
        hb(&mut c, req.clone(), &image, 1).error,
        UNRELEASED_INSTANCE_ID
    );
    // a1 goes with the static leave epoch: nothing is rebalanced.
    let mut leave = beat("a1", 1, &owned);
    leave.member_epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH;
    leave.instance_id = Some("i".into());
    let epoch = c.consumer_groups["g"].group_epoch;
    assert_eq!(
        hb(&mut c, leave, &image, 2).member_epoch,
        LEAVE_GROUP_STATIC_MEMBER_EPOCH
    );
    assert_eq!(c.consumer_groups["g"].group_epoch, epoch);
    // It comes back under a new member id and gets its assignment back.
    let r = hb(&mut c, req, &image, 3);
    assert_eq!(r.error, 0);
    assert_eq!(r.member_id.as_deref(), Some("a2"));
    assert_eq!(c.consumer_groups["g"].group_epoch, epoch);
    assert!(r.assignment.is_some());
    b.beat(&mut c, &image, 4);
    assert_eq!(c.consumer_groups["g"].members.len(), 2);
}

#[test]
fn the_uniform_assignor_is_balanced_and_sticky() {
    let subs = |ids: &[&str]| -> BTreeMap<String, BTreeSet<String>> {
        ids.iter()
            .map(|i| {
                (
                    i.to_string(),
                    BTreeSet::from(["t".to_string(), "u".to_string()]),
                )
            })
            .collect()
    };
    let meta = BTreeMap::from([
        (
            "t".to_string(),
            TopicMetadata {
                id: T,
                partitions: 5,
            },
        ),
        (
            "u".to_string(),
            TopicMetadata {
                id: U,
                partitions: 2,
            },
        ),
    ]);
    let two = assign_uniform(&subs(&["a", "b"]), &meta, &BTreeMap::new());
    let sizes: Vec<usize> = two.values().map(count).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 7);
    assert!(sizes.iter().all(|n| *n == 3 || *n == 4), "{sizes:?}");
    let three = assign_uniform(&subs(&["a", "b", "c"]), &meta, &two);
    let sizes: Vec<usize> = three.values().map(count).collect();
    assert!(sizes.iter().all(|n| *n == 2 || *n == 3), "{sizes:?}");
    // a and b only lose partitions, they never swap any.
    for m in ["a", "b"] {
        for (t, ps) in &three[m] {
            assert!(ps.is_subset(&two[m][t]), "{m} kept its partitions");
        }
    }
    // A member subscribed to one topic only gets that topic's partitions.
    let mut mixed = subs(&["a"]);
    mixed.insert("b".into(), BTreeSet::from(["u".to_string()]));
    let a = assign_uniform(&mixed, &meta, &BTreeMap::new());
    assert!(a["b"].keys().all(|t| *t == U));
    assert_eq!(count(&a["a"]) + count(&a["b"]), 7);
}

#[test]
fn the_range_assignor_gives_consecutive_ranges() {
    let mut c = C::new(GroupConfig {
        consumer: ConsumerGroupConfig {
            assignors: vec![Assignor::Range, Assignor::Uniform],
            ..ConsumerGroupConfig::default()
        },
        ..GroupConfig::default()
    });
    let image = topics(&[("t", T, 5)]);
    let mut clients = vec![
        Client::join(&mut c, "a", &["t"], &image, 0),
        Client::join(&mut c, "b", &["t"], &image, 0),
    ];
    settle(&mut c, &mut clients, &image, 1);
    assert_eq!(clients[0].owned, parts(T, &[0, 1, 2]));
    assert_eq!(clients[1].owned, parts(T, &[3, 4]));
    let DescribedConsumerGroup::Found(d) = c.consumer_group_describe("g") else {
        panic!("g is a consumer group")
    };
    assert_eq!(d.assignor_name, "range");
    // A member may ask for an assignor; the most asked-for one wins.
    let mut req = join("c", &["t"]);
    req.server_assignor = Some("uniform".into());
    hb(&mut c, req, &image, 2);
    let DescribedConsumerGroup::Found(d) = c.consumer_group_describe("g") else {
        panic!("g is a consumer group")
    };
    assert_eq!(d.assignor_name, "uniform");
}

#[test]
fn a_topic_created_or_grown_after_subscribing_gets_assigned() {
    let mut c = coordinator();
    let none = topics(&[]);
    let mut a = Client::join(&mut c, "a", &["t"], &none, 0);
    assert_eq!(count(&a.owned), 0);
    let created = topics(&[("t", T, 2)]);
    let r = a.beat(&mut c, &created, 1);
    assert_eq!(r.member_epoch, 2);
    assert_eq!(a.owned, parts(T, &[0, 1]));
    let grown = topics(&[("t", T, 3)]);
    let r = a.beat(&mut c, &grown, 2);
    assert_eq!(r.member_epoch, 3);
    assert_eq!(a.owned, parts(T, &[0, 1, 2]));
    let DescribedConsumerGroup::Found(d) = c.consumer_group_describe("g") else {
        panic!("g is a consumer group")
    };
    assert_eq!(
        d.members[0].assignment,
        vec![(T, "t".to_string(), vec![0, 1, 2])]
    );
    assert_eq!(d.group_epoch, 3);
    assert_eq!(
        c.consumer_group_describe("nope"),
        DescribedConsumerGroup::NotFound
    );
}

#[test]
fn offset_commits_check_the_member_epoch() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 1)]);
    let a = Client::join(&mut c, "a", &["t"], &image, 0);
    let commit = || {
        vec![OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            leader_epoch: -1,
            metadata: String::new(),
        }]
    };
    let (errors, writes) = c.commit_offsets("g", a.epoch, "a", None, commit(), 1);
    assert_eq!((errors, writes.len()), (vec![0], 1));
    let (errors, _) = c.commit_offsets("g", a.epoch + 1, "a", None, commit(), 1);
    assert_eq!(errors, vec![STALE_MEMBER_EPOCH]);
    let (errors, _) = c.commit_offsets("g", a.epoch, "zz", None, commit(), 1);
    assert_eq!(errors, vec![UNKNOWN_MEMBER_ID]);
    let (errors, _) = c.commit_offsets("g", -1, "", None, commit(), 1);
    assert_eq!(
        errors,
        vec![UNKNOWN_MEMBER_ID],
        "no admin commits to an active group"
    );
    assert_eq!(c.fetch_offsets("g", None)[0].offset, 5);
    assert_eq!(c.consumer_group_fetch_check("g", Some("a"), a.epoch), 0);
    assert_eq!(
        c.consumer_group_fetch_check("g", Some("a"), 7),
        STALE_MEMBER_EPOCH
    );
    assert_eq!(c.consumer_group_fetch_check("g", None, -1), 0);
    // The group is busy: classic joins and deletion are refused.
    assert_eq!(
        c.delete_group("g").err(),
        Some(crate::errors::NON_EMPTY_GROUP)
    );
    let r = hb(&mut c, beat("a", a.epoch, &a.owned), &image, 2);
    assert_eq!(r.error, 0);
    hb(&mut c, beat("a", -1, &a.owned), &image, 3);
    assert_eq!(c.consumer_groups_list()[0].state, ConsumerGroupState::Empty);
    // Empty: the offsets stay, an admin commit is allowed, and the group can go.
    let (errors, _) = c.commit_offsets("g", -1, "", None, commit(), 4);
    assert_eq!(errors, vec![0]);
    assert!(c.delete_group("g").is_ok());
    assert!(!c.is_consumer_group("g"));
}

#[test]
fn a_classic_group_in_use_refuses_consumer_members_and_the_reverse() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 1)]);
    let _a = Client::join(&mut c, "a", &["t"], &image, 0);
    let req = crate::JoinRequest {
        group_id: "g".into(),
        member_id: String::new(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), bytes::Bytes::new())],
        require_known_member_id: false,
    };
    let effects = c.join(req.clone(), 1, 0);
    assert!(matches!(
        &effects[..],
        [Effect::Join(1, j)] if j.error == crate::errors::INCONSISTENT_GROUP_PROTOCOL
    ));
    let mut classic = req;
    classic.group_id = "classic".into();
    c.join(classic, 2, 0);
    let mut r = join("b", &["t"]);
    r.group_id = "classic".into();
    assert_eq!(
        hb(&mut c, r, &image, 1).error,
        crate::errors::GROUP_ID_NOT_FOUND
    );
    assert_eq!(
        c.consumer_group_describe("classic"),
        DescribedConsumerGroup::NotConsumerGroup
    );
}

#[test]
fn a_joining_member_tells_the_runtime_when_its_session_ends() {
    let mut c = coordinator();
    let image = topics(&[("t", T, 4)]);
    let (r, effects) = c.consumer_group_heartbeat(join("a", &["t"]), &image, 100);
    assert_eq!(r.error, NONE);
    assert!(
        matches!(effects[..], [Effect::TickBy(at)] if at == 100 + Ms::from(SESSION)),
        "{effects:?}"
    );
}
