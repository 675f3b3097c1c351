//! Fetch: serve stored batches as they are on disk. A fetch with `min_bytes` not yet available
//! waits until enough arrives or `max_wait_ms` runs out, woken only by appends to the partitions
//! it asked for (Kafka's delayed fetch, keyed by partition).
//!
//! A read never waits for the disk on an async worker, where it would stall every connection
//! sharing the worker: a pass first reads only what the page cache holds (`RWF_NOWAIT`), the
//! common case of consumers near the end of the log, and if anything is missing the whole pass
//! runs again on a blocking thread. A fetch that is waiting at the end of its partitions does
//! not read at all until an append wakes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use caudal_storage::ReadError;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
    PartitionData,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ProducerId, ResponseKind, TopicName,
};

use super::leader_hints::LeaderHints;
use super::{str_bytes, Reply};
use crate::partition::Partition;
use crate::replica_state::{BrokerStatus, FollowerFetch};
use crate::throttle::ReplicationThrottle;
use crate::Broker;

/// Fetch v13 and later name topics by id.
const TOPIC_IDS_SINCE: i16 = 13;
const READ_COMMITTED: i8 = 1;
/// Fetch v12 and later carry the leader of a partition this broker does not lead, v16 and
/// later its address too (KIP-951).
const LEADER_HINTS_SINCE: i16 = 12;
const NODE_ENDPOINTS_SINCE: i16 = 16;
/// Fetch v11 and later carry the consumer's rack and may be served by a follower (KIP-392).
const FOLLOWER_READS_SINCE: i16 = 11;

/// The partitions of a fetch, resolved once: per topic of the request, per partition, the
/// partition or the error code to answer for it.
type Targets = Vec<Vec<Result<Arc<Partition>, i16>>>;
/// Per partition of a fetch, the replica to send the consumer to (KIP-392).
type Preferred = Vec<Vec<Option<i32>>>;

pub fn handle(broker: Arc<Broker>, request: FetchRequest, version: i16, listener: usize) -> Reply {
    Box::pin(async move {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
        let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
        let follower = follower_of(&broker, &request, version);
        // A consumer that knows of KIP-392 may read from any replica kept here.
        let any_replica = follower.is_none() && version >= FOLLOWER_READS_SINCE;
        let targets = Arc::new(resolve(&broker, &request, version, any_replica));
        let preferred =
            preferred_read_replicas(&broker, &request, any_replica, &targets).map(Arc::new);
        // A follower's position is recorded from the first read only, as Kafka's leader does:
        // the passes after a wait read again what the same fetch asked for.
        let mut first_pass = true;
        let request = Arc::new(request);
        // Wakers, armed only once a read came up short: a fetch that finds its data at once
        // (the busy consumer's) allocates none. Armed before the next read, so that an append
        // between that read and the wait still wakes it.
        let mut waits = Vec::new();
        let mut armed = false;
        loop {
            let stop = broker.shutting_down.notified();
            tokio::pin!(stop);
            stop.as_mut().enable();
            let stopping = broker.stopping.load(std::sync::atomic::Ordering::SeqCst);
            let last = stopping || tokio::time::Instant::now() >= deadline;
            // Nothing to wait for with min_bytes 0: answer at once, as Kafka does. A follower's
            // first pass always reads, even at the log end: its fetch offset is its position,
            // which may move the high watermark now rather than after the wait.
            let record_now = first_pass && follower.is_some();
            if last
                || min_bytes == 0
                || record_now
                || !at_end(&request, &targets, follower.is_some(), any_replica)
            {
                let throttle = &broker.replication_throttle;
                let read = match read_once(
                    &request,
                    version,
                    &targets,
                    (follower, preferred.as_deref()),
                    throttle,
                    Reads::CachedOnly,
                ) {
                    Some(read) => read,
                    None => {
                        read_off_workers(
                            request.clone(),
                            version,
                            targets.clone(),
                            (follower, preferred.clone()),
                            throttle.clone(),
                        )
                        .await
                    }
                };
                let Pass {
                    mut response,
                    bytes,
                    any_error,
                    followed,
                    throttled_bytes,
                } = read;
                throttle.record(throttled_bytes);
                if std::mem::take(&mut first_pass) {
                    record_followers(&broker, &followed);
                }
                if bytes >= min_bytes || any_error || last {
                    if any_error && version >= LEADER_HINTS_SINCE {
                        add_leader_hints(&broker, &mut response, version, listener);
                    }
                    return Some(ResponseKind::Fetch(response));
                }
            }
            if !armed {
                waits = arm(&targets);
                armed = true;
                continue;
            }
            // With no partition to wait on (an empty fetch), only the deadline or shutdown end it.
            tokio::select! {
                _ = AnyOf(&mut waits) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop => {}
            }
            waits.clear();
            armed = false;
        }
    })
}

/// Fetch v15 and later name the follower in `ReplicaState`, with its broker epoch (KIP-903).
const REPLICA_STATE_SINCE: i16 = 15;

/// Who sends a follower's fetch: its broker id and epoch, and its broker as the image has it.
#[derive(Debug, Clone, Copy)]
struct Follower {
    id: i32,
    broker_epoch: i64,
    status: Option<BrokerStatus>,
}

/// The follower a fetch comes from, if it is a replica's (Kafka's follower fetch): the id in
/// `ReplicaState` from v15, `ReplicaId` before; consumers send -1.
fn follower_of(broker: &Broker, request: &FetchRequest, version: i16) -> Option<Follower> {
    let (id, broker_epoch) = if version >= REPLICA_STATE_SINCE {
        let state = &request.replica_state;
        (state.replica_id.0, state.replica_epoch)
    } else {
        (request.replica_id.0, -1)
    };
    (id >= 0).then(|| Follower {
        id,
        broker_epoch,
        status: broker_status(&broker.topics.image(), id),
    })
}

/// What the ISR rules need of a broker's registration.
fn broker_status(image: &caudal_metadata::MetadataImage, id: i32) -> Option<BrokerStatus> {
    image.broker(id).map(|b| BrokerStatus {
        epoch: b.epoch,
        active: !b.fenced && !b.in_controlled_shutdown,
    })
}

/// Records each follower's position after its fetch's first read, and sends the ISR changes
/// this proposes to the controller.
fn record_followers(broker: &Broker, followed: &[Followed]) {
    if followed.is_empty() {
        return;
    }
    let image = broker.topics.image();
    let now = crate::now_ms();
    for f in followed {
        let proposal = f.partition.record_follower_fetch(
            &f.fetch,
            f.leader_end,
            |id| broker_status(&image, id),
            now,
        );
        if let Some(proposal) = proposal {
            broker.isr.send(f.partition.clone(), proposal);
        }
    }
}

/// KIP-951: for each partition answered NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH, the
/// leader and epoch the image knows, and (v16+) the leaders' addresses for this listener.
fn add_leader_hints(broker: &Broker, response: &mut FetchResponse, version: i16, listener: usize) {
    let mut hints = LeaderHints::new(broker, listener);
    let moved = [E::NotLeaderOrFollower.code(), E::FencedLeaderEpoch.code()];
    for topic in &mut response.responses {
        let id = if version >= TOPIC_IDS_SINCE {
            Some(topic.topic_id)
        } else {
            broker.topics.get(topic.topic.0.as_str()).map(|t| t.id)
        };
        let Some(id) = id else { continue };
        for p in &mut topic.partitions {
            if !moved.contains(&p.error_code) {
                continue;
            }
            if let Some(leader) = hints.leader(id, p.partition_index) {
                p.current_leader = LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader.id))
                    .with_leader_epoch(leader.epoch);
            }
        }
    }
    if version >= NODE_ENDPOINTS_SINCE {
        response.node_endpoints = hints
            .endpoints()
            .into_iter()
            .map(|n| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(n.id))
                    .with_host(str_bytes(n.host))
                    .with_port(i32::from(n.port))
                    .with_rack(n.rack.map(str_bytes))
            })
            .collect();
    }
}

/// For each partition of a consumer's fetch that this broker leads, the replica the consumer
/// should read from instead (KIP-392, `replica.selector.class` rack-aware): an in-sync replica
/// in the consumer's rack (`client.rack`), when the leader is in another. `None` (nothing
/// allocated) unless the selector is on and the consumer names a rack other than this broker's.
fn preferred_read_replicas(
    broker: &Broker,
    request: &FetchRequest,
    any_replica: bool,
    targets: &Targets,
) -> Option<Preferred> {
    let rack = request.rack_id.as_str();
    if !any_replica || rack.is_empty() || !broker.config.rack_aware_replica_selector() {
        return None;
    }
    let image = broker.topics.image();
    let local = broker.config.node_id;
    if image
        .broker(local)
        .is_some_and(|b| b.rack.as_deref() == Some(rack))
    {
        return None;
    }
    let preferred = targets
        .iter()
        .map(|topic| {
            topic
                .iter()
                .map(|target| {
                    let p = target.as_ref().ok().filter(|p| p.is_leader())?;
                    let registration = image.partition(p.topic_id, p.index)?;
                    registration.replicas.iter().copied().find(|r| {
                        *r != local
                            && registration.isr.contains(r)
                            && image
                                .broker(*r)
                                .is_some_and(|b| !b.fenced && b.rack.as_deref() == Some(rack))
                    })
                })
                .collect()
        })
        .collect();
    Some(preferred)
}

/// Looks up the topics and partitions of a fetch: the replicas this broker leads, or with
/// `any_replica` the ones it follows too.
fn resolve(broker: &Broker, request: &FetchRequest, version: i16, any_replica: bool) -> Targets {
    request
        .topics
        .iter()
        .map(|fetch_topic| {
            let topic = if version >= TOPIC_IDS_SINCE {
                broker
                    .topics
                    .get_by_id(fetch_topic.topic_id)
                    .ok_or(E::UnknownTopicId.code())
            } else {
                broker
                    .topics
                    .get(fetch_topic.topic.0.as_str())
                    .ok_or(E::UnknownTopicOrPartition.code())
            };
            fetch_topic
                .partitions
                .iter()
                .map(|fp| match &topic {
                    Ok(t) if any_replica => broker.local_partition(t, fp.partition),
                    Ok(t) => broker.leader_partition(t, fp.partition),
                    Err(code) => Err(*code),
                })
                .collect()
        })
        .collect()
}

/// Whether every partition of the fetch is known, led here at the epoch the client knows, online
/// and asked for at its high watermark (a follower: at the log end): nothing to read, and
/// nothing wrong to report.
fn at_end(request: &FetchRequest, targets: &Targets, follower: bool, any_replica: bool) -> bool {
    request
        .topics
        .iter()
        .zip(targets.iter())
        .all(|(topic, targets)| {
            topic.partitions.iter().zip(targets).all(|(fp, target)| {
                target.as_ref().is_ok_and(|p| {
                    let end = if follower {
                        p.log().log_end_offset()
                    } else {
                        p.high_watermark()
                    };
                    fp.fetch_offset == end
                        && (any_replica || p.is_leader())
                        && p.check_leader_epoch(fp.current_leader_epoch).is_ok()
                        && p.log().offline_reason().is_none()
                })
            })
        })
}

/// [`read_once`] on a blocking thread, reading whatever the page cache lacks from the disk.
async fn read_off_workers(
    request: Arc<FetchRequest>,
    version: i16,
    targets: Arc<Targets>,
    (follower, preferred): (Option<Follower>, Option<Arc<Preferred>>),
    throttle: Arc<ReplicationThrottle>,
) -> Pass {
    let read = tokio::task::spawn_blocking(move || {
        read_once(
            &request,
            version,
            &targets,
            (follower, preferred.as_deref()),
            &throttle,
            Reads::Disk,
        )
    });
    let failed = match read.await {
        Ok(Some(read)) => return read,
        Ok(None) => {
            tracing::error!("a fetch's read from disk gave up");
            Pass::default()
        }
        Err(e) => {
            tracing::error!(error = %e, "a fetch's read did not complete");
            Pass::default()
        }
    };
    Pass {
        response: FetchResponse::default().with_error_code(E::UnknownServerError.code()),
        any_error: true,
        ..failed
    }
}

/// One waker per partition of the fetch, each resolving at that partition's next append.
fn arm(targets: &Targets) -> Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> {
    targets
        .iter()
        .flatten()
        .filter_map(|t| t.as_ref().ok())
        .map(|p| {
            let mut next = Box::pin(p.next_append());
            next.as_mut().enable();
            next
        })
        .collect()
}

/// Resolves when any of its futures does.
struct AnyOf<'a, F>(&'a mut [Pin<Box<F>>]);

impl<F: Future> Future for AnyOf<'_, F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        for f in self.0.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// Where a pass may read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// Only the page cache: the pass gives up (`None`) rather than wait for the disk.
    CachedOnly,
    /// The disk too: on a blocking thread only.
    Disk,
}

impl Reads {
    fn read(self, plan: &caudal_storage::ReadPlan) -> std::io::Result<Option<Bytes>> {
        match self {
            Reads::CachedOnly => plan.read_cached(),
            Reads::Disk => plan.read().map(Some),
        }
    }
}

/// A follower's read of one partition, to record once the pass is done.
#[derive(Debug)]
struct Followed {
    partition: Arc<Partition>,
    fetch: FollowerFetch,
    /// The leader's log end before the read.
    leader_end: i64,
}

/// What one pass over the requested partitions made.
#[derive(Debug, Default)]
struct Pass {
    response: FetchResponse,
    /// The record bytes in it.
    bytes: usize,
    /// A partition has an error or a diverging epoch: the fetch is answered at once, as Kafka
    /// does.
    any_error: bool,
    followed: Vec<Followed>,
    /// Record bytes sent to replicas under `leader.replication.throttled.rate`.
    throttled_bytes: usize,
}

/// One pass over the requested partitions. `None` when `reads` is [`Reads::CachedOnly`] and
/// some bytes are not cached. A follower reads up to the log end, after its epochs and
/// divergence are checked.
fn read_once(
    request: &FetchRequest,
    version: i16,
    targets: &Targets,
    (follower, preferred): (Option<Follower>, Option<&Preferred>),
    throttle: &ReplicationThrottle,
    reads: Reads,
) -> Option<Pass> {
    let mut followed = Vec::new();
    let mut throttled_bytes = 0usize;
    // Decided once per pass: the replicas a reassignment adds get data while the leader's
    // `leader.replication.throttled.rate` allows.
    // Without a rate nothing is throttled, and no partition's list of adding replicas is read.
    let throttle_limited = throttle.is_limited();
    let throttle_open = throttle.allows();
    let mut remaining = usize::try_from(request.max_bytes).unwrap_or(0);
    let mut total = 0usize;
    let mut any_error = false;
    let read_committed = request.isolation_level == READ_COMMITTED;
    let mut responses = Vec::with_capacity(request.topics.len());
    let any_replica = follower.is_none() && version >= FOLLOWER_READS_SINCE;
    for (t, (fetch_topic, topic_targets)) in request.topics.iter().zip(targets).enumerate() {
        let mut partitions = Vec::with_capacity(fetch_topic.partitions.len());
        for (i, (fp, target)) in fetch_topic.partitions.iter().zip(topic_targets).enumerate() {
            let base = PartitionData::default()
                .with_partition_index(fp.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
                .with_aborted_transactions(if read_committed {
                    Some(Vec::new())
                } else {
                    None
                });
            let follower_fetch = follower.map(|f| FollowerFetch {
                replica_id: f.id,
                broker_epoch: f.broker_epoch,
                current_leader_epoch: fp.current_leader_epoch,
                fetch_offset: fp.fetch_offset,
                last_fetched_epoch: fp.last_fetched_epoch,
            });
            // Checked at every pass: leadership can move while a fetch waits.
            let checked = target.as_ref().map_err(|code| *code).and_then(|p| {
                match (&follower_fetch, follower) {
                    (Some(ff), Some(f)) => Ok((p, p.check_follower_fetch(ff, f.status)?)),
                    _ => {
                        // A follower serves KIP-392 consumers while its log is online; one
                        // retired (deleted) or offline sends them back to the leader.
                        if !p.is_leader() && (!any_replica || p.log().offline_reason().is_some()) {
                            return Err(E::NotLeaderOrFollower.code());
                        }
                        p.check_leader_epoch(fp.current_leader_epoch)?;
                        Ok((p, None))
                    }
                }
            });
            let partition = match checked {
                Ok((p, None)) => p,
                Ok((p, Some(diverging))) => {
                    // No records: the follower truncates first.
                    any_error = true;
                    let hw = p.high_watermark();
                    let log_start_offset = p.log().log_start_offset();
                    partitions.push(
                        base.with_high_watermark(hw)
                            .with_last_stable_offset(hw)
                            .with_log_start_offset(log_start_offset)
                            .with_diverging_epoch(
                                EpochEndOffset::default()
                                    .with_epoch(diverging.epoch)
                                    .with_end_offset(diverging.end_offset),
                            ),
                    );
                    continue;
                }
                Err(code) => {
                    any_error = true;
                    // A follower below the log start starts again there: tell it where.
                    let base = match (target, follower) {
                        (Ok(p), Some(_)) if code == E::OffsetOutOfRange.code() => {
                            let hw = p.high_watermark();
                            let log_start_offset = p.log().log_start_offset();
                            base.with_high_watermark(hw)
                                .with_last_stable_offset(hw)
                                .with_log_start_offset(log_start_offset)
                        }
                        _ => base,
                    };
                    partitions.push(base.with_error_code(code));
                    continue;
                }
            };
            if let Some(replica) = preferred
                .and_then(|p| p.get(t))
                .and_then(|ps| ps.get(i))
                .copied()
                .flatten()
            {
                // KIP-392: the consumer reads from a replica in its rack; it is told at once,
                // with no records, as Kafka's leader answers.
                any_error = true;
                let hw = partition.high_watermark();
                let log_start_offset = partition.log().log_start_offset();
                partitions.push(
                    base.with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(log_start_offset)
                        .with_preferred_read_replica(BrokerId(replica)),
                );
                continue;
            }
            let limit = usize::try_from(fp.partition_max_bytes)
                .unwrap_or(0)
                .min(remaining);
            // Kafka returns at least one batch (the first partition with data), whatever the
            // limits, so a consumer can always make progress.
            let min_one = total == 0;
            let throttled = throttle_limited && follower.is_some_and(|f| partition.is_adding(f.id));
            let (plan, high_watermark, stable, aborted, log_start_offset) = {
                let hw = partition.high_watermark();
                let mut log = partition.log();
                let stable = crate::partition::last_stable_offset(hw, &log);
                // A follower reads up to the log end; consumers up to the high watermark, or
                // with read_committed the last stable offset. A throttled replica over the
                // rate reads nothing this time (its position counts).
                let up_to = if throttled && !throttle_open {
                    fp.fetch_offset
                } else if follower_fetch.is_some() {
                    i64::MAX
                } else if read_committed {
                    stable
                } else {
                    hw
                };
                // The aborted transactions in what is returned, for the consumer to drop.
                let aborted = read_committed.then(|| {
                    log.aborted_txns(fp.fetch_offset, stable)
                        .into_iter()
                        .map(|a| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(a.producer_id))
                                .with_first_offset(a.first_offset)
                        })
                        .collect::<Vec<_>>()
                });
                let leader_end = log.log_end_offset();
                let plan = log.read(fp.fetch_offset, limit, up_to, min_one);
                // Only a position inside the log counts, as with Kafka (whose read refuses the
                // rest before the follower's state moves): a fetch offset past the log end must
                // not vouch for records the follower does not have.
                if let (Some(fetch), Ok(_)) = (follower_fetch, &plan) {
                    followed.push(Followed {
                        partition: partition.clone(),
                        fetch,
                        leader_end,
                    });
                }
                (plan, hw, stable, aborted, log.log_start_offset())
            };
            let base = base
                .with_high_watermark(high_watermark)
                .with_last_stable_offset(stable)
                .with_log_start_offset(log_start_offset)
                .with_aborted_transactions(aborted);
            let records = match plan {
                Ok(Some(plan)) => match reads.read(&plan) {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::error!(topic = %partition.topic, partition = fp.partition, error = %e, "reading the log failed");
                        any_error = true;
                        partitions.push(base.with_error_code(E::KafkaStorageError.code()));
                        continue;
                    }
                },
                Ok(None) => Bytes::new(),
                Err(ReadError::OffsetOutOfRange { .. }) => {
                    any_error = true;
                    partitions.push(base.with_error_code(E::OffsetOutOfRange.code()));
                    continue;
                }
                Err(ReadError::Io(e)) => {
                    tracing::error!(topic = %partition.topic, partition = fp.partition, error = %e, "reading the log failed");
                    any_error = true;
                    partitions.push(base.with_error_code(E::KafkaStorageError.code()));
                    continue;
                }
                Err(ReadError::Offline(_)) => {
                    any_error = true;
                    partitions.push(base.with_error_code(E::KafkaStorageError.code()));
                    continue;
                }
            };
            if throttled {
                throttled_bytes += records.len();
            }
            total += records.len();
            remaining = remaining.saturating_sub(records.len());
            partitions.push(base.with_records(Some(records)));
        }
        responses.push(topic_response(fetch_topic, partitions, version));
    }
    let response = FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses);
    Some(Pass {
        response,
        bytes: total,
        any_error,
        followed,
        throttled_bytes,
    })
}

fn topic_response(
    request: &FetchTopic,
    partitions: Vec<PartitionData>,
    version: i16,
) -> FetchableTopicResponse {
    let r = FetchableTopicResponse::default().with_partitions(partitions);
    if version >= TOPIC_IDS_SINCE {
        r.with_topic_id(request.topic_id)
    } else {
        r.with_topic(TopicName(str_bytes(request.topic.0.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kafka_protocol::messages::fetch_request::FetchPartition;

    use super::*;
    use crate::replica_manager::tp;
    use crate::{BrokerConfig, Server};

    /// A broker on a temp dir with one topic of one partition, and a fetch of it at offset 0.
    /// The server is returned to be kept: dropping it stops the node's controller.
    async fn broker_with_topic(
        dir: &std::path::Path,
        min_bytes: i32,
    ) -> (Server, Arc<Broker>, Arc<Partition>, FetchRequest) {
        let config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.into());
        let server = Server::bind(config.clone()).await.unwrap();
        let broker = server.broker().clone();
        let topic = broker
            .topics
            .create("moves", 1, BTreeMap::new(), false)
            .await
            .unwrap()
            .unwrap();
        let partition = broker.replicas.get(tp(topic.id, 0)).unwrap();
        let request = FetchRequest::default()
            .with_max_wait_ms(60_000)
            .with_min_bytes(min_bytes)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(str_bytes("moves")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_current_leader_epoch(0)
                    .with_partition_max_bytes(1 << 20)])]);
        (server, broker, partition, request)
    }

    fn error_code(answer: Option<ResponseKind>) -> i16 {
        let Some(ResponseKind::Fetch(response)) = answer else {
            panic!("not a fetch response: {answer:?}");
        };
        response.responses[0].partitions[0].error_code
    }

    fn poll(f: &mut Pin<&mut Reply>) -> Poll<Option<ResponseKind>> {
        f.as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_waiting_fetch_answers_as_soon_as_its_partition_stops_leading() {
        // Before KIP-392 (Fetch v10) a consumer reads from the leader only.
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, partition, request) = broker_with_topic(dir.path(), 1).await;
        let fetch = handle(broker, request, 10, 0);
        tokio::pin!(fetch);
        // Nothing to read: the fetch waits (its first pass arms the wakers, the second parks).
        assert!(poll(&mut fetch).is_pending());
        assert!(poll(&mut fetch).is_pending());
        partition.set_leadership(false, 0);
        let Poll::Ready(answer) = poll(&mut fetch) else {
            panic!("the fetch kept waiting after its partition stopped leading here");
        };
        assert_eq!(error_code(answer), E::NotLeaderOrFollower.code());
    }

    #[tokio::test]
    async fn a_waiting_kip_392_fetch_answers_when_the_leadership_it_knew_ends() {
        // From v11 a follower may serve the consumer, but not at a leader epoch that is over.
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, partition, request) = broker_with_topic(dir.path(), 1).await;
        let fetch = handle(broker, request, 12, 0);
        tokio::pin!(fetch);
        assert!(poll(&mut fetch).is_pending());
        assert!(poll(&mut fetch).is_pending());
        partition.set_leadership(false, 1);
        let Poll::Ready(answer) = poll(&mut fetch) else {
            panic!("the fetch kept waiting after the leadership it knew ended");
        };
        assert_eq!(error_code(answer), E::FencedLeaderEpoch.code());
    }

    #[tokio::test]
    async fn a_waiting_fetch_answers_as_soon_as_its_topic_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, _partition, request) = broker_with_topic(dir.path(), 1).await;
        let fetch = handle(broker.clone(), request, 12, 0);
        tokio::pin!(fetch);
        assert!(poll(&mut fetch).is_pending());
        broker.topics.delete("moves").await.unwrap();
        let Poll::Ready(answer) = poll(&mut fetch) else {
            panic!("the fetch kept waiting after its topic was deleted");
        };
        assert_eq!(error_code(answer), E::NotLeaderOrFollower.code());
    }

    fn partition_data(answer: Option<ResponseKind>) -> PartitionData {
        let Some(ResponseKind::Fetch(mut response)) = answer else {
            panic!("not a fetch response: {answer:?}");
        };
        response.responses.remove(0).partitions.remove(0)
    }

    /// Gives `partition` a follower, broker `local + 1`, in its ISR, as the image would (the
    /// single node has no second broker to place it on). Returns this broker's id and the epoch.
    fn with_follower(broker: &Broker, partition: &Partition) -> (i32, i32) {
        let local = broker.config.node_id;
        let epoch = partition.leader_epoch();
        let registration = caudal_metadata::PartitionRegistration {
            replicas: vec![local, local + 1],
            isr: vec![local, local + 1],
            leader: local,
            leader_epoch: epoch,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
            elr: Vec::new(),
        };
        let settings = crate::replica_state::ReplicaSettings {
            max_lag_ms: 30_000,
            min_insync_replicas: 1,
        };
        partition.set_replicas(local, &registration, settings, crate::now_ms());
        (local, epoch)
    }

    #[tokio::test]
    async fn a_follower_fetch_past_the_log_end_is_refused_and_vouches_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, partition, mut request) = broker_with_topic(dir.path(), 0).await;
        request.topics[0].topic_id = partition.topic_id;
        let (local, epoch) = with_follower(&broker, &partition);
        let end = partition.high_watermark();
        let bytes = crate::coordinator_runtime::encode_batch(
            &[(Bytes::from_static(b"k"), Some(Bytes::from_static(b"v")))],
            0,
            None,
        )
        .unwrap();
        let valid = partition.log().validate(&bytes).unwrap();
        partition.append(&bytes, valid, 0).unwrap();
        let mut request = request.with_replica_state(
            kafka_protocol::messages::fetch_request::ReplicaState::default()
                .with_replica_id(BrokerId(local + 1)),
        );
        request.topics[0].partitions[0].fetch_offset = end + 5;
        request.topics[0].partitions[0].current_leader_epoch = epoch;
        let answer = partition_data(handle(broker, request, 15, 0).await);
        assert_eq!(answer.error_code, E::OffsetOutOfRange.code());
        assert_eq!(
            partition.high_watermark(),
            end,
            "the follower does not have the record"
        );
    }

    #[tokio::test]
    async fn a_follower_reads_to_the_log_end_and_its_position_moves_the_high_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, partition, mut consumer) = broker_with_topic(dir.path(), 0).await;
        consumer.topics[0].topic_id = partition.topic_id;
        let (local, epoch) = with_follower(&broker, &partition);
        let end = partition.high_watermark();
        for value in [&b"a"[..], b"b"] {
            let bytes = crate::coordinator_runtime::encode_batch(
                &[(
                    Bytes::from_static(b"k"),
                    Some(Bytes::copy_from_slice(value)),
                )],
                0,
                None,
            )
            .unwrap();
            let valid = partition.log().validate(&bytes).unwrap();
            partition.append(&bytes, valid, 0).unwrap();
        }
        let follower = |fetch_offset: i64| {
            let mut request = consumer.clone().with_replica_state(
                kafka_protocol::messages::fetch_request::ReplicaState::default()
                    .with_replica_id(BrokerId(local + 1)),
            );
            request.topics[0].partitions[0].fetch_offset = fetch_offset;
            request.topics[0].partitions[0].current_leader_epoch = epoch;
            request
        };
        let consumed = partition_data(handle(broker.clone(), consumer.clone(), 15, 0).await);
        assert_eq!(consumed.error_code, 0);
        assert_eq!(consumed.high_watermark, end);
        assert!(
            consumed.records.unwrap_or_default().is_empty(),
            "past the high watermark"
        );
        // The follower reads both batches, past the high watermark.
        let fetched = partition_data(handle(broker.clone(), follower(end), 15, 0).await);
        assert_eq!(fetched.error_code, 0);
        assert!(!fetched.records.unwrap_or_default().is_empty());
        assert_eq!(partition.high_watermark(), end);
        // Its next fetch says it has them: they are committed, and consumers read them.
        let fetched = partition_data(handle(broker.clone(), follower(end + 2), 15, 0).await);
        assert_eq!(fetched.error_code, 0);
        assert_eq!(partition.high_watermark(), end + 2);
        let consumed = partition_data(handle(broker.clone(), consumer.clone(), 15, 0).await);
        assert_eq!(consumed.high_watermark, end + 2);
        assert!(!consumed.records.unwrap_or_default().is_empty());
        // A broker that is no replica is told so.
        let mut stranger = follower(end);
        stranger.replica_state.replica_id = BrokerId(local + 7);
        let refused = partition_data(handle(broker, stranger, 15, 0).await);
        assert_eq!(refused.error_code, E::UnknownLeaderEpoch.code());
    }

    #[tokio::test]
    async fn a_caught_up_followers_position_counts_before_its_fetch_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, partition, mut request) = broker_with_topic(dir.path(), 1).await;
        request.topics[0].topic_id = partition.topic_id;
        let (local, epoch) = with_follower(&broker, &partition);
        let end = partition.high_watermark();
        let bytes = crate::coordinator_runtime::encode_batch(
            &[(Bytes::from_static(b"k"), Some(Bytes::from_static(b"v")))],
            0,
            None,
        )
        .unwrap();
        let valid = partition.log().validate(&bytes).unwrap();
        partition.append(&bytes, valid, 0).unwrap();
        // The follower has the batch and asks for what comes next: nothing yet, so its fetch
        // waits, but the leader has its position at once and the batch is committed.
        let mut request = request.with_replica_state(
            kafka_protocol::messages::fetch_request::ReplicaState::default()
                .with_replica_id(BrokerId(local + 1)),
        );
        request.topics[0].partitions[0].fetch_offset = end + 1;
        request.topics[0].partitions[0].current_leader_epoch = epoch;
        let fetch = handle(broker, request, 15, 0);
        tokio::pin!(fetch);
        assert!(
            poll(&mut fetch).is_pending(),
            "a caught-up follower's fetch waits"
        );
        assert_eq!(partition.high_watermark(), end + 1);
    }

    #[tokio::test]
    async fn a_fetch_with_min_bytes_zero_answers_at_once_with_nothing_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, _partition, request) = broker_with_topic(dir.path(), 0).await;
        let fetch = handle(broker, request, 12, 0);
        tokio::pin!(fetch);
        let Poll::Ready(answer) = poll(&mut fetch) else {
            panic!("a fetch with min_bytes 0 waited for data");
        };
        assert_eq!(error_code(answer), 0);
    }
}
