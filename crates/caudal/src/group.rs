//! `caudal group`: list, describe (with lag), delete and reset the offsets of consumer groups,
//! like Kafka's `kafka-consumer-groups` tool.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use caudal_coordinator::consumer_protocol::assigned_partitions;
use caudal_protocol::kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use caudal_protocol::kafka_protocol::messages::*;
use caudal_protocol::kafka_protocol::protocol::StrBytes;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::client::{bootstrap_arg, error_name, print_table, with_cluster, Client, Cluster};

pub fn command() -> Command {
    let bootstrap = bootstrap_arg();
    Command::new("group")
        .about("List, describe, delete consumer groups and reset their offsets")
        .long_about(
            "Inspect and manage consumer groups, like Kafka's kafka-consumer-groups tool.\n\n\
             Examples:\n  caudal group list\n  caudal group describe orders-service      # members, committed offsets and lag\n  \
             caudal group reset-offsets orders-service --topic orders --to-earliest --execute\n  caudal group delete old-group",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(bootstrap)
        .subcommand(Command::new("list").about("List groups with their state").arg(Arg::new("state").long("state").value_name("STATE").action(ArgAction::Append).help("Only groups in this state: Empty, Stable, PreparingRebalance, CompletingRebalance")))
        .subcommand(Command::new("describe").about("Show a group's members, committed offsets and lag per partition").arg(Arg::new("group").required(true).num_args(1..).help("Group id(s)")))
        .subcommand(Command::new("delete").about("Delete groups that have no active members, with their committed offsets").arg(Arg::new("group").required(true).num_args(1..).help("Group id(s)")))
        .subcommand(
            Command::new("reset-offsets")
                .about("Move a group's committed offsets (the group must have no active members)")
                .long_about("Move a group's committed offsets. The group must have no active members. Without --execute, shows what would change.")
                .arg(Arg::new("group").required(true).help("Group id"))
                .arg(Arg::new("topic").long("topic").required(true).value_name("TOPIC").help("Topic whose offsets to move (all its partitions)"))
                .arg(Arg::new("to-earliest").long("to-earliest").action(ArgAction::SetTrue).help("To the first offset still in the log"))
                .arg(Arg::new("to-latest").long("to-latest").action(ArgAction::SetTrue).help("To the log end (skip everything there now)"))
                .arg(Arg::new("to-offset").long("to-offset").value_name("OFFSET").value_parser(clap::value_parser!(i64)).help("To this offset, clamped to the log"))
                .arg(Arg::new("shift-by").long("shift-by").value_name("N").allow_negative_numbers(true).value_parser(clap::value_parser!(i64)).help("By N from the current committed offset (negative to re-read)"))
                .group(clap::ArgGroup::new("target").args(["to-earliest", "to-latest", "to-offset", "shift-by"]).required(true))
                .arg(Arg::new("execute").long("execute").action(ArgAction::SetTrue).help("Apply the change (default: dry run)")),
        )
}

pub fn run(m: &ArgMatches) -> anyhow::Result<()> {
    with_cluster(m, |mut cluster| async move {
        match m.subcommand() {
            Some(("list", sub)) => list(&mut cluster, sub).await,
            Some(("describe", sub)) => {
                for group in sub.get_many::<String>("group").into_iter().flatten() {
                    describe(&mut cluster, group).await?;
                }
                Ok(())
            }
            Some(("delete", sub)) => delete(&mut cluster, sub).await,
            Some(("reset-offsets", sub)) => reset_offsets(&mut cluster, sub).await,
            _ => Ok(()),
        }
    })
}

fn group_id(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

/// Lists the groups of every broker: each lists only the groups it coordinates, so Kafka's
/// tools ask them all.
async fn list(cluster: &mut Cluster, m: &ArgMatches) -> anyhow::Result<()> {
    let states: Vec<StrBytes> = m
        .get_many::<String>("state")
        .into_iter()
        .flatten()
        .map(|s| StrBytes::from_string(s.clone()))
        .collect();
    let brokers: Vec<(i32, String)> = cluster
        .metadata(Some(&[] as &[String]))
        .await?
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (id, address) in brokers {
        let request = ListGroupsRequest::default().with_states_filter(states.clone());
        let ResponseKind::ListGroups(r) = cluster
            .at(&address)
            .await?
            .send(ApiKey::ListGroups, 4, RequestKind::ListGroups(request))
            .await?
        else {
            bail!("unexpected response")
        };
        if r.error_code != 0 {
            bail!(
                "ListGroups on broker {id} failed: {}",
                error_name(r.error_code)
            );
        }
        rows.extend(r.groups.iter().map(|g| {
            vec![
                g.group_id.0.as_str().to_string(),
                g.group_state.as_str().to_string(),
                g.protocol_type.as_str().to_string(),
            ]
        }));
    }
    rows.sort();
    rows.dedup();
    if rows.is_empty() {
        println!("no groups");
        return Ok(());
    }
    print_table(&["GROUP", "STATE", "PROTOCOL-TYPE"], &rows);
    Ok(())
}

async fn committed_offsets(
    client: &mut Client,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let req = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(None);
    let ResponseKind::OffsetFetch(r) = client
        .send(ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(req))
        .await?
    else {
        bail!("unexpected response")
    };
    if r.error_code != 0 {
        bail!("OffsetFetch failed: {}", error_name(r.error_code));
    }
    Ok(r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.committed_offset >= 0)
                .map(move |p| {
                    (
                        (t.name.0.as_str().to_string(), p.partition_index),
                        p.committed_offset,
                    )
                })
        })
        .collect())
}

async fn describe(cluster: &mut Cluster, group: &str) -> anyhow::Result<()> {
    let client = cluster.coordinator(group).await?;
    let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let ResponseKind::DescribeGroups(r) = client
        .send(ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(req))
        .await?
    else {
        bail!("unexpected response")
    };
    let g = r
        .groups
        .into_iter()
        .next()
        .context("empty DescribeGroups response")?;
    if g.error_code != 0 {
        bail!("group {group}: {}", error_name(g.error_code));
    }
    let committed = committed_offsets(client, group).await?;
    if g.group_state.as_str() == "Dead" && committed.is_empty() {
        bail!("group {group} does not exist");
    }
    // Who owns what, from the members' assignments.
    let mut owner: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for m in &g.members {
        for (topic, partitions) in assigned_partitions(&m.member_assignment) {
            for p in partitions {
                owner.insert(
                    (topic.clone(), p),
                    (
                        m.member_id.as_str().to_string(),
                        m.client_host.as_str().to_string(),
                        m.client_id.as_str().to_string(),
                    ),
                );
            }
        }
    }
    let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in committed.keys().chain(owner.keys()) {
        let ps = partitions.entry(t.clone()).or_default();
        if !ps.contains(p) {
            ps.push(*p);
        }
    }
    let ends = cluster.list_offsets(&partitions, -1).await?;
    println!(
        "Group {group}: {} with {} member(s), protocol {} {}",
        g.group_state.as_str(),
        g.members.len(),
        g.protocol_type.as_str(),
        g.protocol_data.as_str()
    );
    println!();
    let mut rows = Vec::new();
    let mut total_lag = 0i64;
    for (topic, ps) in &partitions {
        let mut ps = ps.clone();
        ps.sort_unstable();
        for p in ps {
            let key = (topic.clone(), p);
            let current = committed.get(&key).copied();
            let end = ends.get(&key).copied();
            let lag = match (current, end) {
                (Some(c), Some(e)) => Some((e - c).max(0)),
                (None, Some(_)) => None,
                _ => None,
            };
            total_lag += lag.unwrap_or(0);
            let (member, host, client_id) = owner
                .get(&key)
                .cloned()
                .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
            let show = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            rows.push(vec![
                topic.clone(),
                p.to_string(),
                show(current),
                show(end),
                show(lag),
                member,
                host,
                client_id,
            ]);
        }
    }
    if rows.is_empty() {
        println!("no committed offsets and no assigned partitions");
    } else {
        print_table(
            &[
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "CONSUMER-ID",
                "HOST",
                "CLIENT-ID",
            ],
            &rows,
        );
        println!();
        println!("total lag: {total_lag}");
    }
    Ok(())
}

/// Deletes each group at its coordinator.
async fn delete(cluster: &mut Cluster, m: &ArgMatches) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for group in m.get_many::<String>("group").into_iter().flatten() {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
        let ResponseKind::DeleteGroups(r) = cluster
            .coordinator(group)
            .await?
            .send(ApiKey::DeleteGroups, 2, RequestKind::DeleteGroups(request))
            .await?
        else {
            bail!("unexpected response")
        };
        results.extend(r.results);
    }
    let mut failed = false;
    for g in results {
        match g.error_code {
            0 => println!("deleted group {}", g.group_id.0.as_str()),
            68 => {
                failed = true;
                eprintln!(
                    "group {} still has active members: stop its consumers first (NON_EMPTY_GROUP)",
                    g.group_id.0.as_str()
                );
            }
            code => {
                failed = true;
                eprintln!("group {}: {}", g.group_id.0.as_str(), error_name(code));
            }
        }
    }
    if failed {
        bail!("some groups were not deleted");
    }
    Ok(())
}

async fn reset_offsets(cluster: &mut Cluster, m: &ArgMatches) -> anyhow::Result<()> {
    let group = m.get_one::<String>("group").context("group")?;
    let topic = m.get_one::<String>("topic").context("topic")?;
    let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let ResponseKind::DescribeGroups(r) = cluster
        .coordinator(group)
        .await?
        .send(ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(req))
        .await?
    else {
        bail!("unexpected response")
    };
    if let Some(g) = r.groups.first() {
        if !g.members.is_empty() {
            bail!("group {group} has {} active member(s) ({}): stop its consumers before resetting offsets", g.members.len(), g.group_state.as_str());
        }
    }
    let md = cluster.metadata(Some(std::slice::from_ref(topic))).await?;
    let t = md.topics.first().context("no such topic")?;
    if t.error_code != 0 {
        bail!("topic {topic}: {}", error_name(t.error_code));
    }
    let mut ps: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
    ps.sort_unstable();
    let partitions = BTreeMap::from([(topic.clone(), ps.clone())]);
    let earliest = cluster.list_offsets(&partitions, -2).await?;
    let latest = cluster.list_offsets(&partitions, -1).await?;
    let committed = committed_offsets(cluster.coordinator(group).await?, group).await?;
    let mut plan = Vec::new();
    for p in ps {
        let key = (topic.clone(), p);
        let (lo, hi) = (
            earliest.get(&key).copied().unwrap_or(0),
            latest.get(&key).copied().unwrap_or(0),
        );
        let current = committed.get(&key).copied();
        let target = if m.get_flag("to-earliest") {
            lo
        } else if m.get_flag("to-latest") {
            hi
        } else if let Some(o) = m.get_one::<i64>("to-offset") {
            *o
        } else {
            current.unwrap_or(lo) + m.get_one::<i64>("shift-by").copied().unwrap_or(0)
        };
        plan.push((p, current, target.clamp(lo, hi)));
    }
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|(p, cur, new)| {
            vec![
                topic.clone(),
                p.to_string(),
                cur.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                new.to_string(),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"],
        &rows,
    );
    if !m.get_flag("execute") {
        println!("\ndry run: nothing changed (add --execute to apply)");
        return Ok(());
    }
    let commit = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.clone())))
            .with_partitions(
                plan.iter()
                    .map(|(p, _, new)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*new)
                            .with_committed_leader_epoch(-1)
                    })
                    .collect(),
            )]);
    let ResponseKind::OffsetCommit(r) = cluster
        .coordinator(group)
        .await?
        .send(ApiKey::OffsetCommit, 8, RequestKind::OffsetCommit(commit))
        .await?
    else {
        bail!("unexpected response")
    };
    let errors: Vec<String> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().filter(|p| p.error_code != 0).map(|p| {
                format!(
                    "partition {}: {}",
                    p.partition_index,
                    error_name(p.error_code)
                )
            })
        })
        .collect();
    if !errors.is_empty() {
        bail!("reset failed: {}", errors.join(", "));
    }
    println!("\noffsets of group {group} on {topic} reset");
    Ok(())
}
