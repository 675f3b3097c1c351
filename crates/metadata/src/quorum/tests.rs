//! The quorum adapters against openraft's storage conformance suite, then three in-process
//! nodes over the test router with nodes cut off, stopped and restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{ServerState, StorageError};
use tempfile::TempDir;
use uuid::Uuid;

use super::testing::Router;
use super::{
    LogStore, MetadataLogConfig, Quorum, QuorumConfig, QuorumError, QuorumTypes, StateMachine,
};
use crate::records::{EntryRecords, MetadataRecord};
use crate::MetadataImage;

/// Fresh stores in a temporary directory, which lives as long as the test holds the guard.
struct TempStores;

impl StoreBuilder<QuorumTypes, LogStore, StateMachine, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log_dir = super::metadata_log_dir(dir.path());
        // Tiny segments, so purges and truncations cross segment boundaries.
        let config = MetadataLogConfig {
            segment_bytes: 1024,
            ..MetadataLogConfig::default()
        };
        let store = LogStore::open(&log_dir, &config)
            .expect("the log store opens")
            .with_map_like_appends();
        let (machine, _images) = StateMachine::open(&log_dir).expect("the state machine opens");
        Ok((dir, store, machine))
    }
}

#[test]
fn log_store_and_state_machine_pass_openraft_suite() {
    Suite::test_all(TempStores).expect("openraft's storage suite passes");
}

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

fn topic(name: &str) -> EntryRecords {
    EntryRecords(vec![MetadataRecord::Topic {
        v: 0,
        name: name.to_string(),
        topic_id: Uuid::new_v4(),
    }])
}

/// Logs for a failing test: `RUST_LOG=openraft=info,caudal_metadata=debug cargo test ...`.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Short timeouts for quick tests, yet several times a vote's round trip (two fsyncs of
/// `quorum-state` on each side) on a busy machine.
fn config(node_id: u64) -> QuorumConfig {
    QuorumConfig {
        election_timeout_ms: 400,
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

/// Three (or n) nodes with their data directories, wired through one router.
struct Cluster {
    config: fn(u64) -> QuorumConfig,
    router: Router,
    dirs: BTreeMap<u64, TempDir>,
    nodes: BTreeMap<u64, Quorum>,
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        Cluster::start_with(n, config).await
    }

    async fn start_with(n: u64, config: fn(u64) -> QuorumConfig) -> Cluster {
        init_logs();
        let mut cluster = Cluster {
            config,
            router: Router::default(),
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster
                .dirs
                .insert(id, tempfile::tempdir().expect("a temporary directory"));
            cluster.start_node(id).await;
        }
        let voters: BTreeSet<u64> = (1..=n).collect();
        let first = cluster.node(1);
        assert!(first.initialize(&voters).await.expect("node 1 initialises"));
        cluster
    }

    async fn start_node(&mut self, id: u64) {
        let dir = self.dirs[&id].path().to_path_buf();
        let quorum = Quorum::start(&(self.config)(id), &dir, self.router.network(id))
            .await
            .expect("the node starts");
        self.router.add(id, quorum.raft().clone());
        self.nodes.insert(id, quorum);
    }

    async fn stop_node(&mut self, id: u64) {
        self.router.remove(id);
        if let Some(quorum) = self.nodes.remove(&id) {
            quorum.shutdown().await.expect("the node stops cleanly");
        }
    }

    fn node(&self, id: u64) -> &Quorum {
        &self.nodes[&id]
    }

    /// Waits until every node of `among` follows one leader, itself one of `among`.
    async fn leader(&self, among: &[u64]) -> u64 {
        let agreed = async {
            loop {
                let statuses: Vec<_> = among.iter().map(|id| self.node(*id).status()).collect();
                let leader = statuses[0].leader;
                if let Some(leader) = leader {
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

    /// Waits until node `id`'s image satisfies `check`.
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

fn others(all: &[u64], but: u64) -> Vec<u64> {
    all.iter().copied().filter(|&id| id != but).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_apply_a_write_everywhere() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let applied = cluster
        .node(leader)
        .propose(topic("orders"))
        .await
        .expect("the leader takes a proposal");
    for id in 1..=3 {
        let image = cluster
            .image_where(id, "the write", |image| {
                image.topic_by_name("orders").is_some()
            })
            .await;
        assert!(image.provenance().index >= applied.index);
    }
    // A follower refuses proposals and names the leader.
    let follower = others(&[1, 2, 3], leader)[0];
    match cluster.node(follower).propose(topic("refused")).await {
        Err(QuorumError::NotLeader { leader: hint }) => assert_eq!(hint, Some(leader)),
        other => panic!("a follower took a proposal: {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_elects_another_and_keeps_everything_committed() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = Cluster::start(3).await;
    let old = cluster.leader(&[1, 2, 3]).await;
    cluster
        .node(old)
        .propose(topic("before"))
        .await
        .expect("the first leader takes a proposal");
    cluster.stop_node(old).await;
    let rest = others(&[1, 2, 3], old);
    let new = cluster.leader(&rest).await;
    assert_ne!(new, old);
    cluster
        .node(new)
        .propose(topic("after"))
        .await
        .expect("the new leader takes a proposal");
    for &id in &rest {
        cluster.has_topic(id, "before").await;
        cluster.has_topic(id, "after").await;
    }
    // The old leader comes back as a follower and catches up.
    cluster.start_node(old).await;
    cluster.has_topic(old, "after").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_never_applies_its_own_writes() {
    let cluster = Cluster::start(3).await;
    let old = cluster.leader(&[1, 2, 3]).await;
    cluster.router.isolate(old);
    // The cut-off leader accepts the proposal into its log but can never commit it.
    let lost = tokio::time::timeout(
        Duration::from_millis(1500),
        cluster.node(old).propose(topic("lost")),
    )
    .await;
    assert!(
        !matches!(lost, Ok(Ok(_))),
        "a leader without a majority committed a write: {lost:?}"
    );
    let rest = others(&[1, 2, 3], old);
    let new = cluster.leader(&rest).await;
    cluster
        .node(new)
        .propose(topic("kept"))
        .await
        .expect("the majority's new leader takes a proposal");
    cluster.router.heal(old);
    for id in 1..=3 {
        let image = cluster
            .image_where(id, "the majority's write", |image| {
                image.topic_by_name("kept").is_some()
            })
            .await;
        assert!(
            image.topic_by_name("lost").is_none(),
            "node {id} applied the cut-off leader's write"
        );
    }
    // The old leader's log now agrees with the majority's: it follows the new leader.
    let agreed = cluster.leader(&[1, 2, 3]).await;
    assert_ne!(
        agreed, old,
        "the old leader is not elected over a longer log"
    );
    cluster
        .node(old)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.state == ServerState::Follower,
            "the old leader follows",
        )
        .await
        .expect("the old leader steps down");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_its_checkpoint_its_log_and_the_leaders_checkpoint() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let lagging = others(&[1, 2, 3], leader)[0];
    for i in 0..5 {
        cluster
            .node(leader)
            .propose(topic(&format!("early-{i}")))
            .await
            .expect("a write");
    }
    // The follower checkpoints what it has, writes a little more to its log, and stops.
    cluster.has_topic(lagging, "early-4").await;
    cluster
        .node(lagging)
        .snapshot()
        .await
        .expect("a checkpoint is asked for");
    cluster
        .node(lagging)
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some(), "the follower's checkpoint")
        .await
        .expect("the follower checkpoints");
    cluster
        .node(leader)
        .propose(topic("in-log"))
        .await
        .expect("a write");
    cluster.has_topic(lagging, "in-log").await;
    cluster.stop_node(lagging).await;

    // From its own directory alone it comes back with everything it had.
    let dir = cluster.dirs[&lagging].path().to_path_buf();
    let alone = Quorum::start(&config(lagging), &dir, Router::default().network(lagging))
        .await
        .expect("the node restarts");
    // Its checkpoint gives the early topics; its log, up to its saved committed id, the rest.
    let mut images = alone.images();
    let image = tokio::time::timeout(
        WAIT,
        images.wait_for(|image| image.topic_by_name("in-log").is_some()),
    )
    .await
    .map(|image| image.map(|i| i.clone()));
    let Ok(Ok(image)) = image else {
        panic!("the restarted node did not apply its own log within {WAIT:?}");
    };
    assert!(image.topic_by_name("early-4").is_some());
    alone.shutdown().await.expect("stops");

    // Meanwhile the leader moves on, checkpoints and purges its whole log.
    for i in 0..5 {
        cluster
            .node(leader)
            .propose(topic(&format!("late-{i}")))
            .await
            .expect("a write");
    }
    let last = cluster.node(leader).status().last_applied_index;
    cluster
        .node(leader)
        .snapshot()
        .await
        .expect("a checkpoint is asked for");
    let raft = cluster.node(leader).raft().clone();
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.map(|id| id.index) >= last,
            "the leader's checkpoint",
        )
        .await
        .expect("the leader checkpoints");
    let upto = last.expect("the leader applied entries");
    raft.trigger()
        .purge_log(upto)
        .await
        .expect("purge asked for");
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.purged.map(|id| id.index) >= Some(upto),
            "the leader's purge",
        )
        .await
        .expect("the leader purges its log");

    // Back in the cluster, the node needs the leader's checkpoint: its log ends before the
    // leader's starts.
    cluster.start_node(lagging).await;
    let image = cluster
        .image_where(lagging, "the late writes", |image| {
            image.topic_by_name("late-4").is_some()
        })
        .await;
    assert!(image.topic_by_name("early-0").is_some());
    assert!(image.topic_by_name("in-log").is_some());
    // The core records the installed checkpoint after the state machine published its image.
    cluster
        .node(lagging)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.map(|id| id.index) >= Some(upto),
            "the leader's checkpoint installed",
        )
        .await
        .expect("the node caught up through the leader's checkpoint");
    cluster
        .node(leader)
        .propose(topic("after-catch-up"))
        .await
        .expect("a write");
    cluster.has_topic(lagging, "after-catch-up").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_with_the_same_election_timeout_still_elect_a_leader() {
    // Every node draws its timeout from [400, 401) ms and all started together, so their
    // election ticks line up and the two survivors are likely to tie round after round.
    // Without the tie-breaker this failed or took 9 s of its 10 in two runs of three.
    fn tied(node_id: u64) -> QuorumConfig {
        QuorumConfig {
            election_timeout_max_ms: Some(401),
            ..config(node_id)
        }
    }
    let mut cluster = Cluster::start_with(3, tied).await;
    let old = cluster.leader(&[1, 2, 3]).await;
    cluster.stop_node(old).await;
    let rest = others(&[1, 2, 3], old);
    let new = cluster.leader(&rest).await;
    cluster
        .node(new)
        .propose(topic("after-a-tie"))
        .await
        .expect("the new leader takes a proposal");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_voter_restarts_with_its_image_and_leads_at_once() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    // A long election timeout: leading again quickly must not depend on it.
    let lone = || QuorumConfig {
        election_timeout_ms: 5_000,
        ..config(1)
    };
    let quorum = Quorum::start(&lone(), dir.path(), Router::default().network(1))
        .await
        .unwrap();
    assert!(quorum.initialize(&BTreeSet::from([1])).await.unwrap());
    quorum
        .raft()
        .wait(Some(WAIT))
        .state(ServerState::Leader, "the lone voter leads")
        .await
        .unwrap();
    let applied = quorum.propose(topic("kept")).await.unwrap();
    quorum.shutdown().await.unwrap();

    let started = std::time::Instant::now();
    let quorum = Quorum::start(&lone(), dir.path(), Router::default().network(1))
        .await
        .unwrap();
    // Its image comes back from the log up to the saved committed id, before any election.
    let image = quorum.image();
    assert!(image.topic_by_name("kept").is_some(), "{image:?}");
    assert_eq!(image.provenance().index, applied.index);
    assert!(!quorum.initialize(&BTreeSet::from([1])).await.unwrap());
    quorum
        .raft()
        .wait(Some(WAIT))
        .state(ServerState::Leader, "the lone voter leads again")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "leading again took {:?}",
        started.elapsed()
    );
    quorum.propose(topic("after-restart")).await.unwrap();
    quorum.shutdown().await.unwrap();
}
