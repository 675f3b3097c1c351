//! The group coordinator follows the leadership of `__consumer_offsets` partitions: a real
//! broker over TCP whose shard for a group is given up and taken back, as the image follower
//! does when leadership moves, answers the group APIs NOT_COORDINATOR, then
//! COORDINATOR_LOAD_IN_PROGRESS while the shard loads, then normally.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use caudal_broker::coordinator_runtime::OFFSETS_TOPIC;
use caudal_broker::replica_manager::tp;
use caudal_broker::{Broker, BrokerConfig, Server};
use caudal_coordinator::partition_for;
use caudal_protocol::kafka_protocol;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NOT_COORDINATOR: i16 = 16;
const LOAD_IN_PROGRESS: i16 = 14;

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

    async fn send(&mut self, api: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("shards-test")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).await.unwrap();
        let len = self.stream.read_i32().await.unwrap();
        let mut frame = vec![0u8; len as usize];
        self.stream.read_exact(&mut frame).await.unwrap();
        let mut frame = Bytes::from(frame);
        ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        let body = ResponseKind::decode(api, &mut frame, version).unwrap();
        assert_eq!(frame.remaining(), 0, "{api:?} v{version}: bytes left");
        body
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn join(group: &str) -> RequestKind {
    RequestKind::JoinGroup(
        JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(b"m"))]),
    )
}

fn offset_fetch(group: &str) -> RequestKind {
    RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default().with_group_id(GroupId(s(group))),
    ]))
}

async fn start() -> (
    SocketAddr,
    Arc<Broker>,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    // A first join waits this long for more members: long enough to be given up meanwhile.
    config
        .set("group.initial.rebalance.delay.ms", "60000")
        .unwrap();
    config.set("offsets.topic.num.partitions", "5").unwrap();
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let broker = server.broker().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, broker, dir, stop)
}

async fn group_state(c: &mut Client, group: &str) -> String {
    let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]);
    let ResponseKind::DescribeGroups(r) = c
        .send(ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(req))
        .await
    else {
        panic!()
    };
    r.groups[0].group_state.to_string()
}

#[tokio::test]
async fn group_apis_follow_the_shard_of_the_groups_partition() {
    let (addr, broker, _dir, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    let group = "shard-test";
    let offsets = broker.topics.get(OFFSETS_TOPIC).unwrap();
    assert_eq!(offsets.partition_count, 5);
    let index = partition_for(group, 5);
    broker
        .topics
        .create("t", 1, Default::default(), false)
        .await
        .unwrap();

    // FindCoordinator names this broker at the listener the client came in on.
    let ResponseKind::FindCoordinator(r) = c
        .send(
            ApiKey::FindCoordinator,
            4,
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default().with_coordinator_keys(vec![s(group)]),
            ),
        )
        .await
    else {
        panic!()
    };
    let found = &r.coordinators[0];
    assert_eq!(found.error_code, 0, "{found:?}");
    assert_eq!(found.node_id.0, broker.config.node_id);
    assert_eq!(found.port, i32::from(addr.port()));

    // A join waits for more members; the shard is given up meanwhile.
    let mut joiner = Client::connect(addr).await;
    let waiting = tokio::spawn(async move { joiner.send(ApiKey::JoinGroup, 3, join(group)).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        while group_state(&mut c, group).await != "PreparingRebalance" {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the join waiting in PreparingRebalance within 10 s");
    broker.groups.resign(index);
    let ResponseKind::JoinGroup(r) = waiting.await.unwrap() else {
        panic!()
    };
    assert_eq!(r.error_code, NOT_COORDINATOR, "the waiting join: {r:?}");

    // Every group API now answers NOT_COORDINATOR, per group where a request has several.
    let not_coordinator = not_coordinator_errors(&mut c, group).await;
    for (api, error) in &not_coordinator {
        assert_eq!(*error, NOT_COORDINATOR, "{api}");
    }
    let ResponseKind::ListGroups(r) = c
        .send(
            ApiKey::ListGroups,
            4,
            RequestKind::ListGroups(ListGroupsRequest::default()),
        )
        .await
    else {
        panic!()
    };
    assert!(
        r.groups.iter().all(|g| g.group_id.0.as_str() != group),
        "a shard given up is not listed: {r:?}"
    );

    // Taken back: loading (held here by holding its log), then active.
    let partition = broker.replicas.get(tp(offsets.id, index)).unwrap();
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let held = partition.clone();
    let holder = std::thread::spawn(move || {
        let _log = held.log();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
    });
    locked.recv().unwrap();
    broker.groups.elect(index, partition);
    let ResponseKind::OffsetFetch(r) = c.send(ApiKey::OffsetFetch, 8, offset_fetch(group)).await
    else {
        panic!()
    };
    assert_eq!(
        r.groups[0].error_code, LOAD_IN_PROGRESS,
        "OffsetFetch v8 while loading"
    );
    let ResponseKind::JoinGroup(r) = c.send(ApiKey::JoinGroup, 3, join(group)).await else {
        panic!()
    };
    assert_eq!(r.error_code, LOAD_IN_PROGRESS, "JoinGroup while loading");
    let ResponseKind::ListGroups(r) = c
        .send(
            ApiKey::ListGroups,
            4,
            RequestKind::ListGroups(ListGroupsRequest::default()),
        )
        .await
    else {
        panic!()
    };
    assert_eq!(
        r.error_code, LOAD_IN_PROGRESS,
        "ListGroups while a shard loads"
    );
    release.send(()).unwrap();
    holder.join().unwrap();
    broker.groups.wait_loaded().await.unwrap();
    let ResponseKind::OffsetFetch(r) = c.send(ApiKey::OffsetFetch, 8, offset_fetch(group)).await
    else {
        panic!()
    };
    assert_eq!(r.groups[0].error_code, 0, "OffsetFetch once loaded");
}

/// The error each group API answers for `group`.
async fn not_coordinator_errors(c: &mut Client, group: &str) -> Vec<(&'static str, i16)> {
    let g = || GroupId(s(group));
    let mut out = Vec::new();
    let ResponseKind::JoinGroup(r) = c.send(ApiKey::JoinGroup, 9, join(group)).await else {
        panic!()
    };
    out.push(("JoinGroup", r.error_code));
    let ResponseKind::SyncGroup(r) = c
        .send(
            ApiKey::SyncGroup,
            5,
            RequestKind::SyncGroup(
                SyncGroupRequest::default()
                    .with_group_id(g())
                    .with_member_id(s("m"))
                    .with_generation_id(1),
            ),
        )
        .await
    else {
        panic!()
    };
    out.push(("SyncGroup", r.error_code));
    let ResponseKind::Heartbeat(r) = c
        .send(
            ApiKey::Heartbeat,
            4,
            RequestKind::Heartbeat(HeartbeatRequest::default().with_group_id(g())),
        )
        .await
    else {
        panic!()
    };
    out.push(("Heartbeat", r.error_code));
    let ResponseKind::LeaveGroup(r) = c
        .send(
            ApiKey::LeaveGroup,
            5,
            RequestKind::LeaveGroup(LeaveGroupRequest::default().with_group_id(g())),
        )
        .await
    else {
        panic!()
    };
    out.push(("LeaveGroup", r.error_code));
    let ResponseKind::OffsetCommit(r) = c
        .send(
            ApiKey::OffsetCommit,
            8,
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(g())
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default().with_committed_offset(1)
                        ])]),
            ),
        )
        .await
    else {
        panic!()
    };
    out.push(("OffsetCommit", r.topics[0].partitions[0].error_code));
    let ResponseKind::OffsetFetch(r) = c.send(ApiKey::OffsetFetch, 8, offset_fetch(group)).await
    else {
        panic!()
    };
    out.push(("OffsetFetch v8", r.groups[0].error_code));
    let ResponseKind::OffsetFetch(r) = c
        .send(
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_group_id(g())),
        )
        .await
    else {
        panic!()
    };
    out.push(("OffsetFetch v7", r.error_code));
    let ResponseKind::OffsetDelete(r) = c
        .send(
            ApiKey::OffsetDelete,
            0,
            RequestKind::OffsetDelete(OffsetDeleteRequest::default().with_group_id(g())),
        )
        .await
    else {
        panic!()
    };
    out.push(("OffsetDelete", r.error_code));
    let ResponseKind::DescribeGroups(r) = c
        .send(
            ApiKey::DescribeGroups,
            5,
            RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![g()])),
        )
        .await
    else {
        panic!()
    };
    out.push(("DescribeGroups", r.groups[0].error_code));
    let ResponseKind::DeleteGroups(r) = c
        .send(
            ApiKey::DeleteGroups,
            2,
            RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![g()])),
        )
        .await
    else {
        panic!()
    };
    out.push(("DeleteGroups", r.results[0].error_code));
    let ResponseKind::ConsumerGroupHeartbeat(r) = c
        .send(
            ApiKey::ConsumerGroupHeartbeat,
            0,
            RequestKind::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatRequest::default()
                    .with_group_id(g())
                    .with_rebalance_timeout_ms(10_000)
                    .with_subscribed_topic_names(Some(vec![TopicName(s("t"))]))
                    .with_topic_partitions(Some(vec![])),
            ),
        )
        .await
    else {
        panic!()
    };
    out.push(("ConsumerGroupHeartbeat", r.error_code));
    let ResponseKind::ConsumerGroupDescribe(r) = c
        .send(
            ApiKey::ConsumerGroupDescribe,
            0,
            RequestKind::ConsumerGroupDescribe(
                ConsumerGroupDescribeRequest::default().with_group_ids(vec![g()]),
            ),
        )
        .await
    else {
        panic!()
    };
    out.push(("ConsumerGroupDescribe", r.groups[0].error_code));
    out
}
