//! Three nodes over real loopback TCP: each listens with a tiny accept loop that hands frames
//! to its [`RaftRpcServer`], and reaches the others through [`TcpPeers`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use super::entry::{StoredLogId, StoredVote};
use super::wire::{
    decode_request_header, encode_response_frame, read_frame, to_json, WireAddLearnerResponse,
    WireOrigin, WireVoteRequest,
};
use super::{
    MetadataLogConfig, Quorum, QuorumConfig, QuorumError, QuorumNode, RaftRpcError, RaftRpcServer,
    TcpPeers, RAFT_APPEND_ENTRIES, RAFT_VOTE,
};
use crate::records::{EntryRecords, MetadataRecord};
use crate::MetadataImage;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(15);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(node_id: u64) -> QuorumConfig {
    QuorumConfig {
        election_timeout_ms: 500,
        heartbeat_interval_ms: 100,
        snapshot_after_entries: None,
        entries_kept_below_snapshot: 0,
        log: MetadataLogConfig {
            segment_bytes: 2048,
            ..MetadataLogConfig::default()
        },
        ..QuorumConfig::new(node_id)
    }
}

fn topic(name: &str) -> EntryRecords {
    EntryRecords(vec![MetadataRecord::Topic {
        v: 0,
        name: name.to_string(),
        topic_id: Uuid::new_v4(),
    }])
}

/// Answers quorum RPCs on every connection `listener` accepts until the task is aborted,
/// which drops the listener and every connection with it.
async fn accept_loop(listener: TcpListener, server: RaftRpcServer) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let server = server.clone();
        connections.spawn(async move {
            if let Err(e) = serve_connection(server, stream).await {
                tracing::debug!(error = %e, "closing a quorum connection");
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

struct Node {
    quorum: Quorum,
    peers: TcpPeers,
    listener: JoinHandle<()>,
}

struct Cluster {
    dirs: BTreeMap<u64, TempDir>,
    addresses: BTreeMap<u64, SocketAddr>,
    /// The nodes of `controller.quorum.voters`; the others are learners.
    voters: BTreeSet<u64>,
    nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        init_logs();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
            listeners.insert(id, listener);
        }
        let mut cluster = Cluster {
            dirs: (1..=n)
                .map(|id| (id, tempfile::tempdir().expect("a temporary directory")))
                .collect(),
            addresses: listeners
                .iter()
                .map(|(id, l)| (*id, l.local_addr().expect("an address")))
                .collect(),
            voters: (1..=n).collect(),
            nodes: BTreeMap::new(),
        };
        for (id, listener) in listeners {
            cluster.start_node(id, listener).await;
        }
        let voters: BTreeSet<u64> = (1..=n).collect();
        for id in 1..=n {
            let initialised = cluster.node(id).initialize_if_lowest(&voters).await;
            assert_eq!(
                initialised.expect("initialising does not fail"),
                id == 1,
                "only the lowest-id voter initialises"
            );
        }
        cluster
    }

    async fn start_node(&mut self, id: u64, listener: TcpListener) {
        let voters = self
            .addresses
            .iter()
            .filter(|(id, _)| self.voters.contains(id))
            .map(|(id, a)| (*id, a.to_string()))
            .collect();
        let peers = TcpPeers::new(id, voters, None);
        let quorum = Quorum::start_over_tcp(&config(id), self.dirs[&id].path(), peers.clone())
            .await
            .expect("the node starts");
        let listener = tokio::spawn(accept_loop(listener, quorum.rpc_server(None)));
        self.nodes.insert(
            id,
            Node {
                quorum,
                peers,
                listener,
            },
        );
    }

    /// Starts node `id`, not a voter, and has it join as a learner at its listener's address.
    async fn add_learner(&mut self, id: u64) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        self.addresses
            .insert(id, listener.local_addr().expect("an address"));
        self.dirs
            .insert(id, tempfile::tempdir().expect("a temporary directory"));
        self.start_node(id, listener).await;
        self.join(id).await;
    }

    async fn join(&self, id: u64) {
        let address = self.addresses[&id].to_string();
        self.node(id)
            .join_as_learner(&address, WAIT)
            .await
            .unwrap_or_else(|e| panic!("node {id} joins as a learner: {e}"));
    }

    /// Starts a stopped node again on its old address.
    async fn restart_node(&mut self, id: u64) {
        let listener = TcpListener::bind(self.addresses[&id])
            .await
            .expect("the node's address is free again");
        self.start_node(id, listener).await;
    }

    /// Stops listening, then stops Raft: the node is gone from the network.
    async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("a running node");
        node.listener.abort();
        let _ = node.listener.await;
        node.quorum
            .shutdown()
            .await
            .expect("the node stops cleanly");
    }

    fn node(&self, id: u64) -> &Quorum {
        &self.nodes[&id].quorum
    }

    /// Waits until every node of `among` follows one leader, itself one of `among`.
    async fn leader(&self, among: &[u64]) -> u64 {
        let agreed = async {
            loop {
                let statuses: Vec<_> = among.iter().map(|id| self.node(*id).status()).collect();
                if let Some(leader) = statuses[0].leader {
                    let same = statuses
                        .iter()
                        .all(|s| s.leader == Some(leader) && s.term == statuses[0].term);
                    if same && among.contains(&leader) && self.node(leader).status().is_leader {
                        return leader;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(WAIT, agreed).await {
            Ok(leader) => leader,
            Err(_) => {
                let statuses: Vec<_> = among.iter().map(|id| self.node(*id).status()).collect();
                panic!("no leader agreed among {among:?} within {WAIT:?}: {statuses:#?}")
            }
        }
    }

    async fn image_where(
        &self,
        id: u64,
        what: &str,
        check: impl Fn(&MetadataImage) -> bool,
    ) -> Arc<MetadataImage> {
        let mut images = self.node(id).images();
        let found = tokio::time::timeout(WAIT, images.wait_for(|image| check(image))).await;
        match found {
            Ok(Ok(image)) => image.clone(),
            _ => panic!("node {id} never applied {what} within {WAIT:?}"),
        }
    }

    async fn has_topic(&self, id: u64, name: &str) {
        self.image_where(id, &format!("topic {name}"), |image| {
            image.topic_by_name(name).is_some()
        })
        .await;
    }

    async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}

/// Polls `check` until it holds, for at most [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tcp_replicate_fail_over_and_catch_up() {
    let mut cluster = Cluster::start(3).await;
    let all = [1, 2, 3];
    let leader = cluster.leader(&all).await;
    // From here on every node knows the cluster id from its image, stamps it on what it sends
    // and checks it on what it receives.
    cluster
        .node(leader)
        .propose(EntryRecords(vec![MetadataRecord::ClusterId {
            v: 0,
            cluster_id: "tcp-test".to_string(),
        }]))
        .await
        .expect("the leader takes the cluster id");
    let mut last = None;
    for i in 0..3 {
        let applied = cluster
            .node(leader)
            .propose(topic(&format!("before-{i}")))
            .await
            .expect("the leader takes a proposal");
        last = Some(applied.index);
    }
    for id in all {
        cluster.has_topic(id, "before-2").await;
        assert_eq!(cluster.node(id).image().cluster_id(), Some("tcp-test"));
    }

    // The leader heard every follower acknowledge everything it had.
    let last = last.expect("three writes");
    let progress = cluster.nodes[&leader].peers.progress();
    let followers: Vec<u64> = all.iter().copied().filter(|&id| id != leader).collect();
    eventually("the leader records its followers caught up", || {
        followers.iter().all(|&id| {
            progress.get(id).is_some_and(|c| {
                c.matched_index >= Some(last) && c.last_caught_up_timestamp_ms.is_some()
            })
        })
    })
    .await;
    assert!(
        progress.get(leader).is_none(),
        "no progress for the leader itself"
    );

    // DescribeQuorum's view: the leader describes every voter with all it has; the
    // followers describe nothing (they answer NOT_LEADER_OR_FOLLOWER).
    let deadline = Instant::now() + WAIT;
    let described = loop {
        let d = cluster
            .node(leader)
            .describe(super::now_ms())
            .await
            .expect("the quorum runs")
            .expect("the leader describes the quorum");
        if d.voters.iter().all(|v| v.log_end_offset > Some(last)) && d.high_watermark > last {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the description never showed every voter caught up: {d:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(described.leader_id, leader);
    assert_eq!(described.leader_epoch, cluster.node(leader).status().term);
    assert_eq!(
        described
            .voters
            .iter()
            .map(|v| v.node_id)
            .collect::<Vec<_>>(),
        all.to_vec()
    );
    assert!(described.observers.is_empty(), "{described:#?}");
    for v in &described.voters {
        assert!(
            v.last_fetch_timestamp_ms.is_some() && v.last_caught_up_timestamp_ms.is_some(),
            "voter {} has no contact times: {described:#?}",
            v.node_id
        );
    }
    for &id in &followers {
        let d = cluster.node(id).describe(super::now_ms()).await;
        assert!(matches!(d, Ok(None)), "follower {id} described {d:?}");
    }

    // The leader goes away; the other two elect one of themselves within a few seconds.
    let lost_at = Instant::now();
    cluster.stop_node(leader).await;
    let new = cluster.leader(&followers).await;
    let failover = lost_at.elapsed();
    assert!(
        failover < Duration::from_secs(5),
        "electing a new leader took {failover:?}"
    );
    let image = cluster.node(new).image();
    for i in 0..3 {
        assert!(
            image.topic_by_name(&format!("before-{i}")).is_some(),
            "the new leader {new} lost before-{i}"
        );
    }
    cluster
        .node(new)
        .propose(topic("after"))
        .await
        .expect("the new leader takes a proposal");
    for &id in &followers {
        cluster.has_topic(id, "after").await;
    }

    // The old leader comes back on its address and catches up as a follower.
    cluster.restart_node(leader).await;
    cluster.has_topic(leader, "after").await;
    assert_eq!(
        cluster.leader(&all).await,
        new,
        "the cluster keeps its leader"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_follows_a_new_leader_and_rejoins_after_a_restart() {
    let mut cluster = Cluster::start(3).await;
    let voters = [1, 2, 3];
    let leader = cluster.leader(&voters).await;
    cluster
        .node(leader)
        .propose(EntryRecords(vec![MetadataRecord::ClusterId {
            v: 0,
            cluster_id: "tcp-test".to_string(),
        }]))
        .await
        .expect("the leader takes the cluster id");
    cluster
        .node(leader)
        .propose(topic("before-join"))
        .await
        .expect("the leader takes a proposal");

    // Node 4 is no voter: it asks to join, and gets the log from before it joined.
    cluster.add_learner(4).await;
    cluster.has_topic(4, "before-join").await;
    assert_eq!(cluster.node(4).image().cluster_id(), Some("tcp-test"));
    let membership = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    assert_eq!(
        membership.voter_ids().collect::<Vec<_>>(),
        voters,
        "the learner does not vote"
    );
    assert_eq!(
        membership.get_node(&4).and_then(|n| n.address.clone()),
        Some(cluster.addresses[&4].to_string()),
        "the leader reaches the learner at the address it gave"
    );
    // Asking again changes nothing (a broker-only node asks at every start).
    let entries = cluster.node(leader).status().last_log_index;
    cluster.join(4).await;
    assert_eq!(cluster.node(leader).status().last_log_index, entries);

    // The leader goes; the learner follows whichever voter leads next, without asking again.
    cluster.stop_node(leader).await;
    let others: Vec<u64> = voters.iter().copied().filter(|&id| id != leader).collect();
    let new = cluster.leader(&others).await;
    cluster
        .node(new)
        .propose(topic("after-failover"))
        .await
        .expect("the new leader takes a proposal");
    cluster.has_topic(4, "after-failover").await;
    eventually("the learner follows the new leader", || {
        cluster.node(4).status().leader == Some(new)
    })
    .await;
    assert!(!cluster.node(4).status().is_leader, "a learner never leads");

    // The learner restarts: it is a learner already, and catches up on what it missed.
    cluster.stop_node(4).await;
    cluster
        .node(new)
        .propose(topic("while-away"))
        .await
        .expect("the leader takes a proposal");
    cluster.restart_node(4).await;
    cluster.join(4).await;
    cluster.has_topic(4, "while-away").await;
    cluster.restart_node(leader).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_cannot_join_as_a_learner_and_followers_name_the_leader() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let address = cluster.addresses[&follower].to_string();
    let peers = &cluster.nodes[&follower].peers;
    // A follower names the leader.
    match peers.ask_to_join(follower, "127.0.0.1:1", WAIT).await {
        Ok(WireAddLearnerResponse::NotLeader { leader: named }) => assert_eq!(named, Some(leader)),
        other => panic!("a follower answered {other:?}"),
    }
    // The leader refuses to make a voter a learner.
    match peers.ask_to_join(leader, &address, WAIT).await {
        Ok(WireAddLearnerResponse::Refused { reason }) => {
            assert!(reason.contains("controller.quorum.voters"), "{reason}")
        }
        other => panic!("the leader answered {other:?}"),
    }
    // And an address that is none.
    let stranger = TcpPeers::new(
        9,
        cluster
            .addresses
            .iter()
            .map(|(id, a)| (*id, a.to_string()))
            .collect(),
        None,
    );
    for bad in ["", "no-port", "two words:1", &"h".repeat(300)] {
        match stranger.ask_to_join(leader, bad, WAIT).await {
            Ok(WireAddLearnerResponse::Refused { .. }) => {}
            other => panic!("address {bad:?} gave {other:?}"),
        }
    }
    // A voter's own join gives up with the leader's reason.
    match cluster.node(follower).join_as_learner(&address, WAIT).await {
        Err(QuorumError::Config(reason)) => assert!(reason.contains("voter"), "{reason}"),
        other => panic!("a voter joining as a learner gave {other:?}"),
    }
    cluster.shutdown().await;
}

/// A lone voter (node 1) of cluster `cluster-a`, listening on loopback.
async fn lone_voter(dir: &TempDir) -> (Quorum, RaftRpcServer) {
    init_logs();
    let quorum = Quorum::start_over_tcp(
        &config(1),
        dir.path(),
        TcpPeers::new(1, BTreeMap::new(), None),
    )
    .await
    .expect("the node starts");
    assert!(quorum.initialize(&BTreeSet::from([1])).await.unwrap());
    let mut statuses = quorum.client().statuses();
    tokio::time::timeout(WAIT, async {
        while !statuses.current().is_leader {
            statuses.changed().await.expect("the quorum runs");
        }
    })
    .await
    .expect("the lone voter leads");
    let server = quorum.rpc_server(Some("cluster-a".to_string()));
    (quorum, server)
}

fn vote_body(node_id: u64, cluster_id: Option<&str>) -> Bytes {
    let request = WireVoteRequest {
        origin: WireOrigin {
            node_id,
            cluster_id: cluster_id.map(str::to_string),
        },
        vote: StoredVote {
            term: 1,
            voted_for: Some(node_id),
            committed: false,
        },
        last_log_id: Some(StoredLogId { term: 1, index: 0 }),
    };
    Bytes::from(to_json("a vote request", &request).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_from_strangers_and_garbage_are_refused_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let (quorum, server) = lone_voter(&dir).await;

    // A member of this cluster is answered (a stale vote, not granted).
    let answer = server
        .handle(RAFT_VOTE, 0, vote_body(1, Some("cluster-a")))
        .await
        .expect("a member is answered");
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["vote_granted"], false, "{answer}");
    // So is one that does not know its cluster id yet.
    server
        .handle(RAFT_VOTE, 0, vote_body(1, None))
        .await
        .expect("a member without a cluster id is answered");

    match server
        .handle(RAFT_VOTE, 0, vote_body(7, Some("cluster-a")))
        .await
    {
        Err(RaftRpcError::UnknownSender { node_id: 7 }) => {}
        other => panic!("a node outside the membership was answered: {other:?}"),
    }
    match server
        .handle(RAFT_VOTE, 0, vote_body(1, Some("cluster-b")))
        .await
    {
        Err(RaftRpcError::OtherCluster { theirs, .. }) => assert_eq!(theirs, "cluster-b"),
        other => panic!("a node of another cluster was answered: {other:?}"),
    }
    match server.handle(RAFT_VOTE, 3, vote_body(1, None)).await {
        Err(RaftRpcError::UnsupportedVersion { api_version: 3, .. }) => {}
        other => panic!("an unknown version was answered: {other:?}"),
    }
    match server.handle(18, 0, vote_body(1, None)).await {
        Err(RaftRpcError::UnknownApiKey(18)) => {}
        other => panic!("ApiVersions was taken for a quorum RPC: {other:?}"),
    }
    for key in [RAFT_VOTE, RAFT_APPEND_ENTRIES, super::RAFT_INSTALL_SNAPSHOT] {
        for garbage in [
            &b""[..],
            b"\xff\x00garbage",
            b"{}",
            b"{\"origin\":1}",
            b"null",
        ] {
            match server.handle(key, 0, Bytes::from_static(garbage)).await {
                Err(RaftRpcError::Wire(_)) => {}
                other => panic!("garbage {garbage:?} for key {key} gave {other:?}"),
            }
        }
    }
    let small = server.clone().with_max_frame_bytes(16);
    assert!(matches!(
        small.handle(RAFT_VOTE, 0, vote_body(1, None)).await,
        Err(RaftRpcError::BodyTooLarge { .. })
    ));

    // Over a socket: garbage ends the connection with an error, and the server goes on.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepting = tokio::spawn({
        let server = server.clone();
        async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                results.push(serve_connection(server.clone(), stream).await);
            }
            results
        }
    });
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"\x00\x00\x00\x06garbag").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the server closes a garbage connection")
        .ok();
    assert!(rest.is_empty(), "garbage got an answer: {rest:?}");

    // A stranger's client sees the refusal as an unreachable peer.
    let mut stranger = TcpPeers::new(7, BTreeMap::from([(1, address.to_string())]), None);
    let mut client = stranger.new_client(1, &QuorumNode::default()).await;
    let vote = VoteRequest::new(
        StoredVote {
            term: 9,
            voted_for: Some(7),
            committed: false,
        }
        .to_raft(),
        None,
    );
    match client.vote(vote, RPCOption::new(WAIT)).await {
        Err(RPCError::Unreachable(_)) => {}
        other => panic!("a refused vote came back as {other:?}"),
    }
    let results = tokio::time::timeout(WAIT, accepting)
        .await
        .expect("both connections end")
        .unwrap();
    assert!(
        matches!(results[0], Err(RaftRpcError::Wire(_))),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(RaftRpcError::UnknownSender { node_id: 7 })),
        "{:?}",
        results[1]
    );
    assert!(
        quorum.status().is_leader,
        "the refused vote changed nothing"
    );
    quorum.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_listening_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let mut peers = TcpPeers::new(1, BTreeMap::from([(2, address)]), None);
    let mut client = peers.new_client(2, &QuorumNode::default()).await;
    let vote = VoteRequest::new(
        StoredVote {
            term: 1,
            voted_for: Some(1),
            committed: false,
        }
        .to_raft(),
        None,
    );
    match client.vote(vote.clone(), RPCOption::new(WAIT)).await {
        Err(RPCError::Unreachable(_)) => {}
        other => panic!("a closed port gave {other:?}"),
    }
    // A node with no address anywhere is unreachable too.
    let mut nowhere = peers.new_client(3, &QuorumNode::default()).await;
    assert!(matches!(
        nowhere.vote(vote, RPCOption::new(WAIT)).await,
        Err(RPCError::Unreachable(_))
    ));
    assert_eq!(client.backoff().next(), Some(Duration::from_secs(1)));
}

/// Answers quorum RPCs on `stream` until the peer closes it (`Ok`) or a request is refused or
/// unreadable (`Err`; the caller drops the stream). Requests are answered one at a time, in order.
/// A node serves these RPCs on its controller listener, whose loop reads the frames and
/// calls [`RaftRpcServer::handle`]; these tests have the quorum alone.
pub(crate) async fn serve_connection<S>(
    server: RaftRpcServer,
    mut stream: S,
) -> Result<(), RaftRpcError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Room for the request header around a body of the largest size.
    let max_frame_bytes = server.max_frame_bytes.saturating_add(1024);
    loop {
        let Some(frame) = read_frame(&mut stream, max_frame_bytes).await? else {
            return Ok(());
        };
        let (header, body) = decode_request_header(&frame)?;
        let body_start = frame.len() - body.len();
        let body = Bytes::from(frame).slice(body_start..);
        let answer = server
            .handle(header.api_key, header.api_version, body)
            .await?;
        let response = encode_response_frame(header.correlation_id, &answer);
        stream
            .write_all(&response)
            .await
            .map_err(RaftRpcError::Write)?;
    }
}
