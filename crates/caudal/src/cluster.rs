//! `caudal cluster`: the state of a cluster at a glance, like Kafka's
//! `kafka-metadata-quorum describe --status --replication` and `kafka-cluster` tools together.

use std::collections::BTreeMap;

use anyhow::bail;
use caudal_protocol::kafka_protocol::messages::describe_quorum_request::{
    PartitionData, TopicData,
};
use caudal_protocol::kafka_protocol::messages::describe_quorum_response::ReplicaState;
use caudal_protocol::kafka_protocol::messages::*;
use caudal_protocol::kafka_protocol::protocol::StrBytes;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::client::{bootstrap_arg, error_name, print_table, with_cluster, Cluster};

pub fn command() -> Command {
    Command::new("cluster")
        .about("Show the state of a cluster: its controllers and brokers")
        .long_about(
            "Show the state of a cluster, like Kafka's kafka-metadata-quorum and kafka-cluster tools, \
             move partition leaderships, like kafka-leader-election, and move replicas between brokers, \
             like kafka-reassign-partitions.\n\n\
             Examples:\n  caudal cluster status\n  caudal cluster status --bootstrap node-2:9092\n  \
             caudal cluster elect-leaders\n  caudal cluster elect-leaders --topic orders --partition 0\n  \
             caudal cluster reassign --topic orders --partition 0 --replicas 2,3,4 --wait\n  \
             caudal cluster reassign --list",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(bootstrap_arg())
        .subcommand(
            Command::new("status")
                .about("Show the metadata quorum's voters and every broker, fenced ones included")
                .long_about(
                    "Show the cluster id, the active controller and two tables.\n\n\
                     Voters: the nodes of the metadata quorum (controller.quorum.voters), whether \
                     each leads or follows, the offset its copy of the metadata log reaches, how \
                     far that is behind the leader's, and how long ago the leader last heard \
                     from it. A follower that stays behind, or was not heard from for seconds, \
                     is cut off or down; the quorum needs a majority of its voters.\n\n\
                     Brokers: every registered broker at its address on the listener you \
                     connected to, its rack, whether it is registered (serving) or fenced (the \
                     controller stopped hearing from it: its partitions have other leaders or \
                     none), and how many partitions it leads.",
                ),
        )
        .subcommand(
            Command::new("elect-leaders")
                .about("Move partition leaderships: back to preferred replicas, or unclean to any live one")
                .long_about(
                    "Ask the controller to elect partition leaders, like Kafka's kafka-leader-election.\n\n\
                     preferred (the default): each partition named (every partition when none is) \
                     goes back to its preferred replica, the first in its replica list, if that \
                     replica is alive and in the ISR. After a broker restarts, its partitions are \
                     led by others until this runs, or until the controller does it itself \
                     (auto.leader.rebalance.enable, every leader.imbalance.check.interval.seconds).\n\n\
                     unclean: a partition without a leader, because every in-sync replica is down, \
                     gets any live replica as leader. Records that replica lacks of the lost \
                     in-sync replicas are gone for good, even acknowledged ones: use it only when \
                     availability matters more than those records.\n\n\
                     Prints one row per partition: elected, or why not. Exits with an error if \
                     any election failed (a partition that already has the wanted leader is not \
                     a failure).",
                )
                .arg(
                    Arg::new("election-type")
                        .long("election-type")
                        .value_parser(["preferred", "unclean"])
                        .default_value("preferred")
                        .help("Which election: preferred or unclean"),
                )
                .arg(
                    Arg::new("topic")
                        .long("topic")
                        .help("Elect for this topic only (every topic if not given)"),
                )
                .arg(
                    Arg::new("partition")
                        .long("partition")
                        .requires("topic")
                        .value_parser(clap::value_parser!(i32))
                        .action(clap::ArgAction::Append)
                        .help("Elect for this partition of --topic only; may be repeated"),
                ),
        )
        .subcommand(
            Command::new("reassign")
                .about("Move partition replicas to other brokers, list moves under way, or cancel them")
                .long_about(
                    "Move the replicas of partitions to other brokers, like Kafka's \
                     kafka-reassign-partitions (AlterPartitionReassignments).\n\n\
                     Give the new replicas of one partition with --topic, --partition and \
                     --replicas (the first is its preferred leader), or of many with \
                     --reassignment-json-file, in Kafka's format: \
                     {\"version\":1,\"partitions\":[{\"topic\":\"orders\",\"partition\":0,\"replicas\":[2,3,4]}]}.\n\n\
                     The new replicas copy the partition from its leader while clients carry on; \
                     once all of them are in the ISR the old ones are removed and deleted, and \
                     a leader that is removed hands over to the first new replica. Copying is \
                     limited to leader.replication.throttled.rate bytes per second on each \
                     leader (unlimited by default). --wait shows progress until every move is \
                     done. --list shows the moves under way; --cancel takes the partitions \
                     named back to the replicas they had.",
                )
                .arg(Arg::new("topic").long("topic").help("The topic of the partition to move"))
                .arg(
                    Arg::new("partition")
                        .long("partition")
                        .requires("topic")
                        .value_parser(clap::value_parser!(i32))
                        .help("The partition to move"),
                )
                .arg(
                    Arg::new("replicas")
                        .long("replicas")
                        .value_name("BROKER,BROKER,...")
                        .requires("partition")
                        .help("The partition's new replicas, its preferred leader first"),
                )
                .arg(
                    Arg::new("reassignment-json-file")
                        .long("reassignment-json-file")
                        .value_name("FILE")
                        .conflicts_with("topic")
                        .help("Kafka's reassignment JSON: the new replicas of many partitions"),
                )
                .arg(
                    Arg::new("cancel")
                        .long("cancel")
                        .action(ArgAction::SetTrue)
                        .conflicts_with("replicas")
                        .help("Cancel the moves of the partitions named (by --topic and --partition, or the file)"),
                )
                .arg(
                    Arg::new("list")
                        .long("list")
                        .action(ArgAction::SetTrue)
                        .conflicts_with_all(["topic", "reassignment-json-file", "cancel"])
                        .help("List the moves under way"),
                )
                .arg(
                    Arg::new("wait")
                        .long("wait")
                        .action(ArgAction::SetTrue)
                        .help("After starting the moves, show progress until they are done"),
                )
                .arg(
                    Arg::new("timeout")
                        .long("timeout")
                        .value_name("SECONDS")
                        .value_parser(clap::value_parser!(u64))
                        .default_value("600")
                        .help("With --wait: give up after this long (the moves go on)"),
                ),
        )
}

pub fn run(m: &ArgMatches) -> anyhow::Result<()> {
    with_cluster(m, |mut cluster| async move {
        match m.subcommand() {
            Some(("status", _)) => status(&mut cluster).await,
            Some(("elect-leaders", sub)) => elect_leaders(&mut cluster, sub).await,
            Some(("reassign", sub)) => reassign(&mut cluster, sub).await,
            _ => Ok(()),
        }
    })
}

/// The metadata log's topic and partition, which DescribeQuorum asks about.
const METADATA_TOPIC: &str = "__cluster_metadata";

async fn describe_quorum(cluster: &mut Cluster) -> anyhow::Result<DescribeQuorumResponse> {
    let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    match cluster
        .any()
        .send(
            ApiKey::DescribeQuorum,
            2,
            RequestKind::DescribeQuorum(request),
        )
        .await?
    {
        ResponseKind::DescribeQuorum(r) => Ok(r),
        _ => bail!("unexpected response to DescribeQuorum"),
    }
}

async fn describe_cluster(cluster: &mut Cluster) -> anyhow::Result<DescribeClusterResponse> {
    let request = DescribeClusterRequest::default().with_include_fenced_brokers(true);
    match cluster
        .any()
        .send(
            ApiKey::DescribeCluster,
            2,
            RequestKind::DescribeCluster(request),
        )
        .await?
    {
        ResponseKind::DescribeCluster(r) if r.error_code == 0 => Ok(r),
        ResponseKind::DescribeCluster(r) => {
            bail!("DescribeCluster failed: {}", error_name(r.error_code))
        }
        _ => bail!("unexpected response to DescribeCluster"),
    }
}

/// "1.2s ago" for a timestamp `at_ms` seen at `now_ms`; "-" when unknown (-1).
fn age(at_ms: i64, now_ms: i64) -> String {
    if at_ms < 0 {
        return "-".to_string();
    }
    let ms = (now_ms - at_ms).max(0);
    if ms < 1000 {
        format!("{ms}ms ago")
    } else {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    }
}

/// One row of the voter table.
fn replica_row(r: &ReplicaState, role: &str, leader_end: i64, now_ms: i64) -> Vec<String> {
    let (end, lag) = if r.log_end_offset < 0 {
        ("-".to_string(), "-".to_string())
    } else {
        (
            r.log_end_offset.to_string(),
            (leader_end - r.log_end_offset).max(0).to_string(),
        )
    };
    vec![
        r.replica_id.0.to_string(),
        role.to_string(),
        end,
        lag,
        age(r.last_fetch_timestamp, now_ms),
        age(r.last_caught_up_timestamp, now_ms),
    ]
}

async fn status(cluster: &mut Cluster) -> anyhow::Result<()> {
    let described = describe_cluster(cluster).await?;
    let quorum = describe_quorum(cluster).await;
    let metadata = cluster.metadata(None).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));

    println!("Cluster id: {}", described.cluster_id.as_str());
    match &quorum {
        Ok(q) if q.error_code != 0 => {
            println!("Active controller: unknown ({})", error_name(q.error_code))
        }
        Ok(q) => match q.topics.first().and_then(|t| t.partitions.first()) {
            Some(p) if p.error_code == 0 => println!(
                "Active controller: {} (metadata quorum leader, epoch {}, high watermark {})",
                p.leader_id.0, p.leader_epoch, p.high_watermark
            ),
            Some(p) => println!("Active controller: unknown ({})", error_name(p.error_code)),
            None => println!("Active controller: unknown (an empty DescribeQuorum answer)"),
        },
        Err(e) => println!("Active controller: unknown (DescribeQuorum failed: {e:#})"),
    }
    println!();

    if let Ok(q) = &quorum {
        if let Some(p) = q
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .filter(|p| q.error_code == 0 && p.error_code == 0)
        {
            let leader_end = p
                .current_voters
                .iter()
                .find(|v| v.replica_id == p.leader_id)
                .map_or(-1, |v| v.log_end_offset);
            let mut rows: Vec<Vec<String>> = p
                .current_voters
                .iter()
                .map(|v| {
                    let role = if v.replica_id == p.leader_id {
                        "leader"
                    } else {
                        "follower"
                    };
                    replica_row(v, role, leader_end, now_ms)
                })
                .collect();
            rows.extend(
                p.observers
                    .iter()
                    .map(|o| replica_row(o, "observer", leader_end, now_ms)),
            );
            print_table(
                &[
                    "VOTER",
                    "ROLE",
                    "LOG-END-OFFSET",
                    "LAG",
                    "LAST-FETCH",
                    "LAST-CAUGHT-UP",
                ],
                &rows,
            );
            println!();
        }
    }

    // Partitions led per broker, from one Metadata of every topic.
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for t in &metadata.topics {
        for p in &t.partitions {
            if p.leader_id.0 >= 0 {
                *led.entry(p.leader_id.0).or_default() += 1;
            }
        }
    }
    let mut brokers: Vec<_> = described.brokers.iter().collect();
    brokers.sort_by_key(|b| b.broker_id.0);
    let rows: Vec<Vec<String>> = brokers
        .iter()
        .map(|b| {
            vec![
                b.broker_id.0.to_string(),
                format!("{}:{}", b.host.as_str(), b.port),
                b.rack
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |r| r.as_str().to_string()),
                if b.is_fenced { "fenced" } else { "registered" }.to_string(),
                led.get(&b.broker_id.0).copied().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no brokers reachable on this listener");
    } else {
        print_table(
            &["BROKER", "ADDRESS", "RACK", "STATE", "PARTITIONS-LED"],
            &rows,
        );
    }
    Ok(())
}

/// A partition's error for a result table: Kafka's name and the broker's message, if any.
fn error_text(code: i16, message: Option<&StrBytes>) -> String {
    match message {
        Some(m) => format!("{}: {}", error_name(code), m.as_str()),
        None => error_name(code),
    }
}

async fn elect_leaders(cluster: &mut Cluster, m: &ArgMatches) -> anyhow::Result<()> {
    use caudal_protocol::kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    let unclean = m.get_one::<String>("election-type").map(String::as_str) == Some("unclean");
    let topic = m.get_one::<String>("topic");
    let partitions: Vec<i32> = m
        .get_many::<i32>("partition")
        .map(|ps| ps.copied().collect())
        .unwrap_or_default();
    let asked = match topic {
        None => None,
        Some(topic) => {
            let partitions = if partitions.is_empty() {
                let metadata = cluster.metadata(Some(std::slice::from_ref(topic))).await?;
                match metadata.topics.first() {
                    Some(t) if t.error_code == 0 => {
                        t.partitions.iter().map(|p| p.partition_index).collect()
                    }
                    Some(t) => bail!("topic {topic}: {}", error_name(t.error_code)),
                    None => bail!("topic {topic}: no metadata"),
                }
            } else {
                partitions
            };
            Some(vec![TopicPartitions::default()
                .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                .with_partitions(partitions)])
        }
    };
    let request = ElectLeadersRequest::default()
        .with_election_type(i8::from(unclean))
        .with_topic_partitions(asked)
        .with_timeout_ms(30_000);
    let response = match cluster
        .any()
        .send(ApiKey::ElectLeaders, 2, RequestKind::ElectLeaders(request))
        .await?
    {
        ResponseKind::ElectLeaders(r) => r,
        _ => bail!("unexpected response to ElectLeaders"),
    };
    if response.error_code != 0 {
        bail!(
            "leader election failed: {}",
            error_name(response.error_code)
        );
    }
    let not_needed =
        caudal_protocol::kafka_protocol::error::ResponseError::ElectionNotNeeded.code();
    let mut rows = Vec::new();
    let mut failed = 0;
    for topic in &response.replica_election_results {
        for p in &topic.partition_result {
            let result = match p.error_code {
                0 => "elected".to_string(),
                code if code == not_needed => {
                    "already led by the replica this election would pick".to_string()
                }
                code => {
                    failed += 1;
                    error_text(code, p.error_message.as_ref())
                }
            };
            rows.push(vec![
                topic.topic.to_string(),
                p.partition_id.to_string(),
                result,
            ]);
        }
    }
    if rows.is_empty() {
        println!("Every partition already has the leader this election would give it.");
        return Ok(());
    }
    print_table(&["TOPIC", "PARTITION", "RESULT"], &rows);
    if failed > 0 {
        bail!("{failed} of {} elections failed", rows.len());
    }
    Ok(())
}

/// One partition of Kafka's reassignment JSON file.
#[derive(serde::Deserialize)]
struct Move {
    topic: String,
    partition: i32,
    #[serde(default)]
    replicas: Option<Vec<i32>>,
}

#[derive(serde::Deserialize)]
struct MoveFile {
    partitions: Vec<Move>,
}

/// The moves asked for on the command line: `replicas` is `None` to cancel.
fn moves(m: &ArgMatches) -> anyhow::Result<Vec<Move>> {
    use anyhow::Context;
    let cancel = m.get_flag("cancel");
    if let Some(path) = m.get_one::<String>("reassignment-json-file") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let file: MoveFile = serde_json::from_str(&text).with_context(|| {
            format!("{path} is not Kafka's reassignment JSON ({{\"version\":1,\"partitions\":[{{\"topic\":...,\"partition\":...,\"replicas\":[...]}}]}})")
        })?;
        let mut moves = file.partitions;
        for mv in &mut moves {
            if cancel {
                mv.replicas = None;
            } else if mv.replicas.is_none() {
                bail!(
                    "{path}: partition {} of {} has no replicas",
                    mv.partition,
                    mv.topic
                );
            }
        }
        return Ok(moves);
    }
    let (Some(topic), Some(partition)) =
        (m.get_one::<String>("topic"), m.get_one::<i32>("partition"))
    else {
        bail!("name a partition with --topic and --partition, or give --reassignment-json-file or --list");
    };
    let replicas = match (m.get_one::<String>("replicas"), cancel) {
        (_, true) => None,
        (Some(list), false) => Some(
            list.split(',')
                .map(|b| {
                    b.trim()
                        .parse::<i32>()
                        .with_context(|| format!("--replicas: {b:?} is not a broker id"))
                })
                .collect::<anyhow::Result<Vec<i32>>>()?,
        ),
        (None, false) => bail!("give the partition's new replicas with --replicas, or --cancel"),
    };
    Ok(vec![Move {
        topic: topic.clone(),
        partition: *partition,
        replicas,
    }])
}

/// The moves under way: (topic, partition, replicas, adding, removing).
async fn ongoing(
    cluster: &mut Cluster,
) -> anyhow::Result<Vec<(String, i32, Vec<i32>, Vec<i32>, Vec<i32>)>> {
    let request = ListPartitionReassignmentsRequest::default()
        .with_topics(None)
        .with_timeout_ms(30_000);
    let response = match cluster
        .any()
        .send(
            ApiKey::ListPartitionReassignments,
            0,
            RequestKind::ListPartitionReassignments(request),
        )
        .await?
    {
        ResponseKind::ListPartitionReassignments(r) => r,
        _ => bail!("unexpected response to ListPartitionReassignments"),
    };
    if response.error_code != 0 {
        bail!(
            "listing reassignments failed: {}",
            error_name(response.error_code)
        );
    }
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
    Ok(response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    ids(&p.replicas),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect())
}

fn joined(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".to_string();
    }
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

async fn reassign(cluster: &mut Cluster, m: &ArgMatches) -> anyhow::Result<()> {
    use caudal_protocol::kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    if m.get_flag("list") {
        let moves = ongoing(cluster).await?;
        if moves.is_empty() {
            println!("No reassignment is under way.");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = moves
            .iter()
            .map(|(t, p, r, a, x)| vec![t.clone(), p.to_string(), joined(r), joined(a), joined(x)])
            .collect();
        print_table(
            &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
            &rows,
        );
        return Ok(());
    }
    let moves = moves(m)?;
    let mut topics: BTreeMap<String, Vec<ReassignablePartition>> = BTreeMap::new();
    for mv in &moves {
        topics.entry(mv.topic.clone()).or_default().push(
            ReassignablePartition::default()
                .with_partition_index(mv.partition)
                .with_replicas(
                    mv.replicas
                        .as_ref()
                        .map(|r| r.iter().copied().map(BrokerId).collect()),
                ),
        );
    }
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_allow_replication_factor_change(true)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    ReassignableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response = match cluster
        .any()
        .send(
            ApiKey::AlterPartitionReassignments,
            1,
            RequestKind::AlterPartitionReassignments(request),
        )
        .await?
    {
        ResponseKind::AlterPartitionReassignments(r) => r,
        _ => bail!("unexpected response to AlterPartitionReassignments"),
    };
    if response.error_code != 0 {
        bail!(
            "reassignment failed: {}{}",
            error_name(response.error_code),
            response
                .error_message
                .as_ref()
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default()
        );
    }
    let cancel = m.get_flag("cancel");
    let mut rows = Vec::new();
    let mut failed = 0;
    for t in &response.responses {
        for p in &t.partitions {
            let result = match p.error_code {
                0 if cancel => "cancelled".to_string(),
                0 => "started".to_string(),
                code => {
                    failed += 1;
                    error_text(code, p.error_message.as_ref())
                }
            };
            rows.push(vec![
                t.name.to_string(),
                p.partition_index.to_string(),
                result,
            ]);
        }
    }
    print_table(&["TOPIC", "PARTITION", "RESULT"], &rows);
    if failed > 0 {
        bail!(
            "{failed} of {} partitions could not be reassigned",
            rows.len()
        );
    }
    if m.get_flag("wait") && !cancel {
        let timeout =
            std::time::Duration::from_secs(m.get_one::<u64>("timeout").copied().unwrap_or(600));
        let started = std::time::Instant::now();
        let asked: std::collections::BTreeSet<(String, i32)> = moves
            .iter()
            .map(|mv| (mv.topic.clone(), mv.partition))
            .collect();
        let mut last = usize::MAX;
        loop {
            let left = ongoing(cluster)
                .await?
                .into_iter()
                .filter(|(t, p, ..)| asked.contains(&(t.clone(), *p)))
                .count();
            if left == 0 {
                println!(
                    "Every move is done ({:.1} s).",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if left != last {
                println!("{left} of {} partition(s) still copying...", asked.len());
                last = left;
            }
            if started.elapsed() >= timeout {
                bail!("{left} move(s) still under way after {} s; they go on (see caudal cluster reassign --list)", timeout.as_secs());
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age(-1, 5_000), "-");
        assert_eq!(age(4_750, 5_000), "250ms ago");
        assert_eq!(age(2_000, 5_000), "3.0s ago");
        // A clock a little ahead on the leader is not a negative age.
        assert_eq!(age(5_100, 5_000), "0ms ago");
    }

    #[test]
    fn lag_is_measured_from_the_leaders_log_end() {
        let r = ReplicaState::default()
            .with_replica_id(BrokerId(3))
            .with_log_end_offset(40)
            .with_last_fetch_timestamp(900)
            .with_last_caught_up_timestamp(-1);
        assert_eq!(
            replica_row(&r, "follower", 42, 1_000),
            vec!["3", "follower", "40", "2", "100ms ago", "-"]
        );
        let unknown = ReplicaState::default()
            .with_replica_id(BrokerId(2))
            .with_log_end_offset(-1)
            .with_last_fetch_timestamp(-1)
            .with_last_caught_up_timestamp(-1);
        assert_eq!(
            replica_row(&unknown, "follower", 42, 1_000),
            vec!["2", "follower", "-", "-", "-", "-"]
        );
    }
}
