//! The group coordinator at run time: owns the coordinator state machine, performs its effects
//! (answers waiting joins and syncs, appends records to `__consumer_offsets`), advances its
//! clock, and rebuilds it from `__consumer_offsets` at start.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use caudal_coordinator::{
    partition_for, Coordinator, Effect, JoinResponse, Ms, OffsetsRecord, SyncResponse,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::{oneshot, Notify};

use crate::config::BrokerConfig;
use crate::partition::Partition;
use crate::replica_manager::{tp, ReplicaManager};
use crate::topics::Topics;

/// Kafka's name for the topic holding groups and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Where a waiting JoinGroup or SyncGroup gets its answer.
pub type Responder = oneshot::Sender<Answer>;

#[derive(Debug)]
pub enum Answer {
    Join(JoinResponse),
    Sync(SyncResponse),
}

#[derive(Debug)]
pub struct Groups {
    coordinator: Mutex<Coordinator<Responder>>,
    /// The partitions of `__consumer_offsets`, by index.
    offsets: Vec<Arc<Partition>>,
    /// When the group clock ticks next, in ms since the epoch. Set by the clock after each
    /// tick; lowered (under the coordinator's lock) by a request that set an earlier deadline.
    next_tick: AtomicI64,
    /// Wakes the group clock after `next_tick` was lowered.
    clock: Notify,
}

/// Offsets below `end` in `partition` must be durable before the request is answered.
pub type DurableWait = (Arc<Partition>, i64);

impl Groups {
    /// Creates `__consumer_offsets` if needed and replays it into a fresh coordinator.
    pub async fn start(
        config: &BrokerConfig,
        topics: &Topics,
        replicas: &ReplicaManager,
        now: Ms,
    ) -> io::Result<Groups> {
        let offsets_topic = match topics.get(OFFSETS_TOPIC) {
            Some(t) => t,
            None => {
                // Kafka's settings for this topic: compacted, segments of offsets.topic.segment.bytes.
                let configs = BTreeMap::from([
                    ("cleanup.policy".to_string(), "compact".to_string()),
                    (
                        "segment.bytes".to_string(),
                        config.offsets_topic_segment_bytes().to_string(),
                    ),
                ]);
                topics
                    .create(
                        OFFSETS_TOPIC,
                        config.offsets_topic_partitions(),
                        configs,
                        false,
                    )
                    .await
                    .map_err(io::Error::other)?
                    .ok_or_else(|| {
                        io::Error::other("creating __consumer_offsets returned nothing")
                    })?
            }
        };
        let offsets = (0..offsets_topic.partition_count)
            .map(|i| {
                replicas.get(tp(offsets_topic.id, i)).ok_or_else(|| {
                    io::Error::other(format!("__consumer_offsets-{i} has no local replica"))
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut coordinator = Coordinator::new(config.group_config());
        let mut records = 0usize;
        for partition in &offsets {
            records += replay_partition(partition, &mut coordinator, now)?;
        }
        if records > 0 {
            tracing::info!(
                groups = coordinator.group_count(),
                records,
                "loaded groups and committed offsets from __consumer_offsets"
            );
        }
        Ok(Groups {
            coordinator: Mutex::new(coordinator),
            offsets,
            // Long past: the clock ticks as soon as it starts.
            next_tick: AtomicI64::new(0),
            clock: Notify::new(),
        })
    }

    fn partition_of(&self, group_id: &str) -> Option<&Arc<Partition>> {
        let n = self.offsets.len() as i32;
        self.offsets.get(partition_for(group_id, n) as usize)
    }

    /// Runs `f` on the coordinator and performs the effects it returns. Records are appended
    /// while the coordinator is still locked, so the log holds them in the order the state
    /// changed. Returns `f`'s result and the appends to wait on before answering.
    pub fn run<T>(
        &self,
        now: Ms,
        f: impl FnOnce(&mut Coordinator<Responder>) -> (T, Vec<Effect<Responder>>),
    ) -> (T, Vec<DurableWait>) {
        let mut answers = Vec::new();
        let mut waits = Vec::new();
        let mut tick_by: Option<Ms> = None;
        let mut wake_clock = false;
        let result = {
            let mut coordinator = self.coordinator.lock().unwrap_or_else(|p| p.into_inner());
            let (result, effects) = f(&mut coordinator);
            let mut writes: BTreeMap<i32, Vec<(Bytes, Option<Bytes>)>> = BTreeMap::new();
            for effect in effects {
                match effect {
                    Effect::Join(r, resp) => answers.push((r, Answer::Join(resp))),
                    Effect::Sync(r, resp) => answers.push((r, Answer::Sync(resp))),
                    Effect::Stabilized(s) => tracing::info!(
                        group = %s.group_id,
                        generation = s.generation_id,
                        members = s.members,
                        join_ms = s.join_ms,
                        sync_ms = s.sync_ms,
                        "group stabilized"
                    ),
                    Effect::TickBy(at) => tick_by = Some(tick_by.map_or(at, |t| t.min(at))),
                    Effect::Write(record) => {
                        let group_id = match &record {
                            OffsetsRecord::Offset { group_id, .. }
                            | OffsetsRecord::Group { group_id, .. } => group_id.clone(),
                        };
                        let n = self.offsets.len() as i32;
                        writes
                            .entry(partition_for(&group_id, n))
                            .or_default()
                            .push(record.encode());
                    }
                }
            }
            for (index, records) in writes {
                let Some(partition) = self.offsets.get(index as usize) else {
                    continue;
                };
                match append_records(partition, &records, now) {
                    Ok(end) => waits.push((partition.clone(), end)),
                    Err(e) => {
                        tracing::error!(partition = index, error = %e, "writing to __consumer_offsets failed")
                    }
                }
            }
            // Under the lock, so the clock's own store after a tick cannot hide this deadline.
            if let Some(at) = tick_by {
                wake_clock = self.next_tick.fetch_min(at, Ordering::SeqCst) > at;
            }
            result
        };
        if wake_clock {
            self.clock.notify_one();
        }
        for (r, answer) in answers {
            // A client that went away leaves nobody to answer.
            let _ = r.send(answer);
        }
        (result, waits)
    }

    /// Advances the coordinator's clock to `now`, and notes when it must tick next: at its
    /// earliest deadline (the clock also ticks at least every offsets check interval).
    pub fn tick(&self, now: Ms) {
        self.run(now, |c| {
            let effects = c.tick(now);
            let next = c.next_deadline().unwrap_or(Ms::MAX);
            self.next_tick.store(next, Ordering::SeqCst);
            ((), effects)
        });
    }

    /// When the clock must tick next, as last computed or lowered by a request.
    pub fn next_tick(&self) -> Ms {
        self.next_tick.load(Ordering::SeqCst)
    }

    /// Resolves once a request has set a deadline earlier than [`next_tick`](Self::next_tick)
    /// was (at once if that happened since the last call).
    pub async fn clock_lowered(&self) {
        self.clock.notified().await
    }

    /// Reads the coordinator without changing it.
    pub fn read<T>(&self, f: impl FnOnce(&Coordinator<Responder>) -> T) -> T {
        f(&self.coordinator.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether `group_id` maps to a partition this broker leads (always, on one node).
    pub fn is_coordinator_for(&self, group_id: &str) -> bool {
        self.partition_of(group_id).is_some()
    }
}

/// Waits for every append in `waits` to be durable.
pub async fn wait_all(waits: Vec<DurableWait>) -> io::Result<()> {
    for (partition, end) in waits {
        partition.wait_durable(end).await?;
    }
    Ok(())
}

/// Appends records as one uncompressed batch; returns the log end offset after it.
fn append_records(
    partition: &Partition,
    records: &[(Bytes, Option<Bytes>)],
    now: Ms,
) -> io::Result<i64> {
    let batch = encode_batch(records, now)?;
    let mut log = partition.log();
    log.append(&batch, now).map_err(io::Error::other)?;
    Ok(log.log_end_offset())
}

/// `(key, value)` records as one uncompressed batch, as the broker writes its own records.
pub(crate) fn encode_batch(records: &[(Bytes, Option<Bytes>)], now: Ms) -> io::Result<BytesMut> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch wherever offset minus sequence changes.
            sequence: i as i32 - 1,
            timestamp: now,
            key: Some(key.clone()),
            value: value.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(io::Error::other)?;
    Ok(buf)
}

/// Replays one `__consumer_offsets` partition into the coordinator; returns the record count.
fn replay_partition(
    partition: &Partition,
    coordinator: &mut Coordinator<Responder>,
    now: Ms,
) -> io::Result<usize> {
    let (mut offset, end) = {
        let log = partition.log();
        (log.log_start_offset(), log.log_end_offset())
    };
    let mut count = 0;
    while offset < end {
        let plan = partition
            .log()
            .read(offset, 1 << 20, end, true)
            .map_err(io::Error::other)?;
        let Some(plan) = plan else { break };
        let mut bytes = plan.read()?;
        if bytes.is_empty() {
            break;
        }
        let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("__consumer_offsets-{}: {e}", partition.index),
            )
        })?;
        for set in sets {
            for record in set.records {
                offset = offset.max(record.offset + 1);
                match OffsetsRecord::decode(record.key, record.value) {
                    Ok(r) => {
                        coordinator.replay(r, now);
                        count += 1;
                    }
                    Err(e) => {
                        tracing::warn!(partition = partition.index, offset = record.offset, error = %e, "skipping an unreadable __consumer_offsets record")
                    }
                }
            }
        }
    }
    Ok(count)
}
