//! `caudal topic`: list, create, describe and delete topics, like Kafka's `kafka-topics`.

use anyhow::{bail, Context};
use caudal_protocol::kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use caudal_protocol::kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use caudal_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use caudal_protocol::kafka_protocol::messages::*;
use caudal_protocol::kafka_protocol::protocol::StrBytes;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::client::{bootstrap_arg, error_name, print_table, with_cluster, Client, Cluster};

pub fn command() -> Command {
    Command::new("topic")
        .about("List, create, describe and delete topics")
        .long_about(
            "Manage topics, like Kafka's kafka-topics tool.\n\n\
             Examples:\n  caudal topic create orders --partitions 3\n  caudal topic create audit --config retention.ms=86400000\n  \
             caudal topic create pinned --replica-assignment 1:2,2:3,3:1\n  \
             caudal topic list\n  caudal topic describe orders\n  caudal topic delete orders",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(
            bootstrap_arg(),
        )
        .subcommand(Command::new("list").about("List topics with their partition counts").arg(Arg::new("internal").long("internal").action(ArgAction::SetTrue).help("Include internal topics such as __consumer_offsets")))
        .subcommand(
            Command::new("create")
                .about("Create a topic")
                .arg(Arg::new("topic").required(true).help("Topic name: letters, digits, '.', '_' and '-', at most 249 characters"))
                .arg(Arg::new("partitions").long("partitions").short('p').value_name("N").value_parser(clap::value_parser!(i32)).help("Partitions [default: the broker's num.partitions]"))
                .arg(Arg::new("replication-factor").long("replication-factor").short('r').value_name("N").value_parser(clap::value_parser!(i16).range(1..)).help("Replicas of each partition, on different brokers [default: the broker's default.replication.factor]"))
                .arg(Arg::new("config").long("config").value_name("KEY=VALUE").action(ArgAction::Append).help("A topic config, e.g. retention.ms=86400000 (repeatable)"))
                .arg(Arg::new("replica-assignment").long("replica-assignment").value_name("ASSIGNMENT").conflicts_with_all(["partitions", "replication-factor"]).help("The brokers of each partition, as kafka-topics takes them: partitions separated by commas, each partition's brokers by colons, its preferred leader first; e.g. 1:2,2:3 makes two partitions of two replicas"))
                .arg(Arg::new("if-not-exists").long("if-not-exists").action(ArgAction::SetTrue).help("Succeed if the topic already exists")),
        )
        .subcommand(Command::new("describe").about("Show a topic's partitions (leader, replicas, in-sync and eligible leader replicas), offsets and configs").arg(Arg::new("topic").required(true).num_args(1..)).arg(Arg::new("under-replicated").long("under-replicated").action(ArgAction::SetTrue).help("Only the partitions whose in-sync replicas (ISR) are fewer than their replicas, as kafka-topics --under-replicated-partitions")))
        .subcommand(Command::new("delete").about("Delete topics and all their data").arg(Arg::new("topic").required(true).num_args(1..)))
}

pub fn run(m: &ArgMatches) -> anyhow::Result<()> {
    with_cluster(m, |mut cluster| async move {
        match m.subcommand() {
            Some(("list", sub)) => list(cluster.any(), sub.get_flag("internal")).await,
            Some(("create", sub)) => create(cluster.any(), sub).await,
            Some(("describe", sub)) => {
                let under_replicated = sub.get_flag("under-replicated");
                for t in sub.get_many::<String>("topic").into_iter().flatten() {
                    describe(&mut cluster, t, under_replicated).await?;
                }
                Ok(())
            }
            Some(("delete", sub)) => delete(cluster.any(), sub).await,
            _ => Ok(()),
        }
    })
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn metadata(
    client: &mut Client,
    topics: Option<Vec<String>>,
) -> anyhow::Result<MetadataResponse> {
    let topics = topics.map(|ts| {
        ts.into_iter()
            .map(|t| MetadataRequestTopic::default().with_name(Some(name(&t))))
            .collect()
    });
    let req = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false);
    let ResponseKind::Metadata(r) = client
        .send(ApiKey::Metadata, 12, RequestKind::Metadata(req))
        .await?
    else {
        bail!("unexpected response")
    };
    Ok(r)
}

async fn list(client: &mut Client, internal: bool) -> anyhow::Result<()> {
    let md = metadata(client, None).await?;
    let mut rows: Vec<Vec<String>> = md
        .topics
        .iter()
        .filter(|t| internal || !t.is_internal)
        .map(|t| {
            vec![
                t.name
                    .as_ref()
                    .map(|n| n.0.as_str().to_string())
                    .unwrap_or_default(),
                t.partitions.len().to_string(),
            ]
        })
        .collect();
    rows.sort();
    if rows.is_empty() {
        println!("no topics");
        return Ok(());
    }
    print_table(&["TOPIC", "PARTITIONS"], &rows);
    Ok(())
}

async fn create(client: &mut Client, m: &ArgMatches) -> anyhow::Result<()> {
    let topic = m.get_one::<String>("topic").context("topic")?;
    let mut configs = Vec::new();
    for kv in m.get_many::<String>("config").into_iter().flatten() {
        let (k, v) = kv.split_once('=').with_context(|| {
            format!("--config {kv}: expected KEY=VALUE, e.g. retention.ms=86400000")
        })?;
        configs.push(
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string()))),
        );
    }
    let assignments = match m.get_one::<String>("replica-assignment") {
        Some(text) => replica_assignment(text)?,
        None => Vec::new(),
    };
    let t = CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(m.get_one::<i32>("partitions").copied().unwrap_or(-1))
        .with_replication_factor(
            m.get_one::<i16>("replication-factor")
                .copied()
                .unwrap_or(-1),
        )
        .with_assignments(assignments)
        .with_configs(configs);
    let req = CreateTopicsRequest::default()
        .with_topics(vec![t])
        .with_timeout_ms(30_000);
    let ResponseKind::CreateTopics(r) = client
        .send(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(req))
        .await?
    else {
        bail!("unexpected response")
    };
    let result = r.topics.first().context("empty CreateTopics response")?;
    match result.error_code {
        0 => println!(
            "created topic {topic} with {} partition(s) of {} replica(s)",
            result.num_partitions, result.replication_factor
        ),
        36 if m.get_flag("if-not-exists") => println!("topic {topic} already exists"),
        code => bail!(
            "cannot create {topic}: {}{}",
            error_name(code),
            result
                .error_message
                .as_ref()
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default()
        ),
    }
    Ok(())
}

/// `--replica-assignment 1:2,2:3`: partition 0 on brokers 1 and 2, partition 1 on 2 and 3.
fn replica_assignment(text: &str) -> anyhow::Result<Vec<CreatableReplicaAssignment>> {
    (0..)
        .zip(text.split(','))
        .map(|(partition, brokers)| {
            let broker_ids = brokers
                .split(':')
                .map(|b| {
                    b.trim().parse::<i32>().map(BrokerId).with_context(|| {
                        format!(
                            "--replica-assignment {text}: {b:?} is not a broker id; \
                             expected e.g. 1:2,2:3 (partitions separated by commas, \
                             brokers by colons)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(CreatableReplicaAssignment::default()
                .with_partition_index(partition)
                .with_broker_ids(broker_ids))
        })
        .collect()
}

/// A topic's id and partitions from DescribeTopicPartitions, page after page, as
/// `kafka-topics --describe` asks for them.
async fn describe_partitions(
    client: &mut Client,
    topic: &str,
) -> anyhow::Result<describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic> {
    let mut cursor = None;
    let mut whole: Option<
        describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic,
    > = None;
    loop {
        let req = DescribeTopicPartitionsRequest::default()
            .with_topics(vec![
                describe_topic_partitions_request::TopicRequest::default().with_name(name(topic)),
            ])
            .with_response_partition_limit(2000)
            .with_cursor(cursor.take());
        let ResponseKind::DescribeTopicPartitions(r) = client
            .send(
                ApiKey::DescribeTopicPartitions,
                0,
                RequestKind::DescribeTopicPartitions(req),
            )
            .await?
        else {
            bail!("unexpected response")
        };
        let t = r
            .topics
            .into_iter()
            .next()
            .context("empty DescribeTopicPartitions response")?;
        if t.error_code != 0 {
            bail!("topic {topic}: {}", error_name(t.error_code));
        }
        match &mut whole {
            Some(w) => w.partitions.extend(t.partitions),
            None => whole = Some(t),
        }
        match r.next_cursor {
            Some(next) if next.topic_name.0.as_str() == topic => {
                cursor = Some(
                    describe_topic_partitions_request::Cursor::default()
                        .with_topic_name(next.topic_name)
                        .with_partition_index(next.partition_index),
                );
            }
            _ => return whole.context("empty DescribeTopicPartitions response"),
        }
    }
}

async fn describe(
    cluster: &mut Cluster,
    topic: &str,
    only_under_replicated: bool,
) -> anyhow::Result<()> {
    let t = describe_partitions(cluster.any(), topic).await?;
    let (topic_id, all) = (t.topic_id, t.partitions);
    let under_replicated =
        |p: &&describe_topic_partitions_response::DescribeTopicPartitionsResponsePartition| {
            p.isr_nodes.len() < p.replica_nodes.len()
        };
    println!(
        "Topic {topic}: {} partition(s), id {}, {} under-replicated",
        all.len(),
        topic_id,
        all.iter().filter(under_replicated).count()
    );
    let mut parts: Vec<_> = all
        .iter()
        .filter(|p| !only_under_replicated || under_replicated(p))
        .collect();
    parts.sort_by_key(|p| p.partition_index);
    // Log start and end offsets per partition, from each partition's leader.
    let partitions = std::collections::BTreeMap::from([(
        topic.to_string(),
        parts
            .iter()
            .map(|p| p.partition_index)
            .collect::<Vec<i32>>(),
    )]);
    let mut ends = Vec::new();
    for ts in [-2, -1] {
        let offsets = cluster.list_offsets(&partitions, ts).await?;
        ends.push(
            offsets
                .into_iter()
                .map(|((_, p), offset)| (p, offset))
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
    }
    let rows: Vec<Vec<String>> = parts
        .iter()
        .map(|p| {
            let ids = |v: &[BrokerId]| {
                v.iter()
                    .map(|b| b.0.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            vec![
                p.partition_index.to_string(),
                match p.leader_id.0 {
                    -1 => "none".to_string(),
                    id => id.to_string(),
                },
                ids(&p.replica_nodes),
                ids(&p.isr_nodes),
                ids(p.eligible_leader_replicas.as_deref().unwrap_or_default()),
                ids(&p.offline_replicas),
                ends[0]
                    .get(&p.partition_index)
                    .map(|o| o.to_string())
                    .unwrap_or_default(),
                ends[1]
                    .get(&p.partition_index)
                    .map(|o| o.to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "ELR",
            "OFFLINE",
            "START-OFFSET",
            "END-OFFSET",
        ],
        &rows,
    );
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))]);
    let ResponseKind::DescribeConfigs(r) = cluster
        .any()
        .send(
            ApiKey::DescribeConfigs,
            4,
            RequestKind::DescribeConfigs(req),
        )
        .await?
    else {
        bail!("unexpected response")
    };
    let source = |s: i8| match s {
        1 => "topic",
        4 => "broker",
        5 => "default",
        _ => "other",
    };
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .flat_map(|res| &res.configs)
        .map(|c| {
            vec![
                c.name.as_str().to_string(),
                c.value
                    .as_ref()
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
                source(c.config_source).to_string(),
            ]
        })
        .collect();
    println!();
    print_table(&["CONFIG", "VALUE", "SOURCE"], &rows);
    Ok(())
}

async fn delete(client: &mut Client, m: &ArgMatches) -> anyhow::Result<()> {
    let topics: Vec<TopicName> = m
        .get_many::<String>("topic")
        .into_iter()
        .flatten()
        .map(|t| name(t))
        .collect();
    let req = DeleteTopicsRequest::default()
        .with_topic_names(topics)
        .with_timeout_ms(30_000);
    let ResponseKind::DeleteTopics(r) = client
        .send(ApiKey::DeleteTopics, 5, RequestKind::DeleteTopics(req))
        .await?
    else {
        bail!("unexpected response")
    };
    let mut failed = false;
    for t in r.responses {
        let n = t.name.map(|n| n.0.as_str().to_string()).unwrap_or_default();
        if t.error_code == 0 {
            println!("deleted topic {n}");
        } else {
            failed = true;
            eprintln!("cannot delete {n}: {}", error_name(t.error_code));
        }
    }
    if failed {
        bail!("some topics were not deleted");
    }
    Ok(())
}
