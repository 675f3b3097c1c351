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
    FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ResponseKind, TopicName};

use super::leader_hints::LeaderHints;
use super::{str_bytes, Reply};
use crate::partition::Partition;
use crate::Broker;

/// Fetch v13 and later name topics by id.
const TOPIC_IDS_SINCE: i16 = 13;
const READ_COMMITTED: i8 = 1;
/// Fetch v12 and later carry the leader of a partition this broker does not lead, v16 and
/// later its address too (KIP-951).
const LEADER_HINTS_SINCE: i16 = 12;
const NODE_ENDPOINTS_SINCE: i16 = 16;

/// The partitions of a fetch, resolved once: per topic of the request, per partition, the
/// partition or the error code to answer for it.
type Targets = Vec<Vec<Result<Arc<Partition>, i16>>>;

pub fn handle(broker: Arc<Broker>, request: FetchRequest, version: i16, listener: usize) -> Reply {
    Box::pin(async move {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
        let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
        let targets = Arc::new(resolve(&broker, &request, version));
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
            // Nothing to wait for with min_bytes 0: answer at once, as Kafka does.
            if last || min_bytes == 0 || !at_end(&request, &targets) {
                let read = match read_once(&request, version, &targets, Reads::CachedOnly) {
                    Some(read) => read,
                    None => read_off_workers(request.clone(), version, targets.clone()).await,
                };
                let (mut response, bytes, any_error) = read;
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

/// Looks up the topics and partitions of a fetch.
fn resolve(broker: &Broker, request: &FetchRequest, version: i16) -> Targets {
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
                    Ok(t) => broker.leader_partition(t, fp.partition),
                    Err(code) => Err(*code),
                })
                .collect()
        })
        .collect()
}

/// Whether every partition of the fetch is known, led here at the epoch the client knows, online
/// and asked for at its high watermark: nothing to read, and nothing wrong to report.
fn at_end(request: &FetchRequest, targets: &Targets) -> bool {
    request
        .topics
        .iter()
        .zip(targets.iter())
        .all(|(topic, targets)| {
            topic.partitions.iter().zip(targets).all(|(fp, target)| {
                target.as_ref().is_ok_and(|p| {
                    fp.fetch_offset == p.high_watermark()
                        && p.is_leader()
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
) -> (FetchResponse, usize, bool) {
    let read =
        tokio::task::spawn_blocking(move || read_once(&request, version, &targets, Reads::Disk));
    match read.await {
        Ok(Some(read)) => read,
        Ok(None) => {
            tracing::error!("a fetch's read from disk gave up");
            let response = FetchResponse::default().with_error_code(E::UnknownServerError.code());
            (response, 0, true)
        }
        Err(e) => {
            tracing::error!(error = %e, "a fetch's read did not complete");
            let response = FetchResponse::default().with_error_code(E::UnknownServerError.code());
            (response, 0, true)
        }
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

/// One pass over the requested partitions: returns the response, the record bytes in it, and
/// whether any partition has an error (which answers the fetch at once, as in Kafka). `None`
/// when `reads` is [`Reads::CachedOnly`] and some bytes are not cached.
fn read_once(
    request: &FetchRequest,
    version: i16,
    targets: &Targets,
    reads: Reads,
) -> Option<(FetchResponse, usize, bool)> {
    let mut remaining = usize::try_from(request.max_bytes).unwrap_or(0);
    let mut total = 0usize;
    let mut any_error = false;
    let read_committed = request.isolation_level == READ_COMMITTED;
    let mut responses = Vec::with_capacity(request.topics.len());
    for (fetch_topic, topic_targets) in request.topics.iter().zip(targets) {
        let mut partitions = Vec::with_capacity(fetch_topic.partitions.len());
        for (fp, target) in fetch_topic.partitions.iter().zip(topic_targets) {
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
            // Checked at every pass: leadership can move while a fetch waits.
            let partition = match target.as_ref().map_err(|code| *code).and_then(|p| {
                if !p.is_leader() {
                    return Err(E::NotLeaderOrFollower.code());
                }
                p.check_leader_epoch(fp.current_leader_epoch)?;
                Ok(p)
            }) {
                Ok(p) => p,
                Err(code) => {
                    any_error = true;
                    partitions.push(base.with_error_code(code));
                    continue;
                }
            };
            let limit = usize::try_from(fp.partition_max_bytes)
                .unwrap_or(0)
                .min(remaining);
            // Kafka returns at least one batch (the first partition with data), whatever the
            // limits, so a consumer can always make progress.
            let min_one = total == 0;
            let (plan, high_watermark, log_start_offset) = {
                let hw = partition.high_watermark();
                let mut log = partition.log();
                (
                    log.read(fp.fetch_offset, limit, hw, min_one),
                    hw,
                    log.log_start_offset(),
                )
            };
            let base = base
                .with_high_watermark(high_watermark)
                .with_last_stable_offset(high_watermark)
                .with_log_start_offset(log_start_offset);
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
            total += records.len();
            remaining = remaining.saturating_sub(records.len());
            partitions.push(base.with_records(Some(records)));
        }
        responses.push(topic_response(fetch_topic, partitions, version));
    }
    let response = FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses);
    Some((response, total, any_error))
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
        let dir = tempfile::tempdir().unwrap();
        let (_server, broker, partition, request) = broker_with_topic(dir.path(), 1).await;
        let fetch = handle(broker, request, 12, 0);
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
