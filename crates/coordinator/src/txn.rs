//! The transaction coordinator of one `__transaction_state` partition: a plain state machine over
//! the transactional ids that map to it, following Kafka's transaction protocol with KIP-890's
//! transactions version 2 (an epoch bump at every EndTxn) beside the classic version.
//!
//! Requests and the current time go in; what comes out is an answer, or a record to write to
//! the partition ([`Write`]) whose outcome is handed back ([`TxnCoordinator::written`]), or
//! markers to write to the transaction's partitions ([`Markers`]) whose completion is handed back
//! ([`TxnCoordinator::markers_written`]). While a record of a transaction is being written, that
//! transaction has a pending transition and other requests for it are answered
//! CONCURRENT_TRANSACTIONS, as Kafka answers. Nothing here does I/O or reads a clock, and
//! producer ids are asked for ([`Step::NeedProducerId`]) rather than allocated.

use std::collections::{BTreeSet, HashMap};

use crate::errors::*;
use crate::group::Ms;
use crate::txn_records::{TxnPartition, TxnRecord, TxnState};

/// From this epoch on, a producer id is used up: the next bump takes a new producer id
/// (`Short.MAX_VALUE - 1`, so that a fence can still bump once more).
pub const EPOCH_EXHAUSTED: i16 = i16::MAX - 1;

/// Kafka's `transaction.max.timeout.ms` and `transactional.id.expiration.ms` defaults.
pub const DEFAULT_MAX_TIMEOUT_MS: i32 = 900_000;
pub const DEFAULT_ID_EXPIRATION_MS: Ms = 604_800_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest timeout a producer may ask for.
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: how long an idle transactional id is kept.
    pub id_expiration_ms: Ms,
    /// The transactions version this cluster runs (the `transaction.version` feature): the
    /// rules of the aborts the coordinator starts itself.
    pub transaction_version: i16,
    /// The leader epoch of this coordinator's partition, carried by its markers.
    pub coordinator_epoch: i32,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: DEFAULT_MAX_TIMEOUT_MS,
            id_expiration_ms: DEFAULT_ID_EXPIRATION_MS,
            transaction_version: 2,
            coordinator_epoch: 0,
        }
    }
}

/// Why a transactional request is refused, with Kafka's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("the request is malformed (an empty transactional id)")]
    InvalidRequest,
    #[error("this producer id is not the one assigned to the transactional id")]
    InvalidProducerIdMapping,
    #[error("a newer producer with the same transactional id fenced this one")]
    ProducerFenced,
    #[error("another operation on this transaction is in progress; retry")]
    ConcurrentTransactions,
    #[error("the transaction is not in a state that allows this")]
    InvalidTxnState,
    #[error("the transaction timeout is not positive or above transaction.max.timeout.ms")]
    InvalidTransactionTimeout,
    #[error("the partition was not added to the transaction; abort it")]
    TransactionAbortable,
    #[error("this broker is not the transaction's coordinator")]
    NotCoordinator,
    #[error("the transaction's coordinator cannot write its log; retry")]
    CoordinatorNotAvailable,
}

impl TxnError {
    /// Kafka's error code. (A client of InitProducerId below v4 or EndTxn, AddPartitionsToTxn
    /// and AddOffsetsToTxn below their KIP-588 versions knows PRODUCER_FENCED as
    /// INVALID_PRODUCER_EPOCH; the handler translates.)
    pub fn code(self) -> i16 {
        match self {
            TxnError::InvalidRequest => INVALID_REQUEST,
            TxnError::InvalidProducerIdMapping => INVALID_PRODUCER_ID_MAPPING,
            TxnError::ProducerFenced => PRODUCER_FENCED,
            TxnError::ConcurrentTransactions => CONCURRENT_TRANSACTIONS,
            TxnError::InvalidTxnState => INVALID_TXN_STATE,
            TxnError::InvalidTransactionTimeout => INVALID_TRANSACTION_TIMEOUT,
            TxnError::TransactionAbortable => TRANSACTION_ABORTABLE,
            TxnError::NotCoordinator => NOT_COORDINATOR,
            TxnError::CoordinatorNotAvailable => COORDINATOR_NOT_AVAILABLE,
        }
    }
}

/// A transactional id's state in memory: the stored record and what only lives here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub record: TxnRecord,
    /// The producer id before the last change of producer id (-1: none): a retry with it is
    /// recognised.
    pub prev_producer_id: i64,
    /// The producer id a commit or abort under way moves to when the epoch is used up.
    pub next_producer_id: i64,
    /// The epoch before the last bump (-1: none), so a retried InitProducerId is recognised.
    pub last_producer_epoch: i16,
    /// The state a write under way moves to, if any.
    pub pending: Option<TxnState>,
}

/// An answer to a request that needs no more writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// InitProducerId: the producer's id and epoch.
    ProducerId {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// AddPartitionsToTxn, AddOffsetsToTxn.
    Added,
    /// EndTxn: the id and epoch the producer goes on with (transactions version 2), or -1.
    Ended {
        producer_id: i64,
        producer_epoch: i16,
    },
}

/// What a request led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(Result<Reply, TxnError>),
    /// Write this record; hand the outcome to [`TxnCoordinator::written`].
    Write(Write),
    /// Ask again with a fresh producer id.
    NeedProducerId,
}

/// A record to append to the coordinator's partition for one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub transactional_id: String,
    /// The new state; `None` is a tombstone (the id expired).
    pub record: Option<TxnRecord>,
    transit: Transit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Transit {
    purpose: Purpose,
    prev_producer_id: i64,
    next_producer_id: i64,
    last_producer_epoch: i16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Init,
    Add,
    /// A commit or abort begins; `from` says who is answered once it is written.
    Prepare {
        from: Requester,
    },
    Complete,
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requester {
    /// The producer's EndTxn, of this transactions version.
    EndTxn { client_version: i16 },
    /// A newer producer's InitProducerId, answered CONCURRENT_TRANSACTIONS so it retries once
    /// the fenced transaction is aborted.
    Init,
    /// The coordinator's timeout: nobody.
    Timeout,
}

/// Commit or abort markers to write to every partition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub committed: bool,
    pub coordinator_epoch: i32,
    pub transaction_version: i16,
    pub partitions: Vec<TxnPartition>,
}

/// What the outcome of a write leads to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The answer for whoever waited on the write.
    pub reply: Option<Result<Reply, TxnError>>,
    /// Markers to write now.
    pub markers: Option<Markers>,
    /// A record to write next.
    pub then: Option<Write>,
}

/// The transactional ids of one `__transaction_state` partition.
#[derive(Debug, Default)]
pub struct TxnCoordinator {
    config: TxnConfig,
    txns: HashMap<String, TxnMetadata>,
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> Self {
        TxnCoordinator {
            config,
            txns: HashMap::new(),
        }
    }

    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &TxnMetadata)> {
        self.txns.iter().map(|(id, m)| (id.as_str(), m))
    }

    /// Applies one record read back from the partition, in log order.
    pub fn replay(&mut self, transactional_id: &str, record: Option<TxnRecord>) {
        match record {
            None => {
                self.txns.remove(transactional_id);
            }
            Some(record) => {
                self.txns.insert(
                    transactional_id.to_string(),
                    TxnMetadata {
                        record,
                        prev_producer_id: -1,
                        next_producer_id: -1,
                        last_producer_epoch: -1,
                        pending: None,
                    },
                );
            }
        }
    }

    /// After replaying: every transaction found preparing to commit or abort completes, as the
    /// previous coordinator would have, with markers at this coordinator's epoch.
    pub fn finish_loading(&mut self, now: Ms) -> Vec<Written> {
        let preparing: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| {
                matches!(
                    m.record.state,
                    TxnState::PrepareCommit | TxnState::PrepareAbort
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        preparing
            .into_iter()
            .map(|id| self.complete(&id, None, now))
            .collect()
    }

    /// InitProducerId with a transactional id: a new producer id for a new transactional id,
    /// otherwise the next epoch of its producer id, which fences older producers; an open
    /// transaction is aborted first (answered CONCURRENT_TRANSACTIONS, so the producer retries).
    /// `expected` is the id and epoch a producer recovering from an error already has (KIP-360).
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fresh_id: Option<i64>,
        now: Ms,
    ) -> Step {
        if transactional_id.is_empty() {
            return Step::Done(Err(TxnError::InvalidRequest));
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Step::Done(Err(TxnError::InvalidTransactionTimeout));
        }
        if !self.txns.contains_key(transactional_id) {
            let Some(id) = fresh_id else {
                return Step::NeedProducerId;
            };
            self.replay(
                transactional_id,
                Some(TxnRecord {
                    producer_id: id,
                    producer_epoch: -1,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    last_update_ms: now,
                    start_ms: -1,
                    client_version: 0,
                }),
            );
            // The fresh id is used: it is not asked for again below.
            return self.init_producer_id(transactional_id, timeout_ms, expected, None, now);
        }
        let tv = self.config.transaction_version;
        let Some(m) = self.txns.get_mut(transactional_id) else {
            return Step::Done(Err(TxnError::InvalidProducerIdMapping));
        };
        if m.pending.is_some() {
            return Step::Done(Err(TxnError::ConcurrentTransactions));
        }
        let r = &m.record;
        if let Some((pid, epoch)) = expected {
            let known = r.producer_epoch == -1
                || pid == r.producer_id
                || (pid == m.prev_producer_id && epoch >= EPOCH_EXHAUSTED);
            if !known {
                return Step::Done(Err(TxnError::ProducerFenced));
            }
        }
        match r.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Step::Done(Err(TxnError::ConcurrentTransactions))
            }
            TxnState::Ongoing => {
                // Fence the producer of the open transaction and abort it.
                let write = abort_fenced(transactional_id, m, tv, Requester::Init, now);
                m.pending = Some(TxnState::PrepareAbort);
                Step::Write(write)
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let exhausted = r.producer_epoch >= EPOCH_EXHAUSTED;
                let current = expected.is_none_or(|(_, e)| e == r.producer_epoch);
                let (producer_id, producer_epoch, last_epoch, prev_id) = if exhausted && current {
                    let Some(id) = fresh_id else {
                        return Step::NeedProducerId;
                    };
                    let last = expected.map_or(-1, |(_, e)| e);
                    (id, 0, last, r.producer_id)
                } else {
                    let bumped = r.producer_epoch + 1;
                    match expected {
                        None => (r.producer_id, bumped, -1, m.prev_producer_id),
                        Some((_, e)) if r.producer_epoch == -1 || e == r.producer_epoch => {
                            (r.producer_id, bumped, r.producer_epoch, m.prev_producer_id)
                        }
                        // A retry of the InitProducerId that made the current epoch.
                        Some((_, e)) if e == m.last_producer_epoch => (
                            r.producer_id,
                            r.producer_epoch,
                            m.last_producer_epoch,
                            m.prev_producer_id,
                        ),
                        Some(_) => return Step::Done(Err(TxnError::ProducerFenced)),
                    }
                };
                let record = TxnRecord {
                    producer_id,
                    producer_epoch,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    last_update_ms: now,
                    start_ms: -1,
                    client_version: r.client_version,
                };
                m.pending = Some(TxnState::Empty);
                Step::Write(Write {
                    transactional_id: transactional_id.to_string(),
                    record: Some(record),
                    transit: Transit {
                        purpose: Purpose::Init,
                        prev_producer_id: prev_id,
                        next_producer_id: -1,
                        last_producer_epoch: last_epoch,
                    },
                })
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                Step::Done(Err(TxnError::ConcurrentTransactions))
            }
        }
    }

    /// AddPartitionsToTxn and AddOffsetsToTxn (the group's `__consumer_offsets` partition):
    /// the partitions join the transaction, which becomes Ongoing.
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TxnPartition],
        client_version: i16,
        now: Ms,
    ) -> Step {
        if transactional_id.is_empty() {
            return Step::Done(Err(TxnError::InvalidRequest));
        }
        let Some(m) = self.txns.get_mut(transactional_id) else {
            return Step::Done(Err(TxnError::InvalidProducerIdMapping));
        };
        // A pending write first: a producer already on the id a commit moves to waits.
        if m.pending.is_some() {
            return Step::Done(Err(TxnError::ConcurrentTransactions));
        }
        let r = &m.record;
        if producer_id != r.producer_id {
            return Step::Done(Err(TxnError::InvalidProducerIdMapping));
        }
        if producer_epoch != r.producer_epoch {
            return Step::Done(Err(TxnError::ProducerFenced));
        }
        match r.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Step::Done(Err(TxnError::ConcurrentTransactions))
            }
            TxnState::Ongoing if partitions.iter().all(|p| r.partitions.contains(p)) => {
                return Step::Done(Ok(Reply::Added));
            }
            _ => {}
        }
        let mut record = r.clone();
        if record.state != TxnState::Ongoing {
            record.start_ms = now;
            record.partitions.clear();
        }
        record.partitions.extend(partitions.iter().cloned());
        record.state = TxnState::Ongoing;
        record.last_update_ms = now;
        record.client_version = client_version;
        m.pending = Some(TxnState::Ongoing);
        Step::Write(Write {
            transactional_id: transactional_id.to_string(),
            record: Some(record),
            transit: Transit {
                purpose: Purpose::Add,
                prev_producer_id: m.prev_producer_id,
                next_producer_id: -1,
                last_producer_epoch: m.last_producer_epoch,
            },
        })
    }

    /// The verify-only AddPartitionsToTxn of KIP-890 part 1, asked by a partition leader before
    /// it appends a producer's first transactional batch: whether each partition is in the
    /// transaction (TRANSACTION_ABORTABLE when not). Writes nothing.
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TxnPartition],
    ) -> Result<Vec<Result<(), TxnError>>, TxnError> {
        if transactional_id.is_empty() {
            return Err(TxnError::InvalidRequest);
        }
        let m = self
            .txns
            .get(transactional_id)
            .filter(|m| m.record.producer_id == producer_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        if m.record.producer_epoch != producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        if matches!(
            m.record.state,
            TxnState::PrepareCommit | TxnState::PrepareAbort
        ) {
            return Err(TxnError::ConcurrentTransactions);
        }
        Ok(partitions
            .iter()
            .map(|p| {
                if m.record.partitions.contains(p) {
                    Ok(())
                } else {
                    Err(TxnError::TransactionAbortable)
                }
            })
            .collect())
    }

    /// EndTxn: commit or abort. The producer is answered once the PrepareCommit or
    /// PrepareAbort record is written; markers follow, then the Complete record. A client of
    /// transactions version 2 (EndTxn v5) gets a new epoch with every EndTxn.
    #[allow(clippy::too_many_arguments)]
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        client_version: i16,
        fresh_id: Option<i64>,
        now: Ms,
    ) -> Step {
        if transactional_id.is_empty() {
            return Step::Done(Err(TxnError::InvalidRequest));
        }
        let Some(m) = self.txns.get_mut(transactional_id) else {
            return Step::Done(Err(TxnError::InvalidProducerIdMapping));
        };
        let from = Requester::EndTxn { client_version };
        let state = m.record.state;
        let done_state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        let prepare_state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        if client_version < 2 {
            if producer_id != m.record.producer_id {
                return Step::Done(Err(TxnError::InvalidProducerIdMapping));
            }
            if producer_epoch != m.record.producer_epoch {
                return Step::Done(Err(TxnError::ProducerFenced));
            }
            if m.pending.is_some() {
                return Step::Done(Err(TxnError::ConcurrentTransactions));
            }
            return match state {
                TxnState::Ongoing => {
                    let write = prepare(transactional_id, m, commit, false, from, None, now);
                    m.pending = Some(prepare_state);
                    Step::Write(write)
                }
                s if s == done_state => Step::Done(Ok(Reply::Ended {
                    producer_id: -1,
                    producer_epoch: -1,
                })),
                s if s == prepare_state => Step::Done(Err(TxnError::ConcurrentTransactions)),
                _ => Step::Done(Err(TxnError::InvalidTxnState)),
            };
        }
        let r = &m.record;
        let retry_on_bump = i32::from(r.producer_epoch) == i32::from(producer_epoch) + 1;
        let retry_on_overflow = m.prev_producer_id == producer_id
            && producer_epoch == EPOCH_EXHAUSTED
            && r.producer_epoch == 0;
        if producer_id != r.producer_id && !retry_on_overflow {
            return Step::Done(Err(TxnError::InvalidProducerIdMapping));
        }
        if m.pending.is_some() {
            return Step::Done(Err(TxnError::ConcurrentTransactions));
        }
        let current = producer_epoch == r.producer_epoch;
        let valid = match state {
            TxnState::Ongoing | TxnState::Empty => current,
            TxnState::PrepareCommit | TxnState::PrepareAbort => retry_on_bump,
            _ => retry_on_bump || retry_on_overflow || current,
        };
        if !valid {
            return Step::Done(Err(TxnError::ProducerFenced));
        }
        let retry = retry_on_bump || retry_on_overflow;
        let bump = match state {
            TxnState::Ongoing => true,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                if !commit && !retry =>
            {
                true
            }
            s if s == done_state && retry => {
                return Step::Done(Ok(Reply::Ended {
                    producer_id: r.producer_id,
                    producer_epoch: r.producer_epoch,
                }))
            }
            s if s == prepare_state => return Step::Done(Err(TxnError::ConcurrentTransactions)),
            TxnState::Empty if retry => return Step::Done(Err(TxnError::ProducerFenced)),
            _ => return Step::Done(Err(TxnError::InvalidTxnState)),
        };
        debug_assert!(bump);
        let next_id = if r.producer_epoch >= EPOCH_EXHAUSTED {
            match fresh_id {
                Some(id) => Some(id),
                None => return Step::NeedProducerId,
            }
        } else {
            None
        };
        let write = prepare(transactional_id, m, commit, true, from, next_id, now);
        m.pending = Some(prepare_state);
        Step::Write(write)
    }

    /// The outcome of a [`Write`]: the state moves on (or, on an error, stays), and says who is
    /// answered and what is written next.
    pub fn written(&mut self, write: Write, result: Result<(), TxnError>, now: Ms) -> Written {
        let id = write.transactional_id;
        let Some(m) = self.txns.get_mut(&id) else {
            return Written {
                reply: Some(Err(TxnError::NotCoordinator)),
                ..Written::default()
            };
        };
        let purpose = write.transit.purpose;
        if let Err(e) = result {
            if purpose == Purpose::Complete && e == TxnError::CoordinatorNotAvailable {
                // Markers are written; only the record is missing: try it again.
                let retry = Write {
                    transactional_id: id,
                    record: write.record,
                    transit: write.transit,
                };
                return Written {
                    then: Some(retry),
                    ..Written::default()
                };
            }
            m.pending = None;
            let reply = match purpose {
                Purpose::Prepare {
                    from: Requester::Timeout,
                }
                | Purpose::Complete
                | Purpose::Expire => None,
                _ => Some(Err(e)),
            };
            return Written {
                reply,
                ..Written::default()
            };
        }
        let Some(record) = write.record else {
            // The tombstone of an expired id.
            self.txns.remove(&id);
            return Written::default();
        };
        m.record = record;
        m.pending = None;
        m.prev_producer_id = write.transit.prev_producer_id;
        m.next_producer_id = write.transit.next_producer_id;
        m.last_producer_epoch = write.transit.last_producer_epoch;
        match purpose {
            Purpose::Init => Written {
                reply: Some(Ok(Reply::ProducerId {
                    producer_id: m.record.producer_id,
                    producer_epoch: m.record.producer_epoch,
                })),
                ..Written::default()
            },
            Purpose::Add => Written {
                reply: Some(Ok(Reply::Added)),
                ..Written::default()
            },
            Purpose::Prepare { from } => self.complete(&id, Some(from), now),
            Purpose::Complete | Purpose::Expire => Written::default(),
        }
    }

    /// Every marker of the transaction is written: the Complete record follows.
    pub fn markers_written(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        now: Ms,
    ) -> Option<Write> {
        let m = self.txns.get_mut(transactional_id)?;
        let r = &m.record;
        let preparing = matches!(r.state, TxnState::PrepareCommit | TxnState::PrepareAbort);
        if !preparing || r.producer_id != producer_id || r.producer_epoch != producer_epoch {
            return None;
        }
        Some(complete_write(transactional_id, m, now))
    }

    /// Transactions open past their timeout are aborted, their producer fenced; transactional
    /// ids idle past `transactional.id.expiration.ms` are removed (a tombstone).
    pub fn tick(&mut self, now: Ms) -> Vec<Write> {
        let tv = self.config.transaction_version;
        let expiration = self.config.id_expiration_ms;
        let mut writes = Vec::new();
        for (id, m) in self.txns.iter_mut() {
            if m.pending.is_some() {
                continue;
            }
            let r = &m.record;
            match r.state {
                TxnState::Ongoing
                    if r.start_ms.saturating_add(Ms::from(r.timeout_ms)) < now
                        && r.producer_epoch < i16::MAX =>
                {
                    writes.push(abort_fenced(id, m, tv, Requester::Timeout, now));
                    m.pending = Some(TxnState::PrepareAbort);
                }
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    if r.last_update_ms <= now.saturating_sub(expiration) =>
                {
                    m.pending = Some(TxnState::Dead);
                    writes.push(Write {
                        transactional_id: id.clone(),
                        record: None,
                        transit: Transit {
                            purpose: Purpose::Expire,
                            prev_producer_id: -1,
                            next_producer_id: -1,
                            last_producer_epoch: -1,
                        },
                    });
                }
                _ => {}
            }
        }
        writes
    }

    /// A prepared transaction completes: its producer is answered, and markers (or, with no
    /// partitions, the Complete record at once) follow.
    fn complete(&mut self, id: &str, from: Option<Requester>, now: Ms) -> Written {
        let coordinator_epoch = self.config.coordinator_epoch;
        let Some(m) = self.txns.get_mut(id) else {
            return Written::default();
        };
        let committed = m.record.state == TxnState::PrepareCommit;
        m.pending = Some(if committed {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        });
        let reply = match from {
            Some(Requester::EndTxn { client_version }) if client_version >= 2 => {
                let (producer_id, producer_epoch) = if m.next_producer_id >= 0 {
                    (m.next_producer_id, 0)
                } else {
                    (m.record.producer_id, m.record.producer_epoch)
                };
                Some(Ok(Reply::Ended {
                    producer_id,
                    producer_epoch,
                }))
            }
            Some(Requester::EndTxn { .. }) => Some(Ok(Reply::Ended {
                producer_id: -1,
                producer_epoch: -1,
            })),
            Some(Requester::Init) => Some(Err(TxnError::ConcurrentTransactions)),
            Some(Requester::Timeout) | None => None,
        };
        if m.record.partitions.is_empty() {
            return Written {
                reply,
                markers: None,
                then: Some(complete_write(id, m, now)),
            };
        }
        Written {
            reply,
            markers: Some(Markers {
                transactional_id: id.to_string(),
                producer_id: m.record.producer_id,
                producer_epoch: m.record.producer_epoch,
                committed,
                coordinator_epoch,
                transaction_version: m.record.client_version,
                partitions: m.record.partitions.iter().cloned().collect(),
            }),
            then: None,
        }
    }
}

/// The PrepareCommit or PrepareAbort record of `m`'s transaction; with `bump` (transactions
/// version 2) at the next epoch, moving to `next_id` when the epoch is used up.
fn prepare(
    id: &str,
    m: &TxnMetadata,
    commit: bool,
    bump: bool,
    from: Requester,
    next_id: Option<i64>,
    now: Ms,
) -> Write {
    let mut record = m.record.clone();
    let empty_abort = record.state != TxnState::Ongoing;
    record.state = if commit {
        TxnState::PrepareCommit
    } else {
        TxnState::PrepareAbort
    };
    record.last_update_ms = now;
    let mut last_epoch = m.last_producer_epoch;
    if bump {
        last_epoch = record.producer_epoch;
        record.producer_epoch = record.producer_epoch.saturating_add(1);
        record.client_version = 2;
    }
    if empty_abort {
        record.partitions.clear();
        record.start_ms = now;
    }
    Write {
        transactional_id: id.to_string(),
        record: Some(record),
        transit: Transit {
            purpose: Purpose::Prepare { from },
            prev_producer_id: m.prev_producer_id,
            next_producer_id: next_id.unwrap_or(-1),
            last_producer_epoch: last_epoch,
        },
    }
}

/// An open transaction aborted by someone other than its producer (a newer producer, the
/// timeout): at the next epoch, so the fenced producer can write nothing more to it.
fn abort_fenced(id: &str, m: &TxnMetadata, tv: i16, from: Requester, now: Ms) -> Write {
    let mut write = prepare(id, m, false, true, from, None, now);
    if let Some(record) = write.record.as_mut() {
        record.client_version = m.record.client_version;
    }
    if tv < 2 {
        write.transit.last_producer_epoch = -1;
    }
    write
}

/// The CompleteCommit or CompleteAbort record ending `m`'s prepared transaction; under
/// transactions version 2 with a used-up epoch, on the next producer id at epoch 0.
fn complete_write(id: &str, m: &TxnMetadata, now: Ms) -> Write {
    let mut record = m.record.clone();
    let mut prev_id = m.prev_producer_id;
    record.state = if record.state == TxnState::PrepareCommit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    record.partitions.clear();
    record.last_update_ms = now;
    if m.next_producer_id >= 0 {
        prev_id = record.producer_id;
        record.producer_id = m.next_producer_id;
        record.producer_epoch = 0;
    }
    Write {
        transactional_id: id.to_string(),
        record: Some(record),
        transit: Transit {
            purpose: Purpose::Complete,
            prev_producer_id: prev_id,
            next_producer_id: -1,
            last_producer_epoch: m.last_producer_epoch,
        },
    }
}
