//! Where a new partition's replicas go: striped over racks and brokers so that replicas and
//! leaders spread evenly, every partition spans as many racks as it can, and a leader is never a
//! fenced broker. Sans-IO and deterministic: the only randomness is the [`Start`] the caller
//! passes, so a test (or a bug report) replays exactly.
//!
//! The idea follows Kafka's striped placer, in our own construction. Usable brokers are grouped
//! by rack (brokers without one form a rack of their own), unfenced before fenced in each rack,
//! by id. They are dealt into an endless sequence: position `i` is rack `i mod R`, which hands
//! out its brokers round robin. Each partition takes the next `replication_factor` brokers of the
//! sequence, skipping one it already has, so consecutive partitions walk on around the racks
//! (the stripes). With racks of equal size the sequence is a repeating order of all brokers, and
//! three properties follow from taking consecutive runs of it: every broker holds within one of
//! an even share of replicas, every rack too, and a partition spans `min(rf, racks)` racks.
//!
//! Leaders need one more step: the first broker of each run would favour some brokers whenever
//! the replication factor and the broker count share a divisor `g` (4 brokers, 2 replicas: runs
//! always start on the same two). So partition `p` takes the broker at offset `(q + r) mod g`
//! of its run, with `r = p mod (n/g)` and `q = p div (n/g)`: over each `n` partitions this is
//! every position of the order exactly once, so leaders too are within one of even.

use std::collections::{BTreeMap, HashSet};

/// A broker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementBroker {
    pub id: i32,
    pub rack: Option<String>,
    /// A fenced broker may hold replicas (it is expected back) but never leads a new partition.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Kafka answers `INVALID_REPLICATION_FACTOR` for this too.
    #[error("no unfenced broker can lead a new partition")]
    NoUnfencedBroker,
    /// Kafka's `INVALID_REPLICATION_FACTOR`.
    #[error(
        "replication factor {replication_factor} needs as many brokers; {brokers} are registered"
    )]
    InvalidReplicationFactor {
        replication_factor: usize,
        brokers: usize,
    },
}

/// Where in the broker sequence a placement begins, and how many partitions of the stripe came
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    position: u64,
    partition: u64,
}

/// Positions a fresh start is drawn from: far more than any period of the sequence, and small
/// enough that counting on from one never overflows.
const FRESH_POSITIONS: u64 = 1 << 32;

/// Positions [`continuation`] tries before giving up on finding the stripe.
const CONTINUATION_SEARCH_MAX: u64 = 1 << 16;

impl Start {
    /// A new stripe at a place chosen by `random`, from the caller's (seedable) source.
    pub fn fresh(random: u64) -> Start {
        Start {
            position: random % FRESH_POSITIONS,
            partition: 0,
        }
    }
}

/// Places `partitions` new partitions of `replication_factor` replicas each; the first replica
/// of each is its leader.
pub fn place(
    brokers: &[PlacementBroker],
    partitions: usize,
    replication_factor: usize,
    start: Start,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    let stripe = Stripe::new(brokers, replication_factor)?;
    let mut cursor = start;
    (0..partitions)
        .map(|_| stripe.next_partition(&mut cursor, replication_factor))
        .collect()
}

/// Where the stripe that placed `existing` continues, so that partitions added later (Kafka's
/// CreatePartitions) spread as if the topic had been created with all of them. `None` when
/// `existing` is not a stripe of these brokers as they are now (assigned by hand, or brokers
/// joined, left or changed fencing since): the caller then uses [`Start::fresh`].
pub fn continuation(brokers: &[PlacementBroker], existing: &[Vec<i32>]) -> Option<Start> {
    let replication_factor = existing.first()?.len();
    let stripe = Stripe::new(brokers, replication_factor).ok()?;
    let period = stripe.period().unwrap_or(CONTINUATION_SEARCH_MAX);
    (0..period.min(CONTINUATION_SEARCH_MAX)).find_map(|position| {
        let mut cursor = Start {
            position,
            partition: 0,
        };
        for expected in existing {
            if stripe
                .next_partition(&mut cursor, replication_factor)
                .ok()?
                != *expected
            {
                return None;
            }
        }
        Some(cursor)
    })
}

/// The broker sequence: racks in name order, each a list of `(broker id, fenced)`.
struct Stripe {
    racks: Vec<Vec<(i32, bool)>>,
    brokers: u64,
}

impl Stripe {
    fn new(
        brokers: &[PlacementBroker],
        replication_factor: usize,
    ) -> Result<Stripe, PlacementError> {
        let mut seen = HashSet::new();
        let mut by_rack: BTreeMap<Option<&str>, Vec<(bool, i32)>> = BTreeMap::new();
        for broker in brokers.iter().filter(|b| seen.insert(b.id)) {
            by_rack
                .entry(broker.rack.as_deref())
                .or_default()
                .push((broker.fenced, broker.id));
        }
        if !brokers.iter().any(|b| !b.fenced) {
            return Err(PlacementError::NoUnfencedBroker);
        }
        if replication_factor == 0 || replication_factor > seen.len() {
            return Err(PlacementError::InvalidReplicationFactor {
                replication_factor,
                brokers: seen.len(),
            });
        }
        let racks = by_rack
            .into_values()
            .map(|mut rack| {
                rack.sort_unstable(); // unfenced (false) first, then by id
                rack.into_iter().map(|(fenced, id)| (id, fenced)).collect()
            })
            .collect();
        Ok(Stripe {
            racks,
            brokers: seen.len() as u64,
        })
    }

    fn pick(&self, position: u64) -> (i32, bool) {
        let racks = self.racks.len() as u64;
        let rack = &self.racks[(position % racks) as usize];
        rack[((position / racks) % rack.len() as u64) as usize]
    }

    /// Positions within which, from anywhere, every broker comes up at least once.
    fn cycle(&self) -> u64 {
        let widest = self.racks.iter().map(Vec::len).max().unwrap_or(1) as u64;
        self.racks.len() as u64 * widest
    }

    /// After how many positions the sequence repeats; `None` if that does not fit a u64.
    fn period(&self) -> Option<u64> {
        let lcm = self.racks.iter().try_fold(1u64, |lcm, rack| {
            let len = rack.len() as u64;
            (lcm / gcd(lcm, len)).checked_mul(len)
        })?;
        lcm.checked_mul(self.racks.len() as u64)
    }

    fn next_partition(
        &self,
        cursor: &mut Start,
        replication_factor: usize,
    ) -> Result<Vec<i32>, PlacementError> {
        let mut run: Vec<(i32, bool)> = Vec::with_capacity(replication_factor);
        let end = cursor.position + self.cycle();
        while run.len() < replication_factor && cursor.position < end {
            let pick = self.pick(cursor.position);
            cursor.position += 1;
            if !run.iter().any(|(id, _)| *id == pick.0) {
                run.push(pick);
            }
        }
        if run.len() < replication_factor {
            // Unreachable while the factor is at most the broker count (checked in `new`):
            // every broker comes up within one cycle.
            return Err(PlacementError::InvalidReplicationFactor {
                replication_factor,
                brokers: self.brokers as usize,
            });
        }
        let rf = replication_factor as u64;
        let g = gcd(self.brokers, rf);
        let per_round = self.brokers / g;
        let preferred =
            ((cursor.partition / per_round + cursor.partition % per_round) % g) as usize;
        cursor.partition += 1;
        let leader = match (0..replication_factor)
            .map(|d| (preferred + d) % replication_factor)
            .find(|&i| !run[i].1)
        {
            Some(i) => i,
            None => {
                // Every broker of the run is fenced: the next unfenced one in the sequence
                // takes the preferred slot rather than leaving the partition leaderless.
                let unfenced = (cursor.position..cursor.position + self.cycle())
                    .map(|position| self.pick(position))
                    .find(|(_, fenced)| !fenced)
                    .ok_or(PlacementError::NoUnfencedBroker)?;
                run[preferred] = unfenced;
                preferred
            }
        };
        let leader = run.remove(leader);
        Ok(std::iter::once(leader)
            .chain(run)
            .map(|(id, _)| id)
            .collect())
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn broker(id: i32, rack: Option<&str>, fenced: bool) -> PlacementBroker {
        PlacementBroker {
            id,
            rack: rack.map(String::from),
            fenced,
        }
    }

    /// `racks` racks of `per_rack` unfenced brokers each; no rack names when there is one rack.
    fn even_racks(racks: usize, per_rack: usize) -> Vec<PlacementBroker> {
        (0..racks * per_rack)
            .map(|i| {
                let rack = format!("rack-{}", i % racks);
                broker(100 + i as i32, (racks > 1).then_some(rack.as_str()), false)
            })
            .collect()
    }

    fn unequal_racks(sizes: &[usize]) -> Vec<PlacementBroker> {
        let mut brokers = Vec::new();
        for (rack, size) in sizes.iter().enumerate() {
            for _ in 0..*size {
                brokers.push(broker(
                    100 + brokers.len() as i32,
                    Some(&format!("rack-{rack}")),
                    false,
                ));
            }
        }
        brokers
    }

    /// Checks that every key of `universe` has a count within one of every other's.
    fn within_one<K: Ord + Clone + std::fmt::Debug>(
        what: &str,
        universe: impl IntoIterator<Item = K>,
        items: impl IntoIterator<Item = K>,
    ) -> Result<(), TestCaseError> {
        let mut counts: BTreeMap<K, usize> = universe.into_iter().map(|k| (k, 0)).collect();
        for item in items {
            *counts.entry(item).or_default() += 1;
        }
        let (min, max) = (counts.values().min(), counts.values().max());
        prop_assert!(
            max.zip(min).is_none_or(|(max, min)| max - min <= 1),
            "{} not within one of even: {:?}",
            what,
            counts
        );
        Ok(())
    }

    fn rack_of(brokers: &[PlacementBroker], id: i32) -> Option<String> {
        brokers
            .iter()
            .find(|b| b.id == id)
            .and_then(|b| b.rack.clone())
    }

    #[test]
    fn a_stripe_by_hand() {
        let three: Vec<_> = (1..=3).map(|id| broker(id, None, false)).collect();
        assert_eq!(
            place(&three, 3, 3, Start::fresh(0)),
            Ok(vec![vec![1, 2, 3], vec![2, 1, 3], vec![3, 1, 2]])
        );
        // Two racks of two: replicas alternate racks, and leaders cover all four brokers although
        // every run of two starts in rack a.
        let racks = [
            broker(1, Some("a"), false),
            broker(2, Some("a"), false),
            broker(3, Some("b"), false),
            broker(4, Some("b"), false),
        ];
        assert_eq!(
            place(&racks, 4, 2, Start::fresh(0)),
            Ok(vec![vec![1, 3], vec![4, 2], vec![3, 1], vec![2, 4]])
        );
    }

    #[test]
    fn refusals() {
        let brokers = [broker(1, None, false), broker(2, None, true)];
        let too_many = PlacementError::InvalidReplicationFactor {
            replication_factor: 3,
            brokers: 2,
        };
        assert_eq!(place(&brokers, 1, 3, Start::fresh(7)), Err(too_many));
        assert!(matches!(
            place(&brokers, 1, 0, Start::fresh(7)),
            Err(PlacementError::InvalidReplicationFactor { .. })
        ));
        assert_eq!(
            place(&[broker(1, None, true)], 1, 1, Start::fresh(7)),
            Err(PlacementError::NoUnfencedBroker)
        );
        assert_eq!(
            place(&[], 1, 1, Start::fresh(7)),
            Err(PlacementError::NoUnfencedBroker)
        );
        // A fenced broker holds replicas but never leads.
        let placed = place(&brokers, 10, 2, Start::fresh(7)).unwrap_or_default();
        assert!(
            placed.len() == 10 && placed.iter().all(|p| p[0] == 1),
            "{placed:?}"
        );
    }

    proptest! {
        /// Whatever the brokers, an assignment never breaks the rules, or is refused.
        #[test]
        fn constraints_always_hold(
            shape in proptest::collection::vec((proptest::option::of(0..3u8), proptest::bool::weighted(0.3)), 0..10),
            partitions in 0..40usize,
            rf in 1..6usize,
            seed in any::<u64>(),
        ) {
            let brokers: Vec<_> = shape.iter().enumerate()
                .map(|(i, (rack, fenced))| broker(i as i32, rack.map(|r| format!("r{r}")).as_deref(), *fenced))
                .collect();
            let result = place(&brokers, partitions, rf, Start::fresh(seed));
            if brokers.iter().all(|b| b.fenced) {
                prop_assert_eq!(result, Err(PlacementError::NoUnfencedBroker));
            } else if rf > brokers.len() {
                prop_assert_eq!(result, Err(PlacementError::InvalidReplicationFactor { replication_factor: rf, brokers: brokers.len() }));
            } else {
                let placed = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(placed.len(), partitions);
                for replicas in &placed {
                    prop_assert_eq!(replicas.iter().collect::<BTreeSet<_>>().len(), rf, "{:?}", replicas);
                    prop_assert!(!brokers[replicas[0] as usize].fenced, "fenced leader in {:?}", replicas);
                }
            }
        }

        /// Racks of equal size (or none): replicas and leaders within one of even per broker,
        /// replicas within one of even per rack, and each partition on as many racks as it can.
        #[test]
        fn equal_racks_spread_evenly(
            racks in 1..4usize,
            per_rack in 1..5usize,
            rf in 1..8usize,
            partitions in 0..60usize,
            seed in any::<u64>(),
        ) {
            let brokers = even_racks(racks, per_rack);
            let rf = (rf - 1) % brokers.len() + 1;
            let placed = place(&brokers, partitions, rf, Start::fresh(seed)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let ids = || brokers.iter().map(|b| b.id);
            within_one("replicas per broker", ids(), placed.iter().flatten().copied())?;
            within_one("leaders per broker", ids(), placed.iter().map(|p| p[0]))?;
            within_one("replicas per rack", ids().map(|id| rack_of(&brokers, id)), placed.iter().flatten().map(|id| rack_of(&brokers, *id)))?;
            for replicas in &placed {
                let spanned: BTreeSet<_> = replicas.iter().map(|id| rack_of(&brokers, *id)).collect();
                prop_assert_eq!(spanned.len(), rf.min(racks), "racks of {:?}", replicas);
            }
        }

        /// Racks of different sizes: each partition spans distinct racks, racks share replicas
        /// within one of even (the small rack's brokers carry more, as with Kafka), and inside a
        /// rack its brokers share its replicas within one of even.
        #[test]
        fn unequal_racks_spread_per_rack(
            sizes in proptest::collection::vec(1..5usize, 2..5),
            rf in 1..5usize,
            partitions in 0..60usize,
            seed in any::<u64>(),
        ) {
            let rf = (rf - 1) % sizes.len() + 1;
            let brokers = unequal_racks(&sizes);
            let placed = place(&brokers, partitions, rf, Start::fresh(seed)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let rack_names: BTreeSet<_> = brokers.iter().map(|b| b.rack.clone()).collect();
            within_one("replicas per rack", rack_names.iter().cloned(), placed.iter().flatten().map(|id| rack_of(&brokers, *id)))?;
            for rack in &rack_names {
                let members = brokers.iter().filter(|b| b.rack == *rack).map(|b| b.id);
                let held = placed.iter().flatten().copied().filter(|id| rack_of(&brokers, *id) == *rack);
                within_one("replicas per broker in a rack", members, held)?;
            }
            for replicas in &placed {
                let spanned: BTreeSet<_> = replicas.iter().map(|id| rack_of(&brokers, *id)).collect();
                prop_assert_eq!(spanned.len(), rf, "racks of {:?}", replicas);
            }
            prop_assert!(placed.is_empty() || continuation(&brokers, &placed).is_some(), "no continuation of {:?}", placed);
        }

        /// Adding partitions later continues the stripe: the topic ends up as if created whole.
        #[test]
        fn create_partitions_continues_the_stripe(
            racks in 1..4usize,
            per_rack in 1..5usize,
            rf in 1..5usize,
            existing in 1..30usize,
            added in 0..30usize,
            seed in any::<u64>(),
        ) {
            let brokers = even_racks(racks, per_rack);
            let rf = (rf - 1) % brokers.len() + 1;
            let whole = place(&brokers, existing + added, rf, Start::fresh(seed)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let first = place(&brokers, existing, rf, Start::fresh(seed)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let start = continuation(&brokers, &first);
            prop_assert!(start.is_some(), "no continuation found for {:?}", first);
            let more = place(&brokers, added, rf, start.unwrap_or(Start::fresh(0))).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!([first, more].concat(), whole);
        }
    }

    #[test]
    fn continuation_of_a_hand_made_assignment_is_none() {
        let brokers: Vec<_> = (1..=3).map(|id| broker(id, None, false)).collect();
        assert_eq!(continuation(&brokers, &[vec![1, 1]]), None);
        assert_eq!(continuation(&brokers, &[vec![1, 2], vec![1, 2]]), None);
        assert_eq!(continuation(&brokers, &[]), None);
    }
}
