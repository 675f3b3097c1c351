//! The classic group state machine, driven by events with a fake clock.

use super::*;

type C = Coordinator<u32>;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn config() -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay_ms: 3_000,
        ..GroupConfig::default()
    }
}

fn join_req(member_id: &str, instance: Option<&str>, protocols: &[(&str, &[u8])]) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member_id.into(),
        group_instance_id: instance.map(Into::into),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|(n, m)| (n.to_string(), Bytes::copy_from_slice(m)))
            .collect(),
        require_known_member_id: true,
    }
}

fn joins(effects: &[Effect<u32>]) -> Vec<(u32, JoinResponse)> {
    effects
        .iter()
        .filter_map(|e| {
            if let Effect::Join(r, j) = e {
                Some((*r, j.clone()))
            } else {
                None
            }
        })
        .collect()
}

fn syncs(effects: &[Effect<u32>]) -> Vec<(u32, SyncResponse)> {
    effects
        .iter()
        .filter_map(|e| {
            if let Effect::Sync(r, s) = e {
                Some((*r, s.clone()))
            } else {
                None
            }
        })
        .collect()
}

fn writes(effects: &[Effect<u32>]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Write(_)))
        .count()
}

/// A new member's two-step join (MEMBER_ID_REQUIRED, then the real join); returns its id.
fn first_join(c: &mut C, r: u32, now: Ms) -> (String, Vec<Effect<u32>>) {
    let e = c.join(join_req("", None, &[("range", b"m")]), r, now);
    let j = joins(&e);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.error, MEMBER_ID_REQUIRED);
    let id = j[0].1.member_id.clone();
    assert!(
        id.starts_with("client-"),
        "member ids start with the client id: {id}"
    );
    let e = c.join(join_req(&id, None, &[("range", b"m")]), r, now);
    (id, e)
}

fn sync_req(member: &str, generation: i32, assignments: Vec<(String, Bytes)>) -> SyncRequest {
    SyncRequest {
        group_id: "g".into(),
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: None,
        protocol_type: None,
        protocol_name: None,
        assignments,
    }
}

/// Brings `n` members to Stable at generation 1; returns their ids (the first is the leader).
fn stable_group(c: &mut C, n: u32) -> (Vec<String>, Ms) {
    let mut ids = Vec::new();
    for r in 0..n {
        let (id, e) = first_join(c, r, 0);
        assert!(joins(&e).is_empty(), "joins wait out the initial delay");
        ids.push(id);
    }
    // KIP-134: a member joined during the first delay, so the delay runs once more.
    let now: Ms = if n > 1 { 6_000 } else { 3_000 };
    if n > 1 {
        assert!(joins(&c.tick(3_000)).is_empty());
    }
    let e = c.tick(now);
    let j = joins(&e);
    assert_eq!(j.len(), n as usize);
    assert!(j
        .iter()
        .all(|(_, r)| r.error == NONE && r.generation_id == 1));
    let leader = &j.iter().find(|(_, r)| !r.members.is_empty()).unwrap().1;
    assert_eq!(leader.leader, ids[0]);
    assert_eq!(leader.members.len(), n as usize);
    let assignments = ids
        .iter()
        .map(|id| (id.clone(), Bytes::from(format!("for {id}"))))
        .collect();
    for (i, id) in ids.iter().enumerate().skip(1) {
        assert!(
            syncs(&c.sync(sync_req(id, 1, vec![]), 100 + i as u32, now)).is_empty(),
            "followers wait for the leader"
        );
    }
    let e = c.sync(sync_req(&ids[0], 1, assignments), 100, now);
    let s = syncs(&e);
    assert_eq!(s.len(), n as usize);
    for (r, resp) in &s {
        assert_eq!(resp.error, NONE);
        let id = &ids[(*r - 100) as usize];
        assert_eq!(resp.assignment, Bytes::from(format!("for {id}")));
    }
    assert_eq!(
        writes(&e),
        1,
        "the new generation is written to __consumer_offsets"
    );
    assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
    (ids, now)
}

#[test]
fn first_members_join_together_after_the_initial_delay() {
    let mut c = C::new(config());
    stable_group(&mut c, 3);
}

#[test]
fn the_initial_delay_is_extended_while_members_keep_arriving() {
    let mut c = C::new(config());
    first_join(&mut c, 0, 0);
    first_join(&mut c, 1, 2_000);
    assert!(
        joins(&c.tick(3_000)).is_empty(),
        "a member joined during the delay: wait again"
    );
    assert_eq!(joins(&c.tick(6_000)).len(), 2);
}

#[test]
fn join_errors() {
    let mut c = C::new(config());
    let mut bad = join_req("", None, &[("range", b"")]);
    bad.group_id = String::new();
    assert_eq!(joins(&c.join(bad, 1, 0))[0].1.error, INVALID_GROUP_ID);
    let mut bad = join_req("", None, &[("range", b"")]);
    bad.session_timeout_ms = 10;
    assert_eq!(
        joins(&c.join(bad, 1, 0))[0].1.error,
        INVALID_SESSION_TIMEOUT
    );
    assert_eq!(
        joins(&c.join(join_req("nobody", None, &[("range", b"")]), 1, 0))[0]
            .1
            .error,
        UNKNOWN_MEMBER_ID
    );
    let (_ids, now) = stable_group(&mut c, 1);
    let e = c.join(join_req("", None, &[("roundrobin", b"")]), 9, now);
    assert_eq!(joins(&e)[0].1.error, INCONSISTENT_GROUP_PROTOCOL);
    let mut other = join_req("", None, &[("range", b"")]);
    other.protocol_type = "connect".into();
    assert_eq!(
        joins(&c.join(other, 9, now))[0].1.error,
        INCONSISTENT_GROUP_PROTOCOL
    );
}

#[test]
fn a_new_member_triggers_a_rebalance_and_the_others_rejoin() {
    let mut c = C::new(config());
    let (ids, now) = stable_group(&mut c, 2);
    let (new_id, e) = first_join(&mut c, 7, now);
    assert!(joins(&e).is_empty());
    assert_eq!(
        c.describe("g").unwrap().state,
        GroupState::PreparingRebalance
    );
    assert_eq!(
        c.heartbeat("g", 1, &ids[0], None, now),
        REBALANCE_IN_PROGRESS
    );
    assert!(joins(&c.join(join_req(&ids[0], None, &[("range", b"m")]), 10, now)).is_empty());
    let e = c.join(join_req(&ids[1], None, &[("range", b"m")]), 11, now);
    let j = joins(&e);
    assert_eq!(
        j.len(),
        3,
        "all rejoined: the join phase completes without waiting"
    );
    assert!(j.iter().all(|(_, r)| r.generation_id == 2));
    assert_eq!(
        j.iter().find(|(r, _)| *r == 10).unwrap().1.members.len(),
        3,
        "the leader stays leader and sees everyone"
    );
    assert!(c
        .describe("g")
        .unwrap()
        .members
        .iter()
        .any(|m| m.member_id == new_id));
    assert_eq!(
        c.describe("g").unwrap().state,
        GroupState::CompletingRebalance
    );
    assert_eq!(c.heartbeat("g", 2, &ids[1], None, now), NONE);
}

#[test]
fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
    let mut c = C::new(config());
    let (ids, now) = stable_group(&mut c, 2);
    let (leave_errors, e) = c.leave("g", &[(ids[1].clone(), None)], now);
    assert_eq!(leave_errors, vec![NONE]);
    assert!(joins(&e).is_empty());
    assert_eq!(
        c.describe("g").unwrap().state,
        GroupState::PreparingRebalance
    );
    let (_, e) = first_join(&mut c, 8, now);
    assert!(joins(&e).is_empty(), "the leader has not rejoined yet");
    let e = c.tick(now + Ms::from(REBALANCE));
    let j = joins(&e);
    assert_eq!(
        j.len(),
        1,
        "only the newcomer is answered; the silent leader is gone"
    );
    assert_eq!(j[0].1.generation_id, 2);
    assert_eq!(c.describe("g").unwrap().members.len(), 1);
}

#[test]
fn a_silent_member_is_evicted_after_its_session_timeout() {
    let mut c = C::new(config());
    let (ids, now) = stable_group(&mut c, 2);
    assert_eq!(c.heartbeat("g", 1, &ids[0], None, now + 9_000), NONE);
    assert!(c.next_deadline().is_some());
    let e = c.tick(now + Ms::from(SESSION));
    assert!(joins(&e).is_empty());
    let g = c.describe("g").unwrap();
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        g.members.len(),
        1,
        "the member that kept heartbeating stays"
    );
    assert_eq!(
        c.heartbeat("g", 1, &ids[1], None, now + Ms::from(SESSION)),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        c.heartbeat("g", 1, &ids[0], None, now + Ms::from(SESSION)),
        REBALANCE_IN_PROGRESS
    );
    let e = c.join(
        join_req(&ids[0], None, &[("range", b"m")]),
        3,
        now + Ms::from(SESSION),
    );
    assert_eq!(joins(&e)[0].1.generation_id, 2);
}

#[test]
fn heartbeat_errors() {
    let mut c = C::new(config());
    assert_eq!(c.heartbeat("nope", 1, "m", None, 0), UNKNOWN_MEMBER_ID);
    let (ids, now) = stable_group(&mut c, 1);
    assert_eq!(
        c.heartbeat("g", 1, "stranger", None, now),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(c.heartbeat("g", 7, &ids[0], None, now), ILLEGAL_GENERATION);
    assert_eq!(c.heartbeat("g", 1, &ids[0], None, now), NONE);
}

#[test]
fn sync_errors_and_a_stable_resync() {
    let mut c = C::new(config());
    assert_eq!(
        syncs(&c.sync(sync_req("m", 1, vec![]), 1, 0))[0].1.error,
        UNKNOWN_MEMBER_ID
    );
    let (ids, now) = stable_group(&mut c, 2);
    assert_eq!(
        syncs(&c.sync(sync_req("stranger", 1, vec![]), 1, now))[0]
            .1
            .error,
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        syncs(&c.sync(sync_req(&ids[1], 9, vec![]), 1, now))[0]
            .1
            .error,
        ILLEGAL_GENERATION
    );
    let mut wrong = sync_req(&ids[1], 1, vec![]);
    wrong.protocol_name = Some("roundrobin".into());
    assert_eq!(
        syncs(&c.sync(wrong, 1, now))[0].1.error,
        INCONSISTENT_GROUP_PROTOCOL
    );
    let s = syncs(&c.sync(sync_req(&ids[1], 1, vec![]), 1, now));
    assert_eq!(
        s[0].1.assignment,
        Bytes::from(format!("for {}", ids[1])),
        "a stable group answers a sync with the current assignment"
    );
    c.leave("g", &[(ids[1].clone(), None)], now);
    assert_eq!(
        syncs(&c.sync(sync_req(&ids[0], 1, vec![]), 1, now))[0]
            .1
            .error,
        REBALANCE_IN_PROGRESS
    );
}

#[test]
fn a_leader_that_never_syncs_sends_the_group_back_to_rebalancing() {
    let mut c = C::new(config());
    let mut ids = Vec::new();
    for r in 0..2 {
        ids.push(first_join(&mut c, r, 0).0);
    }
    c.tick(3_000);
    c.tick(6_000);
    assert!(syncs(&c.sync(sync_req(&ids[1], 1, vec![]), 5, 6_000)).is_empty());
    let e = c.tick(6_000 + Ms::from(REBALANCE));
    let s = syncs(&e);
    assert_eq!(s, vec![(5, SyncResponse::error(REBALANCE_IN_PROGRESS))]);
    let g = c.describe("g").unwrap();
    assert_eq!(
        g.members.len(),
        1,
        "the leader that never synced was removed"
    );
}

#[test]
fn the_last_member_leaving_empties_the_group() {
    let mut c = C::new(config());
    let (ids, now) = stable_group(&mut c, 1);
    let (errors, e) = c.leave("g", &[(ids[0].clone(), None), ("ghost".into(), None)], now);
    assert_eq!(errors, vec![NONE, UNKNOWN_MEMBER_ID]);
    assert_eq!(writes(&e), 1, "the empty group is written");
    assert_eq!(c.describe("g").unwrap().state, GroupState::Empty);
    assert_eq!(
        c.leave("nope", &[("x".into(), None)], now).0,
        vec![UNKNOWN_MEMBER_ID]
    );
}

#[test]
fn a_static_member_restarting_within_its_session_causes_no_rebalance() {
    let mut c = C::new(config());
    let e = c.join(join_req("", Some("i-1"), &[("range", b"m")]), 1, 0);
    assert!(
        joins(&e).is_empty(),
        "static members skip MEMBER_ID_REQUIRED"
    );
    let e = c.tick(3_000);
    let old = joins(&e)[0].1.member_id.clone();
    assert!(old.starts_with("i-1-"));
    c.sync(
        sync_req(&old, 1, vec![(old.clone(), Bytes::from_static(b"p0"))]),
        2,
        3_000,
    );
    // The process restarts: same instance id, no member id, protocols unchanged.
    let e = c.join(join_req("", Some("i-1"), &[("range", b"m")]), 3, 5_000);
    let j = joins(&e);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.error, NONE);
    assert_eq!(j[0].1.generation_id, 1, "same generation: no rebalance");
    let new = j[0].1.member_id.clone();
    assert_ne!(new, old);
    assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
    let mut s = sync_req(&new, 1, vec![]);
    s.group_instance_id = Some("i-1".into());
    assert_eq!(
        syncs(&c.sync(s, 4, 5_000))[0].1.assignment,
        Bytes::from_static(b"p0")
    );
    // The old incarnation is fenced.
    assert_eq!(
        c.heartbeat("g", 1, &old, Some("i-1"), 5_000),
        FENCED_INSTANCE_ID
    );
    let mut stale = join_req(&old, Some("i-1"), &[("range", b"m")]);
    stale.require_known_member_id = true;
    assert_eq!(
        joins(&c.join(stale, 5, 5_000))[0].1.error,
        FENCED_INSTANCE_ID
    );
    assert_eq!(
        c.leave("g", &[(old.clone(), Some("i-1".into()))], 5_000).0,
        vec![FENCED_INSTANCE_ID]
    );
    assert_eq!(
        c.leave("g", &[(String::new(), Some("i-1".into()))], 5_000)
            .0,
        vec![NONE]
    );
}

#[test]
fn protocols_are_chosen_by_vote_among_those_all_members_support() {
    let mut c = C::new(GroupConfig {
        initial_rebalance_delay_ms: 0,
        ..config()
    });
    let e = c.join(
        join_req("", None, &[("cooperative-sticky", b""), ("range", b"")]),
        1,
        0,
    );
    let a = joins(&e)[0].1.member_id.clone();
    c.join(
        join_req(&a, None, &[("cooperative-sticky", b""), ("range", b"")]),
        1,
        0,
    );
    // Joins complete at once without an initial delay.
    assert_eq!(
        c.describe("g").unwrap().state,
        GroupState::CompletingRebalance
    );
    let e = c.join(
        join_req("", None, &[("range", b""), ("cooperative-sticky", b"")]),
        2,
        0,
    );
    let b = joins(&e)[0].1.member_id.clone();
    c.join(
        join_req(&b, None, &[("range", b""), ("cooperative-sticky", b"")]),
        2,
        0,
    );
    let e = c.join(
        join_req(&a, None, &[("cooperative-sticky", b""), ("range", b"")]),
        1,
        0,
    );
    let j = joins(&e);
    assert_eq!(j.len(), 2);
    assert_eq!(
        j[0].1.protocol_name.as_deref(),
        Some("cooperative-sticky"),
        "a tie goes to the leader's preference"
    );
}

#[test]
fn offsets_commit_with_membership_checks_and_standalone_commits() {
    let mut c = C::new(config());
    let commit = |p: i32, o: i64| {
        vec![OffsetCommit {
            topic: "t".into(),
            partition: p,
            offset: o,
            leader_epoch: -1,
            metadata: "meta".into(),
        }]
    };
    // Standalone consumer (assign + commit): generation -1, no member id, no group yet.
    let (errors, e) = c.commit_offsets("solo", -1, "", None, commit(0, 5), 0);
    assert_eq!(errors, vec![NONE]);
    assert_eq!(writes(&e), 1);
    assert_eq!(
        c.fetch_offsets("solo", Some(&[("t".into(), 0), ("t".into(), 1)]))
            .iter()
            .map(|o| o.offset)
            .collect::<Vec<_>>(),
        vec![5, -1]
    );
    assert_eq!(
        c.commit_offsets("ghost", 3, "m", None, commit(0, 1), 0).0,
        vec![ILLEGAL_GENERATION]
    );
    let (ids, now) = stable_group(&mut c, 2);
    assert_eq!(
        c.commit_offsets("g", -1, "", None, commit(0, 1), now).0,
        vec![UNKNOWN_MEMBER_ID],
        "no standalone commits to an active group"
    );
    assert_eq!(
        c.commit_offsets("g", 1, "stranger", None, commit(0, 1), now)
            .0,
        vec![UNKNOWN_MEMBER_ID]
    );
    assert_eq!(
        c.commit_offsets("g", 9, &ids[0], None, commit(0, 1), now).0,
        vec![ILLEGAL_GENERATION]
    );
    assert_eq!(
        c.commit_offsets("g", 1, &ids[0], None, commit(0, 10), now)
            .0,
        vec![NONE]
    );
    let big = vec![OffsetCommit {
        topic: "t".into(),
        partition: 1,
        offset: 1,
        leader_epoch: -1,
        metadata: "x".repeat(5000),
    }];
    assert_eq!(
        c.commit_offsets("g", 1, &ids[0], None, big, now).0,
        vec![OFFSET_METADATA_TOO_LARGE]
    );
    // A rebalance is starting: the current generation may still commit (Kafka allows it).
    first_join(&mut c, 9, now);
    assert_eq!(
        c.commit_offsets("g", 1, &ids[1], None, commit(1, 20), now)
            .0,
        vec![NONE]
    );
    let all = c.fetch_offsets("g", None);
    assert_eq!(
        all.iter()
            .map(|o| (o.partition, o.offset))
            .collect::<Vec<_>>(),
        vec![(0, 10), (1, 20)]
    );
    // Everyone rejoins: CompletingRebalance refuses commits.
    c.join(join_req(&ids[0], None, &[("range", b"m")]), 10, now);
    c.join(join_req(&ids[1], None, &[("range", b"m")]), 11, now);
    assert_eq!(
        c.describe("g").unwrap().state,
        GroupState::CompletingRebalance
    );
    assert_eq!(
        c.commit_offsets("g", 2, &ids[1], None, commit(1, 30), now)
            .0,
        vec![REBALANCE_IN_PROGRESS]
    );
}

#[test]
fn groups_delete_only_when_empty_and_offsets_delete_unless_subscribed() {
    let mut c = C::new(config());
    assert_eq!(c.delete_group("nope").unwrap_err(), GROUP_ID_NOT_FOUND);
    let (ids, now) = stable_group(&mut c, 1);
    c.commit_offsets(
        "g",
        1,
        &ids[0],
        None,
        vec![OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset: 3,
            leader_epoch: -1,
            metadata: String::new(),
        }],
        now,
    );
    assert_eq!(c.delete_group("g").unwrap_err(), NON_EMPTY_GROUP);
    let (errors, _) = c
        .delete_offsets("g", &[("t".into(), 0)], |t| t == "t")
        .unwrap();
    assert_eq!(errors, vec![GROUP_SUBSCRIBED_TO_TOPIC]);
    c.leave("g", &[(ids[0].clone(), None)], now);
    let (errors, e) = c
        .delete_offsets("g", &[("t".into(), 0)], |t| t == "t")
        .unwrap();
    assert_eq!((errors, writes(&e)), (vec![NONE], 1));
    let e = c.delete_group("g").unwrap();
    assert_eq!(writes(&e), 1, "a tombstone for the group");
    assert!(c.describe("g").is_none());
}

#[test]
fn state_written_to_the_log_rebuilds_the_coordinator() {
    let mut c = C::new(config());
    let (ids, now) = stable_group(&mut c, 2);
    let mut log = Vec::new();
    let (_, e) = c.commit_offsets(
        "g",
        1,
        &ids[0],
        None,
        vec![OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset: 77,
            leader_epoch: 2,
            metadata: "m".into(),
        }],
        now,
    );
    log.extend(e);
    // Group snapshot as written at the last sync.
    let snapshot = c.groups.get("g").unwrap().snapshot(now);
    let mut restored = C::new(config());
    restored.replay(snapshot, 50_000);
    for effect in log {
        if let Effect::Write(r) = effect {
            let (k, v) = r.encode();
            restored.replay(OffsetsRecord::decode(Some(k), v).unwrap(), 50_000);
        }
    }
    let g = restored.describe("g").unwrap();
    assert_eq!(g.state, GroupState::Stable);
    assert_eq!(g.members.len(), 2);
    assert_eq!(restored.fetch_offsets("g", None)[0].offset, 77);
    // Members loaded from the log keep their generation and have a session to come back.
    assert_eq!(restored.heartbeat("g", 1, &ids[0], None, 55_000), NONE);
    restored.tick(50_000 + Ms::from(SESSION));
    assert_eq!(
        restored.describe("g").unwrap().members.len(),
        1,
        "the member that never came back is evicted"
    );
}

#[test]
fn offsets_of_an_empty_group_expire_after_the_retention() {
    let mut c = C::new(GroupConfig {
        offsets_retention_ms: 1_000,
        ..config()
    });
    c.commit_offsets(
        "solo",
        -1,
        "",
        None,
        vec![OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
        }],
        0,
    );
    assert!(c.tick(500).is_empty());
    let e = c.tick(2_000);
    assert_eq!(writes(&e), 2, "an offset tombstone and a group tombstone");
    assert!(c.describe("solo").is_none());
}

/// A stable group of two whose leader rejoins (a new rebalance, not the initial one) while a
/// third client gets MEMBER_ID_REQUIRED and never comes back; the follower rejoins too.
/// Returns the ids, the pending id and when it was handed out.
fn rebalance_held_by_a_pending_member(c: &mut C) -> (Vec<String>, String, Ms) {
    let (ids, now) = stable_group(c, 2);
    assert!(joins(&c.join(join_req(&ids[0], None, &[("range", b"m")]), 10, now)).is_empty());
    assert_eq!(
        c.describe("g").unwrap().state,
        GroupState::PreparingRebalance
    );
    let e = c.join(join_req("", None, &[("range", b"m")]), 12, now);
    let j = joins(&e);
    assert_eq!(j[0].1.error, MEMBER_ID_REQUIRED);
    let pending = j[0].1.member_id.clone();
    assert!(
        joins(&c.join(join_req(&ids[1], None, &[("range", b"m")]), 11, now)).is_empty(),
        "the join phase waits for the member id it handed out"
    );
    (ids, pending, now)
}

/// The joins of members 10 and 11 answered at generation 2, the leader seeing both.
fn assert_rejoined_members_answered(e: &[Effect<u32>], ids: &[String]) {
    let mut j = joins(e);
    j.sort_by_key(|(r, _)| *r);
    assert_eq!(
        j.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        vec![10, 11],
        "both rejoined members get their JoinGroup answer"
    );
    assert!(j
        .iter()
        .all(|(_, r)| r.error == NONE && r.generation_id == 2));
    assert_eq!(
        j[0].1
            .members
            .iter()
            .map(|m| m.member_id.clone())
            .collect::<Vec<_>>(),
        ids.to_vec(),
        "the leader sees the members that rejoined, not the abandoned id"
    );
}

#[test]
fn an_abandoned_member_id_expiring_completes_the_join_at_once() {
    let mut c = C::new(config());
    let (ids, _pending, now) = rebalance_held_by_a_pending_member(&mut c);
    assert!(joins(&c.tick(now + Ms::from(SESSION) - 1)).is_empty());
    let e = c.tick(now + Ms::from(SESSION));
    assert_rejoined_members_answered(&e, &ids);
    assert!(
        Ms::from(SESSION) < Ms::from(REBALANCE),
        "the session timeout, not the rebalance timeout"
    );
    assert_eq!(
        c.describe("g").unwrap().state,
        GroupState::CompletingRebalance
    );
    assert!(
        c.next_deadline()
            .is_some_and(|d| d > now + Ms::from(SESSION)),
        "nothing is left due after the tick"
    );
}

#[test]
fn an_abandoned_member_id_leaving_completes_the_join_at_once() {
    let mut c = C::new(config());
    let (ids, pending, now) = rebalance_held_by_a_pending_member(&mut c);
    let (errors, e) = c.leave("g", &[(pending, None)], now + 1);
    assert_eq!(errors, vec![NONE]);
    assert_rejoined_members_answered(&e, &ids);
}

#[test]
fn an_abandoned_member_id_in_a_stable_group_starts_no_rebalance() {
    let mut c = C::new(config());
    let (ids, now) = stable_group(&mut c, 2);
    let e = c.join(join_req("", None, &[("range", b"m")]), 12, now);
    let pending = joins(&e)[0].1.member_id.clone();
    let (errors, e) = c.leave("g", &[(pending, None)], now);
    assert_eq!(errors, vec![NONE]);
    assert!(joins(&e).is_empty() && syncs(&e).is_empty() && writes(&e) == 0);
    assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
    c.join(join_req("", None, &[("range", b"m")]), 13, now);
    for id in &ids {
        assert_eq!(c.heartbeat("g", 1, id, None, now + 5_000), NONE);
    }
    assert!(c.tick(now + Ms::from(SESSION)).is_empty());
    assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
}

#[test]
fn a_member_that_does_not_rejoin_completes_the_join_when_it_leaves_or_expires() {
    for leaves in [true, false] {
        let mut c = C::new(config());
        let (ids, now) = stable_group(&mut c, 3);
        c.join(join_req(&ids[0], None, &[("range", b"m")]), 10, now);
        c.join(join_req(&ids[1], None, &[("range", b"m")]), 11, now);
        let e = if leaves {
            c.leave("g", &[(ids[2].clone(), None)], now + 1).1
        } else {
            assert!(joins(&c.tick(now + Ms::from(SESSION) - 1)).is_empty());
            c.tick(now + Ms::from(SESSION))
        };
        assert_rejoined_members_answered(&e, &ids[..2]);
    }
}

#[test]
fn an_abandoned_member_id_does_not_hold_up_the_first_generation() {
    let mut c = C::new(config());
    let e = c.join(join_req("", None, &[("range", b"m")]), 12, 0);
    assert_eq!(joins(&e)[0].1.error, MEMBER_ID_REQUIRED);
    first_join(&mut c, 1, 0);
    let j = joins(&c.tick(3_000));
    assert_eq!(
        (j.len(), j[0].1.generation_id),
        (1, 1),
        "the initial delay ends the join phase"
    );
}

fn tick_by(effects: &[Effect<u32>]) -> Vec<Ms> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::TickBy(at) => Some(*at),
            _ => None,
        })
        .collect()
}

#[test]
fn requests_that_set_a_deadline_tell_the_runtime_when_to_tick() {
    let mut c = C::new(config());
    let e = c.join(join_req("", None, &[("range", b"m")]), 1, 0);
    let id = joins(&e)[0].1.member_id.clone();
    assert_eq!(
        tick_by(&e),
        vec![Ms::from(SESSION)],
        "the handed-out member id lapses after the session timeout"
    );
    let e = c.join(join_req(&id, None, &[("range", b"m")]), 1, 10);
    assert_eq!(tick_by(&e), vec![3_010], "the initial delay ends");
    assert!(
        tick_by(&c.tick(3_010)).is_empty(),
        "tick leaves it to next_deadline"
    );
    assert_eq!(
        c.next_deadline(),
        Some(3_010 + Ms::from(SESSION)),
        "answered, the member must sync within its session"
    );
    let e = c.sync(sync_req(&id, 1, vec![]), 2, 4_000);
    assert_eq!(
        tick_by(&e),
        vec![4_000 + Ms::from(SESSION)],
        "synced, the member's session runs again"
    );
    assert_eq!(c.heartbeat("g", 1, &id, None, 5_000), NONE);
    let (_, e) = c.leave("g", &[(id, None)], 6_000);
    assert!(tick_by(&e).is_empty(), "an empty group has no deadline");
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn unloading_answers_waiting_joins_and_syncs_not_coordinator() {
    // A new member's join waits while the stable members are asked to rejoin.
    let mut joining = C::new(config());
    let (_, now) = stable_group(&mut joining, 2);
    let (new_id, e) = first_join(&mut joining, 7, now);
    assert!(joins(&e).is_empty(), "the join waits for the others");
    let e = joining.unload();
    let j = joins(&e);
    assert_eq!(j.len(), 1, "the waiting join is answered: {e:?}");
    assert_eq!(j[0].0, 7);
    assert_eq!(j[0].1.error, NOT_COORDINATOR);
    assert_eq!(j[0].1.member_id, new_id);
    assert_eq!(writes(&e), 0, "unloading writes nothing");

    // A follower's sync waits for the leader's assignment.
    let mut syncing = C::new(config());
    let (_, _) = first_join(&mut syncing, 0, 0);
    let (follower, _) = first_join(&mut syncing, 1, 0);
    let mut e = syncing.tick(3_000);
    e.extend(syncing.tick(6_000));
    assert_eq!(joins(&e).len(), 2, "both members joined generation 1");
    assert!(syncs(&syncing.sync(sync_req(&follower, 1, vec![]), 101, 6_000)).is_empty());
    let e = syncing.unload();
    let s = syncs(&e);
    assert_eq!(s.len(), 1, "the waiting sync is answered: {e:?}");
    assert_eq!(s[0].0, 101);
    assert_eq!(s[0].1.error, NOT_COORDINATOR);
    assert!(joins(&e).is_empty(), "nobody else was waiting");
}

mod transactional_offsets {
    use super::*;

    fn offset(topic: &str, partition: i32, offset: i64) -> OffsetCommit {
        OffsetCommit {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        }
    }

    fn committed(c: &Coordinator<u32>, group: &str) -> (i64, bool) {
        let o = &c.fetch_offsets(group, Some(&[("t".to_string(), 0)]))[0];
        (o.offset, o.pending)
    }

    #[test]
    fn offsets_of_a_transaction_count_when_it_commits_and_never_when_it_aborts() {
        let mut c: Coordinator<u32> = Coordinator::new(GroupConfig::default());
        let (errors, effects) =
            c.txn_commit_offsets("g", -1, "", None, vec![offset("t", 0, 5)], (9, 0), 0);
        assert_eq!(errors, vec![0]);
        assert!(matches!(
            effects.as_slice(),
            [Effect::WriteTxn {
                producer_id: 9,
                producer_epoch: 0,
                ..
            }]
        ));
        assert_eq!(committed(&c, "g"), (-1, true), "pending, not committed");
        c.complete_txn(9, 0, false, 1);
        assert_eq!(committed(&c, "g"), (-1, false), "aborted");
        c.txn_commit_offsets("g", -1, "", None, vec![offset("t", 0, 7)], (9, 0), 2);
        c.complete_txn(9, 0, true, 3);
        assert_eq!(committed(&c, "g"), (7, false));
    }

    #[test]
    fn a_fenced_producer_cannot_commit_offsets_after_its_successors_marker() {
        let mut c: Coordinator<u32> = Coordinator::new(GroupConfig::default());
        // The abort that fenced epoch 0 landed with epoch 1.
        c.complete_txn(9, 1, false, 0);
        let (errors, effects) =
            c.txn_commit_offsets("g", -1, "", None, vec![offset("t", 0, 5)], (9, 0), 1);
        assert_eq!(errors, vec![crate::errors::INVALID_PRODUCER_EPOCH]);
        assert!(effects.is_empty());
    }

    #[test]
    fn replayed_transactional_offsets_wait_for_their_marker() {
        let mut c: Coordinator<u32> = Coordinator::new(GroupConfig::default());
        let record = OffsetsRecord::Offset {
            group_id: "g".into(),
            topic: "t".into(),
            partition: 0,
            value: Some(crate::records::OffsetRecord {
                offset: 3,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp: 0,
            }),
        };
        c.replay_txn(9, 0, record);
        assert_eq!(committed(&c, "g"), (-1, true));
        c.complete_txn(9, 0, true, 0);
        assert_eq!(committed(&c, "g"), (3, false));
    }
}
