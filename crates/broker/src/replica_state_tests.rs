use super::*;

const LAG: i64 = 30_000;

fn settings(min_insync_replicas: usize) -> ReplicaSettings {
    ReplicaSettings {
        max_lag_ms: LAG,
        min_insync_replicas,
    }
}

/// Brokers 1 to 3 registered with epoch 10 + id, all active.
fn all_active(id: i32) -> Option<BrokerStatus> {
    (1..=3).contains(&id).then(|| BrokerStatus {
        epoch: 10 + i64::from(id),
        active: true,
    })
}

fn fetch(replica_id: i32, fetch_offset: i64) -> FollowerFetch {
    FollowerFetch {
        replica_id,
        broker_epoch: 10 + i64::from(replica_id),
        current_leader_epoch: 5,
        fetch_offset,
        last_fetched_epoch: -1,
    }
}

/// Leader 1 at epoch 5 of replicas [1, 2, 3], ISR as given, log end 100, high watermark 100.
fn leader(isr: &[i32], min_isr: usize) -> LeaderState {
    LeaderState::new(1, 5, 7, &[1, 2, 3], isr, 100, 100, settings(min_isr), 0)
}

#[test]
fn the_high_watermark_follows_the_slowest_isr_member_and_never_goes_back() {
    let mut l = leader(&[1, 2, 3], 1);
    // Both followers must fetch under this epoch before it moves past 100.
    assert_eq!(
        l.record_fetch(&fetch(2, 150), 150, all_active, 10),
        (false, None)
    );
    assert_eq!(l.high_watermark(), 100);
    assert_eq!(
        l.record_fetch(&fetch(3, 120), 150, all_active, 20),
        (true, None)
    );
    assert_eq!(l.high_watermark(), 120);
    assert_eq!(
        l.record_fetch(&fetch(3, 150), 150, all_active, 30),
        (true, None)
    );
    assert_eq!(l.high_watermark(), 150);
    // A follower that truncated and fetches from further back does not pull it back.
    assert_eq!(
        l.record_fetch(&fetch(3, 140), 150, all_active, 40),
        (false, None)
    );
    assert_eq!(l.high_watermark(), 150);
    assert_eq!(l.acknowledged(149), Some(true));
    assert_eq!(l.acknowledged(150), None);
}

#[test]
fn a_follower_that_catches_up_is_proposed_into_the_isr_and_holds_the_high_watermark_meanwhile() {
    let mut l = leader(&[1, 2], 1);
    l.record_fetch(&fetch(2, 200), 200, all_active, 10);
    assert_eq!(l.high_watermark(), 200);
    // Behind the high watermark: it holds nothing and joins nothing.
    assert_eq!(
        l.record_fetch(&fetch(3, 150), 250, all_active, 20),
        (false, None)
    );
    // Caught up to the high watermark (and past the epoch's start): proposed.
    let (_, proposal) = l.record_fetch(&fetch(3, 200), 250, all_active, 30);
    let proposal = proposal.expect("it may join");
    assert_eq!(
        proposal,
        Proposal {
            leader_epoch: 5,
            partition_epoch: 7,
            new_isr: vec![(1, -1), (2, 12), (3, 13)],
        }
    );
    assert_eq!(l.committed_isr(), &[1, 2]);
    assert_eq!(l.maximal_isr(), &[1, 2, 3]);
    // While pending, the maximal ISR decides: 3 holds the high watermark at what it has.
    l.record_fetch(&fetch(2, 250), 250, all_active, 40);
    assert_eq!(l.high_watermark(), 200);
    assert_eq!(
        l.record_fetch(&fetch(3, 250), 250, all_active, 50),
        (true, None)
    );
    assert_eq!(l.high_watermark(), 250);
    let committed = AlterOutcome::Committed {
        leader_epoch: 5,
        partition_epoch: 8,
        isr: vec![1, 2, 3],
    };
    assert_eq!(l.alter_partition_done(committed), None);
    assert_eq!(
        (l.committed_isr(), l.partition_epoch()),
        (&[1, 2, 3][..], 8)
    );
    assert!(l.in_flight().is_none());
}

#[test]
fn only_an_active_broker_fetching_with_its_current_epoch_may_join() {
    for (status, sent_epoch) in [
        (
            Some(BrokerStatus {
                epoch: 13,
                active: false,
            }),
            13,
        ), // fenced or shutting down
        (
            Some(BrokerStatus {
                epoch: 13,
                active: true,
            }),
            12,
        ), // fetching with an old epoch
        (None, 13), // not registered
    ] {
        let mut l = leader(&[1, 2], 1);
        l.record_fetch(&fetch(2, 100), 100, all_active, 10);
        let brokers = |id: i32| if id == 3 { status } else { all_active(id) };
        let f = FollowerFetch {
            broker_epoch: sent_epoch,
            ..fetch(3, 100)
        };
        assert_eq!(
            l.record_fetch(&f, 100, brokers, 20).1,
            None,
            "{status:?} {sent_epoch}"
        );
        assert_eq!(l.maximal_isr(), &[1, 2]);
    }
}

#[test]
fn a_follower_joins_only_with_everything_before_the_leaders_epoch() {
    // The new leader's log ends at 100, but its high watermark is 60.
    let mut l = LeaderState::new(1, 5, 7, &[1, 2, 3], &[1, 2], 100, 60, settings(1), 0);
    l.record_fetch(&fetch(2, 80), 100, all_active, 10);
    assert_eq!(l.high_watermark(), 80);
    // Follower 3 has reached the high watermark but not the epoch's start (100).
    assert_eq!(l.record_fetch(&fetch(3, 90), 100, all_active, 20).1, None);
    assert!(l
        .record_fetch(&fetch(3, 100), 100, all_active, 30)
        .1
        .is_some());
}

#[test]
fn a_member_silent_past_the_lag_time_is_proposed_out_and_counts_until_committed() {
    let mut l = leader(&[1, 2, 3], 1);
    l.record_fetch(&fetch(2, 100), 100, all_active, 1_000);
    l.record_fetch(&fetch(3, 100), 100, all_active, 1_000);
    // 3 stops fetching; 2 keeps up with new appends.
    l.record_fetch(&fetch(2, 300), 300, all_active, 20_000);
    assert_eq!(
        l.maybe_shrink(300, 20_000),
        None,
        "3 was caught up 19 s ago"
    );
    l.record_fetch(&fetch(2, 400), 400, all_active, 31_500);
    assert_eq!(l.high_watermark(), 100, "held by 3");
    let proposal = l.maybe_shrink(400, 31_500).expect("3 lagged 30.5 s");
    assert_eq!(proposal.new_isr, vec![(1, -1), (2, 12)]);
    assert_eq!(l.maximal_isr(), &[1, 2, 3], "kept until committed");
    assert_eq!(l.maybe_shrink(400, 40_000), None, "one proposal at a time");
    l.alter_partition_done(AlterOutcome::Committed {
        leader_epoch: 5,
        partition_epoch: 8,
        isr: vec![1, 2],
    });
    assert!(l.update_high_watermark(400, 31_600));
    assert_eq!(l.high_watermark(), 400);
}

#[test]
fn a_follower_fetching_what_the_leader_had_at_its_last_fetch_is_caught_up_as_of_then() {
    let mut l = leader(&[1, 2, 3], 1);
    l.record_fetch(&fetch(3, 100), 100, all_active, 0);
    l.record_fetch(&fetch(2, 100), 200, all_active, 1_000);
    // Under constant load 2 is always one fetch behind, yet never lags.
    let mut end = 200;
    for t in (2_000..=60_000).step_by(1_000) {
        l.record_fetch(&fetch(3, end), end, all_active, t);
        l.record_fetch(&fetch(2, end), end + 100, all_active, t);
        end += 100;
    }
    assert_eq!(l.maybe_shrink(end, 60_000), None);
    // If it stops making progress it lags once the lag time has passed.
    l.record_fetch(&fetch(2, end - 100), end + 500, all_active, 61_000);
    l.record_fetch(&fetch(3, end + 500), end + 500, all_active, 61_000);
    assert_eq!(l.maybe_shrink(end + 500, 89_000), None);
    let p = l.maybe_shrink(end + 500, 91_500).expect("2 lags");
    assert_eq!(p.new_isr, vec![(1, -1), (3, 13)]);
}

#[test]
fn fetches_with_the_wrong_epochs_are_refused() {
    let l = leader(&[1, 2, 3], 1);
    let status = all_active(2);
    let no_epochs = |_| (-1, -1);
    let check = |f: FollowerFetch| l.check_fetch(&f, 0, all_active(f.replica_id), no_epochs);
    assert_eq!(check(fetch(2, 10)), Ok(None));
    let stale = FollowerFetch {
        current_leader_epoch: 4,
        ..fetch(2, 10)
    };
    assert_eq!(check(stale), Err(FetchRefusal::FencedLeaderEpoch));
    let ahead = FollowerFetch {
        current_leader_epoch: 6,
        ..fetch(2, 10)
    };
    assert_eq!(check(ahead), Err(FetchRefusal::UnknownLeaderEpoch));
    assert_eq!(check(fetch(4, 10)), Err(FetchRefusal::UnknownLeaderEpoch));
    let unknown_no_epoch = FollowerFetch {
        current_leader_epoch: -1,
        ..fetch(4, 10)
    };
    assert_eq!(
        check(unknown_no_epoch),
        Err(FetchRefusal::NotLeaderOrFollower)
    );
    let old_broker = FollowerFetch {
        broker_epoch: 11,
        ..fetch(2, 10)
    };
    assert_eq!(
        l.check_fetch(&old_broker, 0, status, no_epochs),
        Err(FetchRefusal::NotLeaderOrFollower)
    );
    assert_eq!(
        l.check_fetch(&fetch(2, 10), 20, status, no_epochs),
        Err(FetchRefusal::OffsetOutOfRange)
    );
}

#[test]
fn a_follower_whose_log_left_the_leaders_is_told_where() {
    let l = leader(&[1, 2, 3], 1);
    // The leader's epochs: 2 from 0, 4 from 50, 5 from 100.
    let end_for = |e: i32| match e {
        ..=1 => (-1, -1),
        2..=3 => (2, 50),
        4 => (4, 100),
        _ => (5, 100),
    };
    let with = |last_fetched_epoch, fetch_offset| FollowerFetch {
        last_fetched_epoch,
        ..fetch(2, fetch_offset)
    };
    let check = |f: FollowerFetch| l.check_fetch(&f, 0, all_active(2), end_for);
    // In step: epoch 4 ended at 100, the follower is at 90.
    assert_eq!(check(with(4, 90)), Ok(None));
    // It wrote past the end of epoch 2 under epoch 2 (a deposed leader's tail).
    assert_eq!(
        check(with(2, 70)),
        Ok(Some(Diverging {
            epoch: 2,
            end_offset: 50
        }))
    );
    // It has an epoch 3 the leader never had: truncate to where the leader's 2 ended.
    assert_eq!(
        check(with(3, 60)),
        Ok(Some(Diverging {
            epoch: 2,
            end_offset: 50
        }))
    );
    assert_eq!(check(with(1, 10)), Err(FetchRefusal::OffsetOutOfRange));
}

#[test]
fn below_min_insync_replicas_nothing_is_appended_and_the_high_watermark_stays() {
    let mut l = leader(&[1], 2);
    assert!(!l.enough_replicas());
    l.record_fetch(&fetch(2, 100), 150, all_active, 10);
    assert!(!l.update_high_watermark(150, 10));
    assert_eq!(l.high_watermark(), 100);
    // With two in the ISR an acks=all write waits for both.
    let mut l = leader(&[1, 2], 2);
    assert!(l.enough_replicas());
    l.record_fetch(&fetch(2, 150), 150, all_active, 10);
    assert_eq!(l.acknowledged(149), Some(true));
    // The ISR shrinks below the minimum after an append: the write is answered, with
    // NOT_ENOUGH_REPLICAS_AFTER_APPEND, once the high watermark passes it.
    l.image_changed(8, &[1, 2, 3], &[1], 20);
    assert!(!l.enough_replicas());
    assert_eq!(l.acknowledged(149), Some(false));
}

#[test]
fn the_controllers_answers() {
    let mut l = leader(&[1, 2], 1);
    l.record_fetch(&fetch(2, 100), 100, all_active, 10);
    let proposal = l
        .record_fetch(&fetch(3, 100), 100, all_active, 20)
        .1
        .unwrap();
    assert_eq!(
        l.alter_partition_done(AlterOutcome::Retry),
        Some(proposal.clone())
    );
    // Stale: pending until the image says; no other proposal meanwhile.
    assert_eq!(l.alter_partition_done(AlterOutcome::Stale), None);
    assert_eq!(l.in_flight(), Some(&proposal));
    assert_eq!(l.maybe_shrink(100, 1_000_000), None);
    l.image_changed(9, &[1, 2, 3], &[1, 2], 30);
    assert_eq!((l.committed_isr(), l.in_flight()), (&[1, 2][..], None));
    // Refused: back to the committed ISR, and the follower may be proposed again.
    let again = l
        .record_fetch(&fetch(3, 100), 100, all_active, 40)
        .1
        .unwrap();
    assert_eq!(again.partition_epoch, 9);
    l.alter_partition_done(AlterOutcome::Refused);
    assert_eq!(l.maximal_isr(), &[1, 2]);
    // An answer for an older partition epoch changes nothing.
    l.record_fetch(&fetch(3, 100), 100, all_active, 50)
        .1
        .unwrap();
    l.alter_partition_done(AlterOutcome::Committed {
        leader_epoch: 5,
        partition_epoch: 8,
        isr: vec![1],
    });
    assert_eq!(l.committed_isr(), &[1, 2]);
}
