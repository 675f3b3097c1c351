//! Drives a real broker over TCP with every API at every version it advertises, checking that
//! each request is answered, the answer decodes at that version, and the results are right.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use caudal_broker::{BrokerConfig, ListenerKind, Server};
use caudal_protocol::kafka_protocol;
use caudal_protocol::SUPPORTED_APIS;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            correlation_id: 0,
        }
    }

    async fn send(&mut self, api: ApiKey, version: i16, body: &RequestKind) -> ResponseKind {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("every-version-test")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("test cannot encode {api:?} v{version}: {e}"));
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).await.unwrap();
        let len = self.stream.read_i32().await.unwrap_or_else(|e| {
            panic!("{api:?} v{version}: broker closed the connection instead of answering ({e})")
        });
        let mut frame = vec![0u8; len as usize];
        self.stream.read_exact(&mut frame).await.unwrap();
        let mut frame = Bytes::from(frame);
        let header =
            ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(
            header.correlation_id, self.correlation_id,
            "{api:?} v{version}: wrong correlation id"
        );
        let body = ResponseKind::decode(api, &mut frame, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: response does not decode: {e}"));
        assert_eq!(
            frame.remaining(),
            0,
            "{api:?} v{version}: bytes left after the response"
        );
        body
    }
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn batch(values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
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
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(v.to_string())),
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
    .unwrap();
    buf.freeze()
}

async fn start() -> (
    SocketAddr,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    // Joins complete as soon as every member is in, rather than after the 3 s initial delay.
    config.set("group.initial.rebalance.delay.ms", "0").unwrap();
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, dir, stop)
}

#[tokio::test]
async fn every_api_answers_at_every_advertised_version() {
    let (addr, _dir, _stop) = start().await;
    let mut c = Client::connect(addr).await;

    // A topic to work on, created at the newest CreateTopics version.
    let create = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic("t"))
            .with_num_partitions(2)
            .with_replication_factor(1)])
        .with_timeout_ms(5000);
    let ResponseKind::CreateTopics(r) = c
        .send(ApiKey::CreateTopics, 7, &RequestKind::CreateTopics(create))
        .await
    else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, 0);
    let topic_id = r.topics[0].topic_id;

    let client_apis = caudal_broker::routes::api_versions(ListenerKind::Client);
    for &(api, min, max) in SUPPORTED_APIS {
        // What brokers send the controller is served on controller listeners only.
        if !client_apis.iter().any(|a| a.api_key == api as i16) {
            continue;
        }
        for v in min..=max {
            let what = format!("{api:?} v{v}");
            match api {
                ApiKey::ApiVersions => {
                    let ResponseKind::ApiVersions(r) = c
                        .send(
                            api,
                            v,
                            &RequestKind::ApiVersions(
                                ApiVersionsRequest::default()
                                    .with_client_software_name(StrBytes::from_static_str("t"))
                                    .with_client_software_version(StrBytes::from_static_str("1")),
                            ),
                        )
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    assert_eq!(r.api_keys.len(), client_apis.len(), "{what}");
                }
                ApiKey::Metadata => {
                    let req = MetadataRequest::default().with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic("t"))),
                    ]));
                    let ResponseKind::Metadata(r) =
                        c.send(api, v, &RequestKind::Metadata(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.topics.len(), 1, "{what}");
                    assert_eq!(r.topics[0].error_code, 0, "{what}");
                    assert_eq!(r.topics[0].partitions.len(), 2, "{what}");
                    assert_eq!(r.brokers[0].port, i32::from(addr.port()), "{what}");
                }
                ApiKey::Produce => {
                    let req = ProduceRequest::default()
                        .with_acks(-1)
                        .with_timeout_ms(5000)
                        .with_topic_data(vec![TopicProduceData::default()
                            .with_name(topic("t"))
                            .with_partition_data(vec![PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch(&["a", "b"])))])]);
                    let ResponseKind::Produce(r) = c.send(api, v, &RequestKind::Produce(req)).await
                    else {
                        panic!()
                    };
                    let p = &r.responses[0].partition_responses[0];
                    assert_eq!(p.error_code, 0, "{what}: {:?}", p.error_message);
                    assert!(p.base_offset >= 0, "{what}");
                }
                ApiKey::Fetch => {
                    let mut ft =
                        FetchTopic::default().with_partitions(vec![FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)]);
                    ft = if v >= 13 {
                        ft.with_topic_id(topic_id)
                    } else {
                        ft.with_topic(topic("t"))
                    };
                    let req = FetchRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_max_wait_ms(0)
                        .with_min_bytes(1)
                        .with_max_bytes(1 << 20)
                        .with_session_epoch(-1)
                        .with_topics(vec![ft]);
                    let ResponseKind::Fetch(r) =
                        c.send(api, v, &RequestKind::Fetch(req.clone())).await
                    else {
                        panic!()
                    };
                    let p = &r.responses[0].partitions[0];
                    assert_eq!(p.error_code, 0, "{what}");
                    assert!(
                        p.records.as_ref().is_some_and(|b| !b.is_empty()),
                        "{what}: no records"
                    );
                    assert!(p.high_watermark >= 2, "{what}");
                    if v >= 9 {
                        // A fetch from a client that believes in a newer leader epoch than this
                        // replica's is refused, as Kafka does (KIP-320).
                        let mut req = req;
                        req.topics[0].partitions[0].current_leader_epoch = 1;
                        let ResponseKind::Fetch(r) = c.send(api, v, &RequestKind::Fetch(req)).await
                        else {
                            panic!()
                        };
                        let p = &r.responses[0].partitions[0];
                        assert_eq!(p.error_code, 75, "{what}: UNKNOWN_LEADER_EPOCH");
                    }
                }
                ApiKey::ListOffsets => {
                    let req = ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![ListOffsetsTopic::default()
                            .with_name(topic("t"))
                            .with_partitions(vec![ListOffsetsPartition::default()
                                .with_partition_index(0)
                                .with_timestamp(-1)])]);
                    let ResponseKind::ListOffsets(r) =
                        c.send(api, v, &RequestKind::ListOffsets(req.clone())).await
                    else {
                        panic!()
                    };
                    let p = &r.topics[0].partitions[0];
                    assert_eq!(p.error_code, 0, "{what}");
                    assert!(p.offset >= 2, "{what}");
                    if v >= 4 {
                        assert_eq!(p.leader_epoch, 0, "{what}");
                        let mut req = req;
                        req.topics[0].partitions[0].current_leader_epoch = 1;
                        let ResponseKind::ListOffsets(r) =
                            c.send(api, v, &RequestKind::ListOffsets(req)).await
                        else {
                            panic!()
                        };
                        let p = &r.topics[0].partitions[0];
                        assert_eq!(p.error_code, 75, "{what}: UNKNOWN_LEADER_EPOCH");
                    }
                }
                ApiKey::OffsetForLeaderEpoch => {
                    // Epoch 0 is the only one a single node has written: it ends at the log end.
                    // A caller that believes in a later epoch is told this replica is behind.
                    let part = |current: i32| {
                        OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(current)
                            .with_leader_epoch(0)
                    };
                    let req = OffsetForLeaderEpochRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![
                            OffsetForLeaderTopic::default()
                                .with_topic(topic("t"))
                                .with_partitions(vec![part(-1), part(0), part(1)]),
                            OffsetForLeaderTopic::default()
                                .with_topic(topic("nope"))
                                .with_partitions(vec![part(-1)]),
                        ]);
                    let ResponseKind::OffsetForLeaderEpoch(r) = c
                        .send(api, v, &RequestKind::OffsetForLeaderEpoch(req))
                        .await
                    else {
                        panic!()
                    };
                    let got: Vec<(i16, i32, i64)> = r.topics[0]
                        .partitions
                        .iter()
                        .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
                        .collect();
                    let end = got[0].2;
                    assert!(end >= 2, "{what}: {got:?}");
                    assert_eq!(
                        got,
                        [(0, 0, end), (0, 0, end), (75, -1, -1)],
                        "{what}: UNKNOWN_LEADER_EPOCH for a newer epoch"
                    );
                    assert_eq!(r.topics[1].partitions[0].error_code, 3, "{what}");
                }
                ApiKey::CreateTopics => {
                    let name = format!("created-v{v}");
                    let req = CreateTopicsRequest::default()
                        .with_topics(vec![CreatableTopic::default()
                            .with_name(topic(&name))
                            .with_num_partitions(1)
                            .with_replication_factor(1)])
                        .with_timeout_ms(5000);
                    let ResponseKind::CreateTopics(r) =
                        c.send(api, v, &RequestKind::CreateTopics(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(
                        r.topics[0].error_code, 0,
                        "{what}: {:?}",
                        r.topics[0].error_message
                    );
                }
                ApiKey::DeleteTopics => {
                    let name = format!("created-v{}", (v + 1).clamp(2, 7));
                    let req = if v >= 6 {
                        DeleteTopicsRequest::default().with_topics(vec![DeleteTopicState::default(
                        )
                        .with_name(Some(topic(&name)))])
                    } else {
                        DeleteTopicsRequest::default().with_topic_names(vec![topic(&name)])
                    };
                    let ResponseKind::DeleteTopics(r) = c
                        .send(
                            api,
                            v,
                            &RequestKind::DeleteTopics(req.with_timeout_ms(5000)),
                        )
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(r.responses[0].error_code, 0, "{what}: deleting {name}");
                }
                ApiKey::CreatePartitions => {
                    let count = 3 + i32::from(v);
                    let req = CreatePartitionsRequest::default()
                        .with_topics(vec![CreatePartitionsTopic::default()
                            .with_name(topic("t"))
                            .with_count(count)])
                        .with_timeout_ms(5000);
                    let ResponseKind::CreatePartitions(r) =
                        c.send(api, v, &RequestKind::CreatePartitions(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(
                        r.results[0].error_code, 0,
                        "{what}: {:?}",
                        r.results[0].error_message
                    );
                }
                ApiKey::ElectLeaders => {
                    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
                    let req = ElectLeadersRequest::default().with_topic_partitions(Some(vec![
                        TopicPartitions::default()
                            .with_topic(topic("t"))
                            .with_partitions(vec![0]),
                    ]));
                    let ResponseKind::ElectLeaders(r) =
                        c.send(api, v, &RequestKind::ElectLeaders(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    let p = &r.replica_election_results[0].partition_result[0];
                    assert_eq!(
                        (p.partition_id, p.error_code),
                        (0, 84),
                        "{what}: ELECTION_NOT_NEEDED on a single node"
                    );
                }
                ApiKey::AlterPartitionReassignments => {
                    use kafka_protocol::messages::alter_partition_reassignments_request::{
                        ReassignablePartition, ReassignableTopic,
                    };
                    // Cancelling where nothing moves: Kafka's NO_REASSIGNMENT_IN_PROGRESS.
                    let req = AlterPartitionReassignmentsRequest::default().with_topics(vec![
                        ReassignableTopic::default()
                            .with_name(topic("t"))
                            .with_partitions(vec![ReassignablePartition::default()
                                .with_partition_index(0)
                                .with_replicas(None)]),
                    ]);
                    let ResponseKind::AlterPartitionReassignments(r) = c
                        .send(api, v, &RequestKind::AlterPartitionReassignments(req))
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    assert_eq!(r.responses[0].partitions[0].error_code, 85, "{what}");
                }
                ApiKey::ListPartitionReassignments => {
                    let req = ListPartitionReassignmentsRequest::default().with_topics(None);
                    let ResponseKind::ListPartitionReassignments(r) = c
                        .send(api, v, &RequestKind::ListPartitionReassignments(req))
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!((r.error_code, r.topics.len()), (0, 0), "{what}");
                }
                ApiKey::DescribeLogDirs => {
                    let ResponseKind::DescribeLogDirs(r) = c
                        .send(
                            api,
                            v,
                            &RequestKind::DescribeLogDirs(
                                DescribeLogDirsRequest::default().with_topics(None),
                            ),
                        )
                        .await
                    else {
                        panic!()
                    };
                    let dir = &r.results[0];
                    assert_eq!(dir.error_code, 0, "{what}");
                    assert!(
                        dir.topics.iter().any(|t| t.name.0.as_str() == "t"),
                        "{what}: topic t listed"
                    );
                    if v >= 4 {
                        assert!(dir.total_bytes > 0 && dir.usable_bytes > 0, "{what}");
                    }
                }
                ApiKey::DescribeTopicPartitions => {
                    use kafka_protocol::messages::describe_topic_partitions_request::{
                        Cursor, TopicRequest,
                    };
                    // One partition a page: the unknown topic first (name order), then t's
                    // partitions one after the other, following the cursor.
                    let mut cursor = None;
                    let mut pages = Vec::new();
                    loop {
                        let req = DescribeTopicPartitionsRequest::default()
                            .with_topics(vec![
                                TopicRequest::default().with_name(topic("t")),
                                TopicRequest::default().with_name(topic("missing")),
                            ])
                            .with_response_partition_limit(1)
                            .with_cursor(cursor.take());
                        let ResponseKind::DescribeTopicPartitions(r) = c
                            .send(api, v, &RequestKind::DescribeTopicPartitions(req))
                            .await
                        else {
                            panic!()
                        };
                        let next = r.next_cursor.clone();
                        pages.push(r);
                        match next {
                            Some(n) => {
                                cursor = Some(
                                    Cursor::default()
                                        .with_topic_name(n.topic_name)
                                        .with_partition_index(n.partition_index),
                                )
                            }
                            None => break,
                        }
                        assert!(pages.len() < 50, "{what}: the cursor goes round");
                    }
                    let first = &pages[0].topics;
                    assert_eq!(first[0].error_code, 3, "{what}: the unknown topic");
                    assert_eq!(first[1].topic_id, topic_id, "{what}");
                    let partitions: Vec<(i32, i32, Option<usize>)> = pages
                        .iter()
                        .flat_map(|p| &p.topics)
                        .filter(|t| t.error_code == 0)
                        .flat_map(|t| &t.partitions)
                        .map(|p| {
                            (
                                p.partition_index,
                                p.leader_id.0,
                                p.eligible_leader_replicas.as_ref().map(Vec::len),
                            )
                        })
                        .collect();
                    // t has two partitions, or more once CreatePartitions added some.
                    assert!(pages.len() >= 2, "{what}");
                    let expected: Vec<(i32, i32, Option<usize>)> =
                        (0..pages.len() as i32).map(|i| (i, 1, Some(0))).collect();
                    assert_eq!(
                        partitions, expected,
                        "{what}: one partition a page, in order"
                    );
                }
                ApiKey::DescribeConfigs => {
                    let req = DescribeConfigsRequest::default()
                        .with_include_synonyms(v >= 1)
                        .with_resources(vec![
                            DescribeConfigsResource::default()
                                .with_resource_type(2)
                                .with_resource_name(StrBytes::from_static_str("t")),
                            DescribeConfigsResource::default()
                                .with_resource_type(4)
                                .with_resource_name(StrBytes::from_static_str("1")),
                        ]);
                    let ResponseKind::DescribeConfigs(r) =
                        c.send(api, v, &RequestKind::DescribeConfigs(req)).await
                    else {
                        panic!()
                    };
                    assert!(
                        r.results.iter().all(|x| x.error_code == 0),
                        "{what}: {:?}",
                        r.results
                            .iter()
                            .map(|x| (x.error_code, x.error_message.clone()))
                            .collect::<Vec<_>>()
                    );
                    assert!(
                        r.results[0]
                            .configs
                            .iter()
                            .any(|x| x.name.as_str() == "retention.ms"),
                        "{what}"
                    );
                    assert!(
                        r.results[1]
                            .configs
                            .iter()
                            .any(|x| x.name.as_str() == "num.partitions"),
                        "{what}"
                    );
                }
                ApiKey::DescribeCluster => {
                    let ResponseKind::DescribeCluster(r) = c
                        .send(
                            api,
                            v,
                            &RequestKind::DescribeCluster(DescribeClusterRequest::default()),
                        )
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    assert_eq!(r.brokers.len(), 1, "{what}");
                    if v >= 2 {
                        let ResponseKind::DescribeCluster(r) = c
                            .send(
                                api,
                                v,
                                &RequestKind::DescribeCluster(
                                    DescribeClusterRequest::default()
                                        .with_include_fenced_brokers(true),
                                ),
                            )
                            .await
                        else {
                            panic!()
                        };
                        assert_eq!(r.brokers.len(), 1, "{what}");
                        assert!(!r.brokers[0].is_fenced, "{what}");
                    }
                }
                ApiKey::DescribeQuorum => {
                    // A single node leads its quorum of one and describes it.
                    let req = DescribeQuorumRequest::default().with_topics(vec![
                        describe_quorum_request::TopicData::default()
                            .with_topic_name(topic("__cluster_metadata"))
                            .with_partitions(vec![
                                describe_quorum_request::PartitionData::default(),
                            ]),
                    ]);
                    let ResponseKind::DescribeQuorum(r) =
                        c.send(api, v, &RequestKind::DescribeQuorum(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    let p = &r.topics[0].partitions[0];
                    assert_eq!((p.error_code, p.leader_id.0), (0, 1), "{what}");
                    assert!(p.leader_epoch > 0 && p.high_watermark > 0, "{what}: {p:?}");
                    assert_eq!(p.current_voters.len(), 1, "{what}");
                    assert!(
                        p.current_voters[0].log_end_offset >= p.high_watermark,
                        "{what}: {p:?}"
                    );
                }
                ApiKey::InitProducerId => {
                    let req = InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(60_000)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1);
                    let ResponseKind::InitProducerId(r) =
                        c.send(api, v, &RequestKind::InitProducerId(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    assert!(r.producer_id.0 >= 0, "{what}");
                }
                ApiKey::FindCoordinator => {
                    let req = if v >= 4 {
                        FindCoordinatorRequest::default()
                            .with_coordinator_keys(vec![StrBytes::from_static_str("grp")])
                    } else {
                        FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("grp"))
                    };
                    let ResponseKind::FindCoordinator(r) =
                        c.send(api, v, &RequestKind::FindCoordinator(req)).await
                    else {
                        panic!()
                    };
                    let port = if v >= 4 {
                        r.coordinators[0].port
                    } else {
                        r.port
                    };
                    assert_eq!(port, i32::from(addr.port()), "{what}");
                }
                ApiKey::JoinGroup => {
                    // A fresh group per version; a v4+ join first gets MEMBER_ID_REQUIRED.
                    let group = format!("join-v{v}");
                    let join = |member: &str| {
                        JoinGroupRequest::default()
                            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                            .with_session_timeout_ms(10_000)
                            .with_rebalance_timeout_ms(10_000)
                            .with_member_id(StrBytes::from_string(member.to_string()))
                            .with_protocol_type(StrBytes::from_static_str("consumer"))
                            .with_protocols(vec![JoinGroupRequestProtocol::default()
                                .with_name(StrBytes::from_static_str("range"))
                                .with_metadata(Bytes::from_static(b"m"))])
                    };
                    let ResponseKind::JoinGroup(r) =
                        c.send(api, v, &RequestKind::JoinGroup(join(""))).await
                    else {
                        panic!()
                    };
                    let r = if v >= 4 {
                        assert_eq!(r.error_code, 79, "{what}: MEMBER_ID_REQUIRED");
                        let ResponseKind::JoinGroup(r) = c
                            .send(api, v, &RequestKind::JoinGroup(join(r.member_id.as_str())))
                            .await
                        else {
                            panic!()
                        };
                        r
                    } else {
                        r
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    assert_eq!(r.generation_id, 1, "{what}");
                    assert_eq!(r.leader, r.member_id, "{what}: a lone member leads");
                    // Sync, heartbeat, commit and leave at matching versions, on this group.
                    let member = r.member_id.clone();
                    let sv = v.min(5);
                    let sync = SyncGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                        .with_generation_id(1)
                        .with_member_id(member.clone())
                        .with_protocol_type(if sv >= 5 {
                            Some(StrBytes::from_static_str("consumer"))
                        } else {
                            None
                        })
                        .with_protocol_name(if sv >= 5 {
                            Some(StrBytes::from_static_str("range"))
                        } else {
                            None
                        })
                        .with_assignments(vec![SyncGroupRequestAssignment::default()
                            .with_member_id(member.clone())
                            .with_assignment(Bytes::from_static(b"a"))]);
                    let ResponseKind::SyncGroup(s) = c
                        .send(ApiKey::SyncGroup, sv, &RequestKind::SyncGroup(sync))
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(
                        (s.error_code, s.assignment.as_ref()),
                        (0, &b"a"[..]),
                        "{what}: SyncGroup v{sv}"
                    );
                    let hv = v.min(4);
                    let hb = HeartbeatRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                        .with_generation_id(1)
                        .with_member_id(member.clone());
                    let ResponseKind::Heartbeat(h) = c
                        .send(ApiKey::Heartbeat, hv, &RequestKind::Heartbeat(hb))
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(h.error_code, 0, "{what}: Heartbeat v{hv}");
                    let cv = v.clamp(2, 9);
                    let commit = OffsetCommitRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                        .with_generation_id_or_member_epoch(1)
                        .with_member_id(member.clone())
                        .with_topics(vec![OffsetCommitRequestTopic::default()
                            .with_name(topic("t"))
                            .with_partitions(vec![OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)])]);
                    let ResponseKind::OffsetCommit(oc) = c
                        .send(ApiKey::OffsetCommit, cv, &RequestKind::OffsetCommit(commit))
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(
                        oc.topics[0].partitions[0].error_code, 0,
                        "{what}: OffsetCommit v{cv}"
                    );
                    let lv = v.min(5);
                    let leave = if lv >= 3 {
                        LeaveGroupRequest::default()
                            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                            .with_members(vec![
                                MemberIdentity::default().with_member_id(member.clone())
                            ])
                    } else {
                        LeaveGroupRequest::default()
                            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                            .with_member_id(member.clone())
                    };
                    let ResponseKind::LeaveGroup(l) = c
                        .send(ApiKey::LeaveGroup, lv, &RequestKind::LeaveGroup(leave))
                        .await
                    else {
                        panic!()
                    };
                    let error = if lv >= 3 {
                        l.members[0].error_code
                    } else {
                        l.error_code
                    };
                    assert_eq!(error, 0, "{what}: LeaveGroup v{lv}");
                }
                ApiKey::SyncGroup
                | ApiKey::Heartbeat
                | ApiKey::LeaveGroup
                | ApiKey::OffsetCommit => {
                    // Exercised at every version inside the JoinGroup walk; make sure that walk
                    // reaches every version of these too.
                    assert!(v <= 9, "{what}: beyond the JoinGroup walk");
                }
                ApiKey::OffsetFetch => {
                    let req = if v >= 8 {
                        OffsetFetchRequest::default().with_groups(vec![
                            OffsetFetchRequestGroup::default()
                                .with_group_id(GroupId(StrBytes::from_static_str("join-v9")))
                                .with_topics(None),
                        ])
                    } else {
                        OffsetFetchRequest::default()
                            .with_group_id(GroupId(StrBytes::from_static_str("join-v9")))
                            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                                .with_name(topic("t"))
                                .with_partition_indexes(vec![0, 1])]))
                    };
                    let ResponseKind::OffsetFetch(r) =
                        c.send(api, v, &RequestKind::OffsetFetch(req)).await
                    else {
                        panic!()
                    };
                    let offsets: Vec<i64> = if v >= 8 {
                        r.groups[0].topics[0]
                            .partitions
                            .iter()
                            .map(|p| p.committed_offset)
                            .collect()
                    } else {
                        r.topics[0]
                            .partitions
                            .iter()
                            .map(|p| p.committed_offset)
                            .collect()
                    };
                    assert_eq!(offsets[0], 1, "{what}");
                    if v < 8 {
                        assert_eq!(offsets[1], -1, "{what}: nothing committed for partition 1");
                    }
                }
                ApiKey::OffsetDelete => {
                    let req = OffsetDeleteRequest::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("join-v8")))
                        .with_topics(vec![OffsetDeleteRequestTopic::default()
                            .with_name(topic("t"))
                            .with_partitions(vec![
                                OffsetDeleteRequestPartition::default().with_partition_index(0)
                            ])]);
                    let ResponseKind::OffsetDelete(r) =
                        c.send(api, v, &RequestKind::OffsetDelete(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(
                        (r.error_code, r.topics[0].partitions[0].error_code),
                        (0, 0),
                        "{what}"
                    );
                }
                ApiKey::ListGroups => {
                    let ResponseKind::ListGroups(r) = c
                        .send(
                            api,
                            v,
                            &RequestKind::ListGroups(ListGroupsRequest::default()),
                        )
                        .await
                    else {
                        panic!()
                    };
                    assert!(
                        r.groups.iter().any(|g| g.group_id.0.as_str() == "join-v9"),
                        "{what}"
                    );
                }
                ApiKey::DescribeGroups => {
                    let req = DescribeGroupsRequest::default().with_groups(vec![
                        GroupId(StrBytes::from_static_str("join-v9")),
                        GroupId(StrBytes::from_static_str("nope")),
                    ]);
                    let ResponseKind::DescribeGroups(r) =
                        c.send(api, v, &RequestKind::DescribeGroups(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.groups[0].group_state.as_str(), "Empty", "{what}");
                    assert_eq!(r.groups[1].group_state.as_str(), "Dead", "{what}");
                }
                ApiKey::DeleteGroups => {
                    let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(
                        StrBytes::from_string(format!("join-v{v}")),
                    )]);
                    let ResponseKind::DeleteGroups(r) =
                        c.send(api, v, &RequestKind::DeleteGroups(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.results[0].error_code, 0, "{what}");
                }
                ApiKey::ConsumerGroupHeartbeat => {
                    // v0: the coordinator names the member; v1: the client does.
                    let member = if v >= 1 {
                        "member-cg".to_string()
                    } else {
                        String::new()
                    };
                    let join = ConsumerGroupHeartbeatRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(format!("cg-v{v}"))))
                        .with_member_id(StrBytes::from_string(member))
                        .with_member_epoch(0)
                        .with_rebalance_timeout_ms(30_000)
                        .with_subscribed_topic_names(Some(vec![topic("t")]))
                        .with_topic_partitions(Some(Vec::new()));
                    let ResponseKind::ConsumerGroupHeartbeat(r) = c
                        .send(api, v, &RequestKind::ConsumerGroupHeartbeat(join))
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!((r.error_code, r.member_epoch), (0, 1), "{what}: {r:?}");
                    assert!(r.heartbeat_interval_ms > 0, "{what}");
                    let assignment = r.assignment.expect("a joining member gets its assignment");
                    assert_eq!(assignment.topic_partitions.len(), 1, "{what}");
                    assert_eq!(assignment.topic_partitions[0].topic_id, topic_id, "{what}");
                    // The only member gets every partition of `t` (grown by CreatePartitions).
                    let partitions = &assignment.topic_partitions[0].partitions;
                    assert!(partitions.len() >= 2, "{what}");
                    assert!(
                        partitions.iter().copied().eq(0..partitions.len() as i32),
                        "{what}: {partitions:?}"
                    );
                    let member_id = r.member_id.expect("the member id");
                    let beat = ConsumerGroupHeartbeatRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(format!("cg-v{v}"))))
                        .with_member_id(member_id)
                        .with_member_epoch(5)
                        .with_rebalance_timeout_ms(-1);
                    let ResponseKind::ConsumerGroupHeartbeat(r) = c
                        .send(api, v, &RequestKind::ConsumerGroupHeartbeat(beat))
                        .await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 110, "{what}: FENCED_MEMBER_EPOCH");
                }
                ApiKey::ConsumerGroupDescribe => {
                    let req = ConsumerGroupDescribeRequest::default().with_group_ids(vec![
                        GroupId(StrBytes::from_static_str("cg-v1")),
                        GroupId(StrBytes::from_static_str("nope")),
                    ]);
                    let ResponseKind::ConsumerGroupDescribe(r) = c
                        .send(api, v, &RequestKind::ConsumerGroupDescribe(req))
                        .await
                    else {
                        panic!()
                    };
                    let g = &r.groups[0];
                    assert_eq!(
                        (
                            g.error_code,
                            g.group_state.as_str(),
                            g.assignor_name.as_str()
                        ),
                        (0, "Stable", "uniform"),
                        "{what}"
                    );
                    assert_eq!(g.members.len(), 1, "{what}");
                    let a = &g.members[0].assignment.topic_partitions;
                    assert_eq!(a[0].topic_name.0.as_str(), "t", "{what}");
                    assert_eq!(a[0].partitions.first(), Some(&0), "{what}");
                    assert_eq!(r.groups[1].error_code, 69, "{what}: GROUP_ID_NOT_FOUND");
                }
                ApiKey::AddPartitionsToTxn if v >= 4 => {
                    use kafka_protocol::messages::add_partitions_to_txn_request::{
                        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
                    };
                    // What brokers send: a verify-only check, and a batched add (transactions
                    // version 2, refused). No __transaction_state: nothing is coordinated here.
                    let txn = |id: &'static str, verify_only: bool| {
                        AddPartitionsToTxnTransaction::default()
                            .with_transactional_id(TransactionalId(StrBytes::from_static_str(id)))
                            .with_producer_id(ProducerId(1))
                            .with_verify_only(verify_only)
                            .with_topics(vec![AddPartitionsToTxnTopic::default()
                                .with_name(topic("t"))
                                .with_partitions(vec![0, 1])])
                    };
                    let req = AddPartitionsToTxnRequest::default()
                        .with_transactions(vec![txn("verify", true), txn("add", false)]);
                    let ResponseKind::AddPartitionsToTxn(r) =
                        c.send(api, v, &RequestKind::AddPartitionsToTxn(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    let codes: Vec<String> = r
                        .results_by_transaction
                        .iter()
                        .flat_map(|t| {
                            t.topic_results.iter().flat_map(move |tr| {
                                tr.results_by_partition.iter().map(move |p| {
                                    format!(
                                        "{} {}-{}: {}",
                                        t.transactional_id.0.as_str(),
                                        tr.name.0.as_str(),
                                        p.partition_index,
                                        p.partition_error_code
                                    )
                                })
                            })
                        })
                        .collect();
                    assert_eq!(
                        codes,
                        [
                            "verify t-0: 16",
                            "verify t-1: 16",
                            "add t-0: 42",
                            "add t-1: 42"
                        ],
                        "{what}: NOT_COORDINATOR, INVALID_REQUEST"
                    );
                }
                ApiKey::AddPartitionsToTxn => {
                    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
                    // A partition that does not exist: refused before the coordinator is asked.
                    let req = AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(TransactionalId(
                            StrBytes::from_static_str("txn"),
                        ))
                        .with_v3_and_below_producer_id(ProducerId(1))
                        .with_v3_and_below_producer_epoch(0)
                        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                            .with_name(topic("missing"))
                            .with_partitions(vec![0])]);
                    let ResponseKind::AddPartitionsToTxn(r) =
                        c.send(api, v, &RequestKind::AddPartitionsToTxn(req)).await
                    else {
                        panic!()
                    };
                    let t = &r.results_by_topic_v3_and_below[0];
                    assert_eq!(t.name.0.as_str(), "missing", "{what}");
                    assert_eq!(
                        t.results_by_partition[0].partition_error_code, 3,
                        "{what}: UNKNOWN_TOPIC_OR_PARTITION"
                    );
                }
                ApiKey::AddOffsetsToTxn | ApiKey::EndTxn => {
                    // No FindCoordinator for a transactional id came: __transaction_state does
                    // not exist, so this broker coordinates no transaction.
                    let code = if api == ApiKey::EndTxn {
                        let req = EndTxnRequest::default()
                            .with_transactional_id(TransactionalId(StrBytes::from_static_str(
                                "txn",
                            )))
                            .with_producer_id(ProducerId(1))
                            .with_committed(true);
                        let ResponseKind::EndTxn(r) =
                            c.send(api, v, &RequestKind::EndTxn(req)).await
                        else {
                            panic!()
                        };
                        r.error_code
                    } else {
                        let req = AddOffsetsToTxnRequest::default()
                            .with_transactional_id(TransactionalId(StrBytes::from_static_str(
                                "txn",
                            )))
                            .with_producer_id(ProducerId(1))
                            .with_group_id(GroupId(StrBytes::from_static_str("grp")));
                        let ResponseKind::AddOffsetsToTxn(r) =
                            c.send(api, v, &RequestKind::AddOffsetsToTxn(req)).await
                        else {
                            panic!()
                        };
                        r.error_code
                    };
                    assert_eq!(code, 16, "{what}: NOT_COORDINATOR");
                }
                ApiKey::TxnOffsetCommit => {
                    use kafka_protocol::messages::txn_offset_commit_request::{
                        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
                    };
                    // No __transaction_state: no transaction exists, so none can hold these
                    // offsets.
                    let req = TxnOffsetCommitRequest::default()
                        .with_transactional_id(TransactionalId(StrBytes::from_static_str("txn")))
                        .with_group_id(GroupId(StrBytes::from_static_str("txn-grp")))
                        .with_producer_id(ProducerId(77))
                        .with_producer_epoch(0)
                        .with_generation_id(-1)
                        .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                            .with_name(topic("t"))
                            .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)])]);
                    let ResponseKind::TxnOffsetCommit(r) =
                        c.send(api, v, &RequestKind::TxnOffsetCommit(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(
                        r.topics[0].partitions[0].error_code, 49,
                        "{what}: INVALID_PRODUCER_ID_MAPPING"
                    );
                }
                ApiKey::ListTransactions => {
                    let req = ListTransactionsRequest::default()
                        .with_state_filters(vec![
                            StrBytes::from_static_str("Ongoing"),
                            StrBytes::from_static_str("Bogus"),
                        ])
                        .with_duration_filter(-1);
                    let ResponseKind::ListTransactions(r) =
                        c.send(api, v, &RequestKind::ListTransactions(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0, "{what}");
                    assert_eq!(r.unknown_state_filters.len(), 1, "{what}");
                    assert_eq!(r.unknown_state_filters[0].as_str(), "Bogus", "{what}");
                    if v >= 2 {
                        let req = ListTransactionsRequest::default()
                            .with_duration_filter(-1)
                            .with_transactional_id_pattern(Some(StrBytes::from_static_str("(")));
                        let ResponseKind::ListTransactions(r) =
                            c.send(api, v, &RequestKind::ListTransactions(req)).await
                        else {
                            panic!()
                        };
                        assert_eq!(r.error_code, 128, "{what}: INVALID_REGULAR_EXPRESSION");
                    }
                }
                ApiKey::DescribeTransactions => {
                    let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![
                        TransactionalId(StrBytes::from_static_str("nope")),
                    ]);
                    let ResponseKind::DescribeTransactions(r) = c
                        .send(api, v, &RequestKind::DescribeTransactions(req))
                        .await
                    else {
                        panic!()
                    };
                    // No __transaction_state: this broker coordinates no transactional id.
                    assert_eq!(
                        r.transaction_states[0].error_code, 16,
                        "{what}: NOT_COORDINATOR"
                    );
                }
                ApiKey::DescribeProducers => {
                    use kafka_protocol::messages::describe_producers_request::TopicRequest;
                    let req = DescribeProducersRequest::default().with_topics(vec![
                        TopicRequest::default()
                            .with_name(topic("t"))
                            .with_partition_indexes(vec![0]),
                        TopicRequest::default()
                            .with_name(topic("missing"))
                            .with_partition_indexes(vec![0]),
                    ]);
                    let ResponseKind::DescribeProducers(r) =
                        c.send(api, v, &RequestKind::DescribeProducers(req)).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "{what}");
                    assert_eq!(
                        r.topics[1].partitions[0].error_code, 3,
                        "{what}: UNKNOWN_TOPIC_OR_PARTITION"
                    );
                }
                ApiKey::WriteTxnMarkers => {
                    use kafka_protocol::messages::write_txn_markers_request::{
                        WritableTxnMarker, WritableTxnMarkerTopic,
                    };
                    let req = WriteTxnMarkersRequest::default().with_markers(vec![
                        WritableTxnMarker::default()
                            .with_producer_id(ProducerId(999))
                            .with_producer_epoch(0)
                            .with_transaction_result(false)
                            .with_topics(vec![
                                WritableTxnMarkerTopic::default()
                                    .with_name(topic("t"))
                                    .with_partition_indexes(vec![0]),
                                WritableTxnMarkerTopic::default()
                                    .with_name(topic("missing"))
                                    .with_partition_indexes(vec![0]),
                            ]),
                    ]);
                    let ResponseKind::WriteTxnMarkers(r) =
                        c.send(api, v, &RequestKind::WriteTxnMarkers(req)).await
                    else {
                        panic!()
                    };
                    let topics = &r.markers[0].topics;
                    assert_eq!(topics[0].partitions[0].error_code, 0, "{what}");
                    assert_eq!(
                        topics[1].partitions[0].error_code, 3,
                        "{what}: UNKNOWN_TOPIC_OR_PARTITION"
                    );
                }
                other => {
                    panic!("{other:?} is advertised but this test does not exercise it: add it")
                }
            }
        }
    }
}

#[tokio::test]
async fn an_unknown_api_versions_version_gets_the_v0_fallback() {
    let (addr, _dir, _stop) = start().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // ApiVersions v99, correlation id 7, header v2 with a client id and no tagged fields.
    let mut req = BytesMut::new();
    req.put_i16(18);
    req.put_i16(99);
    req.put_i32(7);
    req.put_i16(1);
    req.put_u8(b'x');
    req.put_u8(0);
    let mut framed = BytesMut::new();
    framed.put_i32(req.len() as i32);
    framed.extend_from_slice(&req);
    stream.write_all(&framed).await.unwrap();
    let len = stream.read_i32().await.unwrap();
    let mut frame = vec![0u8; len as usize];
    stream.read_exact(&mut frame).await.unwrap();
    let mut frame = Bytes::from(frame);
    assert_eq!(frame.get_i32(), 7);
    let r = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(r.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == 18 && k.max_version >= 3));
}

#[test]
fn the_test_batch_is_one_batch() {
    let b = batch(&["a", "b"]);
    let v = caudal_storage::validate_batch(&b).unwrap();
    assert_eq!((v.total_len, v.records_count), (b.len(), 2));
}
