//! The transaction coordinator's transitions and error codes, with a fake clock. Every record
//! the coordinator asks to write goes through its log encoding and back, as a real partition
//! would give it to the next coordinator.

use crate::txn::*;
use crate::txn_records::{decode, encode_key, encode_value, TxnPartition, TxnRecord, TxnState};

const T0: i64 = 1_700_000_000_000;

fn tp(topic: &str, p: i32) -> TxnPartition {
    (topic.to_string(), p)
}

fn coordinator() -> TxnCoordinator {
    TxnCoordinator::new(TxnConfig {
        coordinator_epoch: 3,
        ..TxnConfig::default()
    })
}

fn write(step: Step) -> Write {
    match step {
        Step::Write(w) => w,
        other => panic!("expected a write, got {other:?}"),
    }
}

fn refused(step: Step) -> TxnError {
    match step {
        Step::Done(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Writes `w` "to the log" (checking it reads back the same) and hands back the outcome.
fn land(c: &mut TxnCoordinator, w: Write, now: i64) -> Written {
    let key = encode_key(&w.transactional_id);
    let value = w.record.as_ref().map(encode_value);
    let (id, back) = decode(Some(key), value).expect("the record decodes");
    assert_eq!(id, w.transactional_id);
    assert_eq!(back, w.record);
    c.written(w, Ok(()), now)
}

fn reply(written: Written) -> Result<Reply, TxnError> {
    written.reply.expect("someone is answered")
}

/// A producer of `id` initialised: its producer id and epoch.
fn init(c: &mut TxnCoordinator, id: &str, fresh: i64, now: i64) -> (i64, i16) {
    let step = match c.init_producer_id(id, 60_000, None, None, now) {
        Step::NeedProducerId => c.init_producer_id(id, 60_000, None, Some(fresh), now),
        other => other,
    };
    match reply(land(c, write(step), now)) {
        Ok(Reply::ProducerId {
            producer_id,
            producer_epoch,
        }) => (producer_id, producer_epoch),
        other => panic!("init failed: {other:?}"),
    }
}

fn add(c: &mut TxnCoordinator, id: &str, (pid, epoch): (i64, i16), parts: &[TxnPartition]) {
    match c.add_partitions(id, pid, epoch, parts, 0, T0 + 10) {
        Step::Write(w) => assert_eq!(reply(land(c, w, T0 + 10)), Ok(Reply::Added)),
        Step::Done(r) => assert_eq!(r, Ok(Reply::Added)),
        Step::NeedProducerId => panic!("adding needs no producer id"),
    }
}

fn state(c: &TxnCoordinator, id: &str) -> TxnState {
    c.get(id).expect("the id is known").record.state
}

/// Ends the transaction through its markers: the producer's answer, and the markers written.
fn end(
    c: &mut TxnCoordinator,
    id: &str,
    (pid, epoch): (i64, i16),
    commit: bool,
    tv: i16,
) -> (Result<Reply, TxnError>, Option<Markers>) {
    let w = write(c.end_txn(id, pid, epoch, commit, tv, None, T0 + 20));
    let out = land(c, w, T0 + 20);
    let markers = out.markers.clone();
    if let Some(m) = &markers {
        let complete = c
            .markers_written(id, m.producer_id, m.producer_epoch, T0 + 30)
            .expect("the complete record follows the markers");
        assert_eq!(land(c, complete, T0 + 30), Written::default());
    } else if let Some(then) = out.then.clone() {
        land(c, then, T0 + 30);
    }
    (reply(out), markers)
}

#[test]
fn a_new_transactional_id_gets_a_fresh_producer_id_at_epoch_0() {
    let mut c = coordinator();
    assert_eq!(
        c.init_producer_id("app", 60_000, None, None, T0),
        Step::NeedProducerId
    );
    let w = write(c.init_producer_id("app", 60_000, None, Some(1000), T0));
    let record = w.record.clone().unwrap();
    assert_eq!((record.producer_id, record.producer_epoch), (1000, 0));
    assert_eq!(record.state, TxnState::Empty);
    assert_eq!(record.timeout_ms, 60_000);
    // While it is written, the id is busy.
    assert_eq!(
        refused(c.init_producer_id("app", 60_000, None, None, T0)),
        TxnError::ConcurrentTransactions
    );
    assert_eq!(
        reply(land(&mut c, w, T0)),
        Ok(Reply::ProducerId {
            producer_id: 1000,
            producer_epoch: 0
        })
    );
}

#[test]
fn timeouts_and_ids_are_validated_with_kafkas_codes() {
    let mut c = coordinator();
    for timeout in [0, -5, DEFAULT_MAX_TIMEOUT_MS + 1] {
        assert_eq!(
            refused(c.init_producer_id("app", timeout, None, Some(1), T0)),
            TxnError::InvalidTransactionTimeout
        );
    }
    assert_eq!(
        refused(c.init_producer_id("", 1000, None, Some(1), T0)),
        TxnError::InvalidRequest
    );
    assert_eq!(TxnError::InvalidTransactionTimeout.code(), 50);
    assert_eq!(TxnError::ProducerFenced.code(), 90);
    assert_eq!(TxnError::ConcurrentTransactions.code(), 51);
    assert_eq!(TxnError::TransactionAbortable.code(), 120);
}

#[test]
fn a_second_producer_bumps_the_epoch_and_fences_the_first() {
    let mut c = coordinator();
    let first = init(&mut c, "app", 1000, T0);
    let second = init(&mut c, "app", 9999, T0 + 1);
    assert_eq!(second, (1000, 1));
    assert_eq!(
        refused(c.add_partitions("app", first.0, first.1, &[tp("t", 0)], 0, T0 + 2)),
        TxnError::ProducerFenced
    );
    assert_eq!(
        refused(c.end_txn("app", first.0, first.1, true, 0, None, T0 + 2)),
        TxnError::ProducerFenced
    );
}

#[test]
fn adding_partitions_opens_the_transaction_once_and_grows_it() {
    let mut c = coordinator();
    let p = init(&mut c, "app", 1000, T0);
    add(&mut c, "app", p, &[tp("orders", 0)]);
    let txn = &c.get("app").unwrap().record;
    assert_eq!(txn.state, TxnState::Ongoing);
    assert_eq!(txn.start_ms, T0 + 10);
    // Partitions already in: nothing is written.
    assert_eq!(
        c.add_partitions("app", p.0, p.1, &[tp("orders", 0)], 0, T0 + 50),
        Step::Done(Ok(Reply::Added))
    );
    let w = write(c.add_partitions("app", p.0, p.1, &[tp("orders", 1)], 0, T0 + 60));
    let grown = w.record.clone().unwrap();
    assert_eq!(grown.partitions.len(), 2);
    assert_eq!(
        grown.start_ms,
        T0 + 10,
        "the transaction began with its first add"
    );
    land(&mut c, w, T0 + 60);
    assert_eq!(
        c.verify_partitions("app", p.0, p.1, &[tp("orders", 1), tp("orders", 7)]),
        Ok(vec![Ok(()), Err(TxnError::TransactionAbortable)])
    );
}

#[test]
fn adding_checks_the_producer_in_kafkas_order() {
    let mut c = coordinator();
    assert_eq!(
        refused(c.add_partitions("nobody", 1, 0, &[tp("t", 0)], 0, T0)),
        TxnError::InvalidProducerIdMapping
    );
    let p = init(&mut c, "app", 1000, T0);
    assert_eq!(
        refused(c.add_partitions("app", 7, p.1, &[tp("t", 0)], 0, T0)),
        TxnError::InvalidProducerIdMapping
    );
    assert_eq!(
        refused(c.add_partitions("app", p.0, p.1 + 1, &[tp("t", 0)], 0, T0)),
        TxnError::ProducerFenced
    );
    assert_eq!(
        c.verify_partitions("app", p.0, p.1 + 1, &[tp("t", 0)]),
        Err(TxnError::ProducerFenced)
    );
    add(&mut c, "app", p, &[tp("t", 0)]);
    let w = write(c.end_txn("app", p.0, p.1, true, 0, None, T0 + 20));
    assert_eq!(
        refused(c.add_partitions("app", p.0, p.1, &[tp("t", 1)], 0, T0 + 21)),
        TxnError::ConcurrentTransactions
    );
    land(&mut c, w, T0 + 22);
    // Prepared, markers under way: still busy.
    assert_eq!(
        refused(c.add_partitions("app", p.0, p.1, &[tp("t", 1)], 0, T0 + 23)),
        TxnError::ConcurrentTransactions
    );
}

#[test]
fn a_commit_answers_after_its_prepare_record_then_writes_markers_then_completes() {
    let mut c = coordinator();
    let p = init(&mut c, "app", 1000, T0);
    add(
        &mut c,
        "app",
        p,
        &[tp("orders", 0), tp("__consumer_offsets", 4)],
    );
    let w = write(c.end_txn("app", p.0, p.1, true, 0, None, T0 + 20));
    assert_eq!(w.record.as_ref().unwrap().state, TxnState::PrepareCommit);
    assert_eq!(w.record.as_ref().unwrap().producer_epoch, p.1, "no bump");
    let out = land(&mut c, w, T0 + 20);
    assert_eq!(
        out.reply,
        Some(Ok(Reply::Ended {
            producer_id: -1,
            producer_epoch: -1
        }))
    );
    let markers = out.markers.expect("markers");
    assert!(markers.committed);
    assert_eq!((markers.producer_id, markers.producer_epoch), p);
    assert_eq!(markers.coordinator_epoch, 3);
    assert_eq!(
        markers.partitions,
        vec![tp("__consumer_offsets", 4), tp("orders", 0)]
    );
    assert_eq!(state(&c, "app"), TxnState::PrepareCommit);
    // Markers for an older epoch complete nothing.
    assert_eq!(c.markers_written("app", p.0, p.1 - 1, T0 + 30), None);
    let complete = c.markers_written("app", p.0, p.1, T0 + 30).unwrap();
    land(&mut c, complete, T0 + 30);
    let txn = &c.get("app").unwrap().record;
    assert_eq!(txn.state, TxnState::CompleteCommit);
    assert!(txn.partitions.is_empty());
    // A retried commit is answered; an abort of what committed is not.
    assert_eq!(
        c.end_txn("app", p.0, p.1, true, 0, None, T0 + 40),
        Step::Done(Ok(Reply::Ended {
            producer_id: -1,
            producer_epoch: -1
        }))
    );
    assert_eq!(
        refused(c.end_txn("app", p.0, p.1, false, 0, None, T0 + 40)),
        TxnError::InvalidTxnState
    );
}

#[test]
fn ending_a_transaction_that_never_began_is_an_invalid_state_for_a_classic_client() {
    let mut c = coordinator();
    let p = init(&mut c, "app", 1000, T0);
    for commit in [true, false] {
        assert_eq!(
            refused(c.end_txn("app", p.0, p.1, commit, 0, None, T0)),
            TxnError::InvalidTxnState
        );
    }
    add(&mut c, "app", p, &[tp("t", 0)]);
    let (answer, markers) = end(&mut c, "app", p, false, 0);
    assert!(answer.is_ok());
    assert!(!markers.unwrap().committed);
    assert_eq!(state(&c, "app"), TxnState::CompleteAbort);
}

#[test]
fn transactions_version_2_bumps_the_epoch_at_every_end() {
    let mut c = coordinator();
    let p = init(&mut c, "app", 1000, T0);
    add(&mut c, "app", p, &[tp("t", 0)]);
    let (answer, markers) = end(&mut c, "app", p, true, 2);
    assert_eq!(
        answer,
        Ok(Reply::Ended {
            producer_id: 1000,
            producer_epoch: p.1 + 1
        })
    );
    let markers = markers.unwrap();
    assert_eq!(
        markers.producer_epoch,
        p.1 + 1,
        "markers carry the new epoch"
    );
    assert_eq!(markers.transaction_version, 2);
    // The producer's retry with its old epoch is answered with where it goes on.
    assert_eq!(
        c.end_txn("app", p.0, p.1, true, 2, None, T0 + 40),
        Step::Done(Ok(Reply::Ended {
            producer_id: 1000,
            producer_epoch: p.1 + 1
        }))
    );
    // With the old epoch, the producer can add nothing more.
    assert_eq!(
        refused(c.add_partitions("app", p.0, p.1, &[tp("t", 0)], 2, T0 + 41)),
        TxnError::ProducerFenced
    );
    // An abort with nothing open is allowed in version 2, and needs no markers.
    let next = (p.0, p.1 + 1);
    let w = write(c.end_txn("app", next.0, next.1, false, 2, None, T0 + 50));
    let out = land(&mut c, w, T0 + 50);
    assert_eq!(out.markers, None);
    assert_eq!(
        out.reply,
        Some(Ok(Reply::Ended {
            producer_id: 1000,
            producer_epoch: p.1 + 2
        }))
    );
    land(&mut c, out.then.expect("completes at once"), T0 + 51);
    assert_eq!(state(&c, "app"), TxnState::CompleteAbort);
    // A commit with nothing open is not.
    let now = (p.0, p.1 + 2);
    assert_eq!(
        refused(c.end_txn("app", now.0, now.1, true, 2, None, T0 + 60)),
        TxnError::InvalidTxnState
    );
}

fn replayed(state: TxnState, epoch: i16, parts: &[TxnPartition]) -> TxnCoordinator {
    let mut c = coordinator();
    c.replay(
        "app",
        Some(TxnRecord {
            producer_id: 500,
            producer_epoch: epoch,
            timeout_ms: 60_000,
            state,
            partitions: parts.iter().cloned().collect(),
            last_update_ms: T0,
            start_ms: T0,
            client_version: 2,
        }),
    );
    c
}

#[test]
fn a_used_up_epoch_moves_a_version_2_producer_to_a_new_producer_id() {
    let mut c = replayed(TxnState::Ongoing, EPOCH_EXHAUSTED, &[tp("t", 0)]);
    assert_eq!(
        c.end_txn("app", 500, EPOCH_EXHAUSTED, true, 2, None, T0 + 1),
        Step::NeedProducerId
    );
    let w = write(c.end_txn("app", 500, EPOCH_EXHAUSTED, true, 2, Some(777), T0 + 1));
    let out = land(&mut c, w, T0 + 1);
    assert_eq!(
        out.reply,
        Some(Ok(Reply::Ended {
            producer_id: 777,
            producer_epoch: 0
        }))
    );
    let markers = out.markers.unwrap();
    assert_eq!(
        (markers.producer_id, markers.producer_epoch),
        (500, i16::MAX)
    );
    let complete = c
        .markers_written("app", markers.producer_id, markers.producer_epoch, T0 + 2)
        .unwrap();
    land(&mut c, complete, T0 + 2);
    let txn = c.get("app").unwrap();
    assert_eq!(
        (txn.record.producer_id, txn.record.producer_epoch),
        (777, 0)
    );
    // The producer's retry on its old id is recognised.
    assert_eq!(
        c.end_txn("app", 500, EPOCH_EXHAUSTED, true, 2, None, T0 + 3),
        Step::Done(Ok(Reply::Ended {
            producer_id: 777,
            producer_epoch: 0
        }))
    );
}

#[test]
fn a_used_up_epoch_gives_a_new_producer_id_at_init_and_its_retry_is_recognised() {
    let mut c = replayed(TxnState::CompleteCommit, EPOCH_EXHAUSTED, &[]);
    let expected = Some((500, EPOCH_EXHAUSTED));
    assert_eq!(
        c.init_producer_id("app", 60_000, expected, None, T0),
        Step::NeedProducerId
    );
    let w = write(c.init_producer_id("app", 60_000, expected, Some(888), T0));
    assert_eq!(
        reply(land(&mut c, w, T0)),
        Ok(Reply::ProducerId {
            producer_id: 888,
            producer_epoch: 0
        })
    );
    // The same request again (its answer was lost): the same id and epoch.
    let w = write(c.init_producer_id("app", 60_000, expected, None, T0 + 1));
    assert_eq!(
        reply(land(&mut c, w, T0 + 1)),
        Ok(Reply::ProducerId {
            producer_id: 888,
            producer_epoch: 0
        })
    );
}

#[test]
fn a_producer_recovering_with_its_id_and_epoch_is_bumped_others_are_fenced() {
    let mut c = coordinator();
    let p = init(&mut c, "app", 1000, T0);
    assert_eq!(
        refused(c.init_producer_id("app", 60_000, Some((4242, 0)), None, T0)),
        TxnError::ProducerFenced
    );
    let w = write(c.init_producer_id("app", 60_000, Some(p), None, T0));
    assert_eq!(
        reply(land(&mut c, w, T0)),
        Ok(Reply::ProducerId {
            producer_id: p.0,
            producer_epoch: p.1 + 1
        })
    );
    // A retry of that request: no second bump.
    let w = write(c.init_producer_id("app", 60_000, Some(p), None, T0));
    assert_eq!(
        reply(land(&mut c, w, T0)),
        Ok(Reply::ProducerId {
            producer_id: p.0,
            producer_epoch: p.1 + 1
        })
    );
    // An epoch older than both: fenced.
    let w = write(c.init_producer_id("app", 60_000, None, None, T0));
    land(&mut c, w, T0);
    assert_eq!(
        refused(c.init_producer_id("app", 60_000, Some(p), None, T0)),
        TxnError::ProducerFenced
    );
}

#[test]
fn a_new_producer_aborts_the_open_transaction_of_the_one_it_fences() {
    for tv in [0, 2] {
        let mut c = TxnCoordinator::new(TxnConfig {
            transaction_version: tv,
            ..TxnConfig::default()
        });
        let old = init(&mut c, "app", 1000, T0);
        add(&mut c, "app", old, &[tp("t", 0), tp("t", 1)]);
        let w = write(c.init_producer_id("app", 60_000, None, None, T0 + 20));
        assert_eq!(w.record.as_ref().unwrap().state, TxnState::PrepareAbort);
        let out = land(&mut c, w, T0 + 20);
        assert_eq!(
            out.reply,
            Some(Err(TxnError::ConcurrentTransactions)),
            "the new producer retries"
        );
        let markers = out.markers.unwrap();
        assert!(!markers.committed);
        assert_eq!(
            markers.producer_epoch,
            old.1 + 1,
            "the old producer is fenced"
        );
        assert_eq!(
            refused(c.end_txn("app", old.0, old.1, true, 0, None, T0 + 21)),
            TxnError::ProducerFenced
        );
        assert_eq!(
            refused(c.init_producer_id("app", 60_000, None, None, T0 + 21)),
            TxnError::ConcurrentTransactions,
            "markers are under way"
        );
        let complete = c
            .markers_written("app", markers.producer_id, markers.producer_epoch, T0 + 22)
            .unwrap();
        land(&mut c, complete, T0 + 22);
        assert_eq!(state(&c, "app"), TxnState::CompleteAbort);
        assert_eq!(init(&mut c, "app", 0, T0 + 23), (old.0, old.1 + 2));
    }
}

#[test]
fn a_transaction_open_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let mut c = coordinator();
    let p = init(&mut c, "app", 1000, T0);
    add(&mut c, "app", p, &[tp("t", 0)]);
    let started = T0 + 10;
    assert!(c.tick(started + 60_000).is_empty(), "not past it yet");
    let mut writes = c.tick(started + 60_001);
    assert_eq!(writes.len(), 1);
    let w = writes.remove(0);
    assert_eq!(w.record.as_ref().unwrap().state, TxnState::PrepareAbort);
    assert!(c.tick(started + 60_002).is_empty(), "one abort at a time");
    let out = land(&mut c, w, started + 60_001);
    assert_eq!(out.reply, None, "nobody waits on a timeout");
    let markers = out.markers.unwrap();
    assert_eq!(markers.producer_epoch, p.1 + 1);
    // While markers are written the id is busy (Kafka checks that first), then fenced.
    assert_eq!(
        refused(c.add_partitions("app", p.0, p.1, &[tp("t", 0)], 0, started + 60_002)),
        TxnError::ConcurrentTransactions
    );
    let complete = c
        .markers_written("app", p.0, p.1 + 1, started + 60_003)
        .unwrap();
    land(&mut c, complete, started + 60_003);
    assert_eq!(state(&c, "app"), TxnState::CompleteAbort);
    assert_eq!(
        refused(c.add_partitions("app", p.0, p.1, &[tp("t", 0)], 0, started + 60_004)),
        TxnError::ProducerFenced
    );
}

#[test]
fn an_idle_transactional_id_expires_an_open_one_does_not() {
    let mut c = coordinator();
    init(&mut c, "idle", 1, T0);
    let busy = init(&mut c, "busy", 2, T0);
    add(&mut c, "busy", busy, &[tp("t", 0)]);
    c.replay("busy", {
        let mut r = c.get("busy").unwrap().record.clone();
        r.timeout_ms = DEFAULT_MAX_TIMEOUT_MS;
        r.start_ms = i64::MAX / 2;
        Some(r)
    });
    let later = T0 + DEFAULT_ID_EXPIRATION_MS;
    let mut writes = c.tick(later);
    assert_eq!(writes.len(), 1);
    let tomb = writes.remove(0);
    assert_eq!(
        (tomb.transactional_id.as_str(), &tomb.record),
        ("idle", &None)
    );
    assert_eq!(
        refused(c.init_producer_id("idle", 1000, None, None, later)),
        TxnError::ConcurrentTransactions
    );
    land(&mut c, tomb, later);
    assert!(c.get("idle").is_none());
    assert!(c.get("busy").is_some());
}

#[test]
fn a_failed_write_leaves_the_state_as_it_was() {
    let mut c = coordinator();
    let p = init(&mut c, "app", 1000, T0);
    let w = write(c.add_partitions("app", p.0, p.1, &[tp("t", 0)], 0, T0));
    let out = c.written(w, Err(TxnError::NotCoordinator), T0);
    assert_eq!(out.reply, Some(Err(TxnError::NotCoordinator)));
    assert_eq!(state(&c, "app"), TxnState::Empty);
    assert_eq!(c.get("app").unwrap().pending, None);
    // A complete record that could not be written is tried again.
    add(&mut c, "app", p, &[tp("t", 0)]);
    let w = write(c.end_txn("app", p.0, p.1, true, 0, None, T0));
    let out = land(&mut c, w, T0);
    let m = out.markers.unwrap();
    let complete = c
        .markers_written("app", m.producer_id, m.producer_epoch, T0)
        .unwrap();
    let again = c.written(complete.clone(), Err(TxnError::CoordinatorNotAvailable), T0);
    assert_eq!(again.then, Some(complete));
}

#[test]
fn a_new_coordinator_finishes_what_the_old_one_prepared() {
    let mut c = replayed(TxnState::PrepareAbort, 4, &[tp("t", 0)]);
    c.replay("gone", None);
    let resumed = c.finish_loading(T0);
    assert_eq!(resumed.len(), 1);
    let markers = resumed[0].markers.clone().unwrap();
    assert_eq!((markers.producer_id, markers.producer_epoch), (500, 4));
    assert_eq!(markers.coordinator_epoch, 3, "this coordinator's epoch");
    assert_eq!(resumed[0].reply, None);
    let complete = c.markers_written("app", 500, 4, T0).unwrap();
    land(&mut c, complete, T0);
    assert_eq!(state(&c, "app"), TxnState::CompleteAbort);
    // A tombstone after a record removes the id.
    c.replay("app", None);
    assert!(c.get("app").is_none());
}

/// Random interleavings of two producers sharing one transactional id, with writes that land
/// or fail and markers that complete late, against what must always hold: a fenced producer
/// changes nothing, markers cover every partition the producer was told it added, at an epoch
/// no older than the one it added them with, and commit only what a producer asked to commit.
mod interleavings {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Init(usize),
        Add(usize, i32),
        End(usize, bool),
        Land(bool),
        MarkersDone,
        Tick(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..2usize).prop_map(Op::Init),
            2 => (0..2usize, 0..3i32).prop_map(|(s, p)| Op::Add(s, p)),
            1 => (0..2usize, any::<bool>()).prop_map(|(s, c)| Op::End(s, c)),
            3 => any::<bool>().prop_map(Op::Land),
            2 => Just(Op::MarkersDone),
            1 => (1..40_000i64).prop_map(Op::Tick),
        ]
    }

    #[derive(Debug, Default)]
    struct Model {
        /// Each producer's id and epoch, once it has one.
        sessions: [Option<(i64, i16)>; 2],
        /// The write under way and who waits on it.
        write: Option<(Write, Option<usize>)>,
        markers: Option<Markers>,
        /// Partitions some producer was told are in the open transaction, and the id and
        /// epoch it added them with.
        added: BTreeSet<TxnPartition>,
        added_with: Option<(i64, i16)>,
        commit_asked: bool,
        abort_asked: bool,
        last_written: Option<(i64, i16)>,
        next_id: i64,
    }

    impl Model {
        fn fresh(&mut self) -> i64 {
            self.next_id += 1;
            self.next_id * 100
        }

        fn begin(&mut self, step: Step, from: Option<usize>) -> Result<(), TestCaseError> {
            if let Step::Write(w) = step {
                prop_assert!(self.write.is_none(), "two writes at once: {w:?}");
                if let Some(r) = &w.record {
                    match r.state {
                        TxnState::PrepareCommit => self.commit_asked = true,
                        TxnState::PrepareAbort => self.abort_asked = true,
                        _ => {}
                    }
                }
                self.write = Some((w, from));
            }
            Ok(())
        }

        fn check_markers(&self, m: &Markers) -> Result<(), TestCaseError> {
            for p in &self.added {
                prop_assert!(m.partitions.contains(p), "{p:?} missing from {m:?}");
            }
            if let Some((pid, epoch)) = self.added_with {
                prop_assert_eq!(m.producer_id, pid);
                prop_assert!(m.producer_epoch >= epoch, "markers older than the adds");
            }
            if m.committed {
                prop_assert!(self.commit_asked, "a commit nobody asked for");
            } else {
                prop_assert!(self.abort_asked, "an abort nobody started");
            }
            Ok(())
        }

        fn landed(&mut self, out: Written, from: Option<usize>) -> Result<(), TestCaseError> {
            if let (Some(s), Some(Ok(reply))) = (from, out.reply) {
                match reply {
                    Reply::ProducerId {
                        producer_id,
                        producer_epoch,
                    } => self.sessions[s] = Some((producer_id, producer_epoch)),
                    Reply::Ended {
                        producer_id,
                        producer_epoch,
                    } if producer_id >= 0 => self.sessions[s] = Some((producer_id, producer_epoch)),
                    _ => {}
                }
            }
            if let Some(m) = out.markers {
                self.check_markers(&m)?;
                self.markers = Some(m);
            }
            if let Some(then) = out.then {
                self.begin(Step::Write(then), None)?;
            }
            Ok(())
        }
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut c = coordinator();
        let mut m = Model::default();
        let mut now = T0;
        for op in ops {
            now += 1;
            match op {
                Op::Init(s) => {
                    let mut step = c.init_producer_id("app", 30_000, None, None, now);
                    if step == Step::NeedProducerId {
                        let id = m.fresh();
                        step = c.init_producer_id("app", 30_000, None, Some(id), now);
                    }
                    m.begin(step, Some(s))?;
                }
                Op::Add(s, p) => {
                    let Some((pid, epoch)) = m.sessions[s] else {
                        continue;
                    };
                    let current = c
                        .get("app")
                        .map(|t| (t.record.producer_id, t.record.producer_epoch));
                    let step = c.add_partitions("app", pid, epoch, &[tp("t", p)], 0, now);
                    match &step {
                        Step::Done(Ok(_)) | Step::Write(_) => {
                            prop_assert_eq!(current, Some((pid, epoch)), "a fenced producer added");
                        }
                        _ => {}
                    }
                    // A write tells the producer once it lands (a failure takes it back,
                    // below); counted now, checked against the markers.
                    if matches!(step, Step::Done(Ok(Reply::Added)) | Step::Write(_)) {
                        m.added.insert(tp("t", p));
                        m.added_with = Some((pid, epoch));
                    }
                    m.begin(step, Some(s))?;
                }
                Op::End(s, commit) => {
                    let Some((pid, epoch)) = m.sessions[s] else {
                        continue;
                    };
                    let tv = if s == 0 { 0 } else { 2 };
                    let mut step = c.end_txn("app", pid, epoch, commit, tv, None, now);
                    if step == Step::NeedProducerId {
                        let id = m.fresh();
                        step = c.end_txn("app", pid, epoch, commit, tv, Some(id), now);
                    }
                    m.begin(step, Some(s))?;
                }
                Op::Land(ok) => {
                    let Some((w, from)) = m.write.take() else {
                        continue;
                    };
                    if ok {
                        if let Some(r) = &w.record {
                            if let Some((pid, epoch)) = m.last_written {
                                prop_assert!(
                                    r.producer_id > pid
                                        || (r.producer_id == pid && r.producer_epoch >= epoch),
                                    "the producer went back from {pid}/{epoch} to {r:?}"
                                );
                            }
                            m.last_written = Some((r.producer_id, r.producer_epoch));
                            if matches!(
                                r.state,
                                TxnState::Empty
                                    | TxnState::CompleteCommit
                                    | TxnState::CompleteAbort
                            ) {
                                m.added.clear();
                                m.added_with = None;
                                m.commit_asked = false;
                                m.abort_asked = false;
                            }
                        }
                        let out = land(&mut c, w, now);
                        m.landed(out, from)?;
                    } else {
                        let failed_add = w
                            .record
                            .as_ref()
                            .is_some_and(|r| r.state == TxnState::Ongoing);
                        let out = c.written(w, Err(TxnError::CoordinatorNotAvailable), now);
                        if failed_add {
                            // The producer was told it failed: it may not count on them. What
                            // was added before stays.
                            let kept = c.get("app").map(|t| t.record.partitions.clone());
                            m.added = kept.unwrap_or_default();
                        }
                        if let Some(then) = out.then {
                            m.begin(Step::Write(then), None)?;
                        }
                    }
                }
                Op::MarkersDone => {
                    let Some(mk) = m.markers.take() else { continue };
                    if let Some(w) =
                        c.markers_written("app", mk.producer_id, mk.producer_epoch, now)
                    {
                        m.begin(Step::Write(w), None)?;
                    }
                }
                Op::Tick(ms) => {
                    now += ms;
                    if m.write.is_some() {
                        continue;
                    }
                    for w in c.tick(now) {
                        m.begin(Step::Write(w), None)?;
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn fencing_and_markers_hold_under_any_interleaving(ops in prop::collection::vec(op(), 1..80)) {
            run(ops)?;
        }
    }
}
