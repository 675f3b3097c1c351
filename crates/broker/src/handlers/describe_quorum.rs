//! DescribeQuorum (API 55, KIP-595, KIP-836, KIP-853): the metadata quorum as its leader sees it,
//! what `kafka-metadata-quorum describe --status` and `--replication` and `caudal cluster status`
//! print.
//!
//! As in Kafka, only the quorum leader answers with a description; a controller that does not
//! lead answers NOT_LEADER_OR_FOLLOWER, and a request for anything but `__cluster_metadata-0`
//! gets UNKNOWN_TOPIC_OR_PARTITION. A broker forwards the request to the active controller
//! (Kafka's brokers send it on in an Envelope; Caudal's send it as itself to the leader's
//! controller listener, which answers it the same way); a broker whose own node leads the
//! quorum answers from the same state the controller listener would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::quorum::{QuorumClient, QuorumDescription, ReplicaDescription};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, RequestKind, ResponseKind,
    TopicName,
};

use super::str_bytes;
use crate::config::BrokerConfig;
use crate::controller_channel::ControllerChannel;
use crate::Broker;

/// The metadata log's topic, Kafka's name for it.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// Its only partition.
const METADATA_PARTITION: i32 = 0;
/// The longest a broker waits for the active controller's answer, as Kafka's forwarding waits
/// for at most the client's request timeout (30 s by default); a quorum without a leader for
/// that long has a problem the answer (REQUEST_TIMED_OUT) should show.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Kafka's name for the controller listener when `controller.listener.names` is not set.
const DEFAULT_CONTROLLER_LISTENER: &str = "CONTROLLER";

/// What a node answers DescribeQuorum from: its quorum, and each voter's controller endpoint
/// (`controller.quorum.voters`), which v2 lists.
#[derive(Clone)]
pub struct QuorumDescriber {
    quorum: QuorumClient,
    /// Voter id -> (host, port) of its controller listener.
    voters: Arc<BTreeMap<u64, (String, u16)>>,
    /// The controller listener's name, which v2 gives each endpoint.
    listener_name: String,
    /// The way to the active controller, on brokers; `None` where only this node answers
    /// (the controller listener).
    forward: Option<ControllerChannel>,
}

impl std::fmt::Debug for QuorumDescriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumDescriber")
            .field("voters", &self.voters)
            .field("listener_name", &self.listener_name)
            .finish_non_exhaustive()
    }
}

/// `host:port` split; `None` if it is not one.
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

impl QuorumDescriber {
    /// What the controller listener of the node of `config` answers from.
    pub fn new(quorum: QuorumClient, config: &BrokerConfig) -> QuorumDescriber {
        let voters = config
            .quorum_voters()
            .iter()
            .filter_map(|(id, address)| Some((*id, host_port(address)?)))
            .collect();
        let listener_name = config
            .controller_listener_names()
            .into_iter()
            .next()
            .unwrap_or_else(|| DEFAULT_CONTROLLER_LISTENER.to_string());
        QuorumDescriber {
            quorum,
            voters: Arc::new(voters),
            listener_name,
            forward: None,
        }
    }

    /// The same, forwarding through `channel` to the active controller when this node does not
    /// lead: what a broker answers from.
    pub fn forwarding(mut self, channel: ControllerChannel) -> QuorumDescriber {
        self.forward = Some(channel);
        self
    }

    /// This node's own answer: the description while it leads, NOT_LEADER_OR_FOLLOWER
    /// otherwise, UNKNOWN_TOPIC_OR_PARTITION for a request about anything but the metadata log.
    pub async fn answer(
        &self,
        request: &DescribeQuorumRequest,
        version: i16,
    ) -> DescribeQuorumResponse {
        if !asks_for_the_metadata_log(request) {
            return partition_errors(request, ResponseError::UnknownTopicOrPartition, version);
        }
        match self.quorum.describe(crate::now_ms()).await {
            Ok(Some(description)) => {
                described(&description, &self.voters, &self.listener_name, version)
            }
            Ok(None) => not_leader(version),
            Err(e) => {
                tracing::debug!(error = %e, "describing the metadata quorum failed");
                not_leader(version)
            }
        }
    }
}

/// The answer describing `d`; v2 adds each voter's endpoint on the controller listener
/// `listener_name` from `voters`.
fn described(
    d: &QuorumDescription,
    voters: &BTreeMap<u64, (String, u16)>,
    listener_name: &str,
    version: i16,
) -> DescribeQuorumResponse {
    let replica = |r: &ReplicaDescription| {
        ReplicaState::default()
            .with_replica_id(node_id(r.node_id))
            .with_log_end_offset(r.log_end_offset.map_or(-1, offset))
            .with_last_fetch_timestamp(r.last_fetch_timestamp_ms.unwrap_or(-1))
            .with_last_caught_up_timestamp(r.last_caught_up_timestamp_ms.unwrap_or(-1))
    };
    let partition = PartitionData::default()
        .with_partition_index(METADATA_PARTITION)
        .with_leader_id(node_id(d.leader_id))
        .with_leader_epoch(i32::try_from(d.leader_epoch).unwrap_or(i32::MAX))
        .with_high_watermark(offset(d.high_watermark))
        .with_current_voters(d.voters.iter().map(replica).collect())
        .with_observers(d.observers.iter().map(replica).collect());
    let response =
        DescribeQuorumResponse::default().with_topics(vec![metadata_topic(vec![partition])]);
    if version < 2 {
        return response;
    }
    // v2 (KIP-853): each voter's endpoints, so a tool can reach the controllers.
    let nodes = d
        .voters
        .iter()
        .map(|v| {
            let listeners = voters
                .get(&v.node_id)
                .map(|(host, port)| {
                    vec![Listener::default()
                        .with_name(str_bytes(listener_name))
                        .with_host(str_bytes(host.clone()))
                        .with_port(*port)]
                })
                .unwrap_or_default();
            Node::default()
                .with_node_id(node_id(v.node_id))
                .with_listeners(listeners)
        })
        .collect();
    response.with_nodes(nodes)
}

impl QuorumDescriber {
    /// A broker's answer: this node's own while it leads the quorum (or the request is not
    /// about the metadata log), the active controller's otherwise.
    pub async fn answer_or_forward(
        &self,
        request: DescribeQuorumRequest,
        version: i16,
    ) -> DescribeQuorumResponse {
        let Some(channel) = &self.forward else {
            return self.answer(&request, version).await;
        };
        if !asks_for_the_metadata_log(&request) || self.quorum.status().is_leader {
            return self.answer(&request, version).await;
        }
        let forwarded = channel
            .call_quorum_leader(
                ApiKey::DescribeQuorum,
                version,
                RequestKind::DescribeQuorum(request.clone()),
                FORWARD_TIMEOUT,
            )
            .await;
        match forwarded {
            Ok(Some(ResponseKind::DescribeQuorum(response))) => response,
            Ok(Some(other)) => {
                tracing::warn!(
                    ?other,
                    "the active controller answered DescribeQuorum with another API"
                );
                top_level_error(ResponseError::UnknownServerError, version)
            }
            // This node leads now.
            Ok(None) => self.answer(&request, version).await,
            Err(e) => top_level_error(e.kafka_error(), version),
        }
    }
}

/// Kafka answers only a request for exactly `__cluster_metadata-0`.
fn asks_for_the_metadata_log(request: &DescribeQuorumRequest) -> bool {
    matches!(request.topics.as_slice(), [topic]
        if topic.topic_name.0.as_str() == METADATA_TOPIC
            && matches!(topic.partitions.as_slice(), [p] if p.partition_index == METADATA_PARTITION))
}

fn node_id(id: u64) -> BrokerId {
    BrokerId(i32::try_from(id).unwrap_or(i32::MAX))
}

fn offset(o: u64) -> i64 {
    i64::try_from(o).unwrap_or(i64::MAX)
}

fn metadata_topic(partitions: Vec<PartitionData>) -> TopicData {
    TopicData::default()
        .with_topic_name(TopicName(str_bytes(METADATA_TOPIC)))
        .with_partitions(partitions)
}

/// A partition's error; its message only where the version has the field (v2).
fn partition_error(index: i32, error: ResponseError, version: i16) -> PartitionData {
    let partition = PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error.code())
        .with_leader_id(BrokerId(-1))
        .with_leader_epoch(-1)
        .with_high_watermark(-1);
    if version >= 2 {
        partition.with_error_message(Some(str_bytes(error.to_string())))
    } else {
        partition
    }
}

/// NOT_LEADER_OR_FOLLOWER for `__cluster_metadata-0`: this node does not lead the quorum.
fn not_leader(version: i16) -> DescribeQuorumResponse {
    DescribeQuorumResponse::default().with_topics(vec![metadata_topic(vec![partition_error(
        METADATA_PARTITION,
        ResponseError::NotLeaderOrFollower,
        version,
    )])])
}

/// `error` for every partition the request names.
fn partition_errors(
    request: &DescribeQuorumRequest,
    error: ResponseError,
    version: i16,
) -> DescribeQuorumResponse {
    DescribeQuorumResponse::default().with_topics(
        request
            .topics
            .iter()
            .map(|t| {
                TopicData::default()
                    .with_topic_name(t.topic_name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| partition_error(p.partition_index, error, version))
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// An answer with only a top-level error (the forwarded request got no answer).
fn top_level_error(error: ResponseError, version: i16) -> DescribeQuorumResponse {
    let response = DescribeQuorumResponse::default().with_error_code(error.code());
    if version >= 2 {
        response.with_error_message(Some(str_bytes(error.to_string())))
    } else {
        response
    }
}

/// DescribeQuorum on a client listener.
pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeQuorumRequest,
    version: i16,
) -> crate::handlers::Reply {
    let describer = broker.quorum.clone();
    Box::pin(async move {
        Some(ResponseKind::DescribeQuorum(
            describer.answer_or_forward(request, version).await,
        ))
    })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_quorum_request;

    use super::*;

    fn request(topics: &[(&str, &[i32])]) -> DescribeQuorumRequest {
        DescribeQuorumRequest::default().with_topics(
            topics
                .iter()
                .map(|(name, partitions)| {
                    describe_quorum_request::TopicData::default()
                        .with_topic_name(TopicName(str_bytes(*name)))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|p| {
                                    describe_quorum_request::PartitionData::default()
                                        .with_partition_index(*p)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    #[test]
    fn only_a_request_for_exactly_the_metadata_log_is_answered() {
        assert!(asks_for_the_metadata_log(&request(&[(
            METADATA_TOPIC,
            &[0]
        )])));
        for other in [
            request(&[(METADATA_TOPIC, &[1])]),
            request(&[("orders", &[0])]),
            request(&[(METADATA_TOPIC, &[0, 1])]),
            request(&[(METADATA_TOPIC, &[0]), ("orders", &[0])]),
            request(&[]),
        ] {
            assert!(!asks_for_the_metadata_log(&other), "{other:?}");
        }
        // Every partition asked for gets the error, under the names asked for.
        let r = partition_errors(
            &request(&[(METADATA_TOPIC, &[0, 1]), ("orders", &[3])]),
            ResponseError::UnknownTopicOrPartition,
            1,
        );
        let named: Vec<(String, i32, i16)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        t.topic_name.0.as_str().to_string(),
                        p.partition_index,
                        p.error_code,
                    )
                })
            })
            .collect();
        let code = ResponseError::UnknownTopicOrPartition.code();
        assert_eq!(
            named,
            vec![
                (METADATA_TOPIC.to_string(), 0, code),
                (METADATA_TOPIC.to_string(), 1, code),
                ("orders".to_string(), 3, code),
            ]
        );
    }

    #[test]
    fn errors_carry_a_message_only_from_v2() {
        use kafka_protocol::protocol::Encodable;
        for version in 0..=2 {
            let mut buf = bytes::BytesMut::new();
            not_leader(version)
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("v{version} encodes: {e}"));
            let mut buf = bytes::BytesMut::new();
            top_level_error(ResponseError::RequestTimedOut, version)
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("v{version} encodes: {e}"));
        }
    }

    #[test]
    fn a_description_is_answered_at_every_version_with_endpoints_from_v2() {
        use kafka_protocol::protocol::Encodable;
        let replica = |id, end: Option<u64>| ReplicaDescription {
            node_id: id,
            log_end_offset: end,
            last_fetch_timestamp_ms: end.map(|_| 1_000),
            last_caught_up_timestamp_ms: None,
        };
        let d = QuorumDescription {
            leader_id: 2,
            leader_epoch: 7,
            high_watermark: 41,
            voters: vec![replica(1, Some(40)), replica(2, Some(42)), replica(3, None)],
            observers: vec![replica(4, Some(12))],
        };
        let voters = BTreeMap::from([
            (1, ("n1".to_string(), 9093)),
            (2, ("n2".to_string(), 9093)),
            (3, ("n3".to_string(), 9093)),
        ]);
        for version in 0..=2 {
            let r = described(&d, &voters, "CONTROLLER", version);
            let mut buf = bytes::BytesMut::new();
            r.encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("v{version} encodes: {e}"));
            let p = &r.topics[0].partitions[0];
            assert_eq!(r.topics[0].topic_name.0.as_str(), METADATA_TOPIC);
            assert_eq!(
                (p.leader_id, p.leader_epoch, p.high_watermark),
                (BrokerId(2), 7, 41)
            );
            let ends: Vec<(i32, i64, i64, i64)> = p
                .current_voters
                .iter()
                .map(|v| {
                    (
                        v.replica_id.0,
                        v.log_end_offset,
                        v.last_fetch_timestamp,
                        v.last_caught_up_timestamp,
                    )
                })
                .collect();
            // Unknown is -1, as Kafka reports a voter it has not heard from.
            assert_eq!(
                ends,
                vec![(1, 40, 1_000, -1), (2, 42, 1_000, -1), (3, -1, -1, -1)]
            );
            assert_eq!(p.observers.len(), 1);
            if version < 2 {
                assert!(r.nodes.is_empty());
            } else {
                let endpoints: Vec<(i32, String, u16)> = r
                    .nodes
                    .iter()
                    .flat_map(|n| {
                        n.listeners.iter().map(move |l| {
                            assert_eq!(l.name.as_str(), "CONTROLLER");
                            (n.node_id.0, l.host.as_str().to_string(), l.port)
                        })
                    })
                    .collect();
                assert_eq!(
                    endpoints,
                    vec![
                        (1, "n1".to_string(), 9093),
                        (2, "n2".to_string(), 9093),
                        (3, "n3".to_string(), 9093)
                    ]
                );
            }
        }
    }

    #[test]
    fn voter_addresses_split_into_host_and_port() {
        assert_eq!(host_port("node-1:9093"), Some(("node-1".into(), 9093)));
        assert_eq!(host_port("[::1]:9093"), Some(("::1".into(), 9093)));
        assert_eq!(host_port("node-1"), None);
        assert_eq!(host_port("node-1:http"), None);
    }
}
