//! `caudal transactions`: list and describe transactions, like Kafka's kafka-transactions tool.

use anyhow::bail;
use caudal_protocol::kafka_protocol::messages::*;
use caudal_protocol::kafka_protocol::protocol::StrBytes;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::client::{bootstrap_arg, error_name, print_table, with_cluster, Cluster};

pub fn command() -> Command {
    Command::new("transactions")
        .about("List and describe the transactions of transactional producers")
        .long_about(
            "Inspect transactions, like Kafka's kafka-transactions tool. Each transactional.id has a \
             coordinator (the leader of its __transaction_state partition) that knows its producer \
             id, epoch, state and the partitions of its open transaction.\n\n\
             States: Empty (no transaction open), Ongoing, PrepareCommit, PrepareAbort (markers \
             being written), CompleteCommit, CompleteAbort.\n\n\
             Examples:\n  caudal transactions list\n  caudal transactions list --state Ongoing\n  \
             caudal transactions list --id-pattern 'payments-.*'\n  \
             caudal transactions describe payments-processor-1",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(bootstrap_arg())
        .subcommand(
            Command::new("list")
                .about("List the transactional ids every broker coordinates, with their state")
                .arg(Arg::new("state").long("state").value_name("STATE").action(ArgAction::Append).help("Only transactions in this state"))
                .arg(Arg::new("longer-than-ms").long("longer-than-ms").value_name("MS").value_parser(clap::value_parser!(i64)).help("Only transactions open for longer than this"))
                .arg(Arg::new("id-pattern").long("id-pattern").value_name("REGEX").help("Only transactional ids this regular expression matches whole (RE2 syntax, e.g. 'orders-.*')")),
        )
        .subcommand(
            Command::new("describe")
                .about("Show a transactional id's producer, state, timeout and open partitions")
                .arg(Arg::new("transactional-id").required(true).num_args(1..).help("Transactional id(s)")),
        )
}

pub fn run(m: &ArgMatches) -> anyhow::Result<()> {
    with_cluster(m, |mut cluster| async move {
        match m.subcommand() {
            Some(("list", sub)) => list(&mut cluster, sub).await,
            Some(("describe", sub)) => {
                let mut rows = Vec::new();
                for id in sub
                    .get_many::<String>("transactional-id")
                    .into_iter()
                    .flatten()
                {
                    rows.push(describe(&mut cluster, id).await?);
                }
                print_table(
                    &[
                        "TRANSACTIONAL-ID",
                        "PRODUCER-ID",
                        "EPOCH",
                        "STATE",
                        "TIMEOUT-MS",
                        "OPEN-FOR-MS",
                        "PARTITIONS",
                    ],
                    &rows,
                );
                Ok(())
            }
            _ => Ok(()),
        }
    })
}

/// Kafka's INVALID_REGULAR_EXPRESSION.
const INVALID_REGULAR_EXPRESSION: i16 = 128;

/// Lists the transactions of every broker: each lists only those it coordinates.
async fn list(cluster: &mut Cluster, m: &ArgMatches) -> anyhow::Result<()> {
    let states: Vec<StrBytes> = m
        .get_many::<String>("state")
        .into_iter()
        .flatten()
        .map(|s| StrBytes::from_string(s.clone()))
        .collect();
    let longer_than = m.get_one::<i64>("longer-than-ms").copied().unwrap_or(-1);
    let pattern = m.get_one::<String>("id-pattern").cloned();
    // v2 filters by the pattern (KIP-1152); without one, v1 serves any broker since Kafka 3.8.
    let version = if pattern.is_some() { 2 } else { 1 };
    let brokers: Vec<(i32, String)> = cluster
        .metadata(Some(&[] as &[String]))
        .await?
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (id, address) in brokers {
        let request = ListTransactionsRequest::default()
            .with_state_filters(states.clone())
            .with_duration_filter(longer_than)
            .with_transactional_id_pattern(pattern.clone().map(StrBytes::from_string));
        let ResponseKind::ListTransactions(r) = cluster
            .at(&address)
            .await?
            .send(
                ApiKey::ListTransactions,
                version,
                RequestKind::ListTransactions(request),
            )
            .await?
        else {
            bail!("unexpected response")
        };
        if r.error_code == INVALID_REGULAR_EXPRESSION {
            bail!(
                "--id-pattern {:?} is not a regular expression broker {id} accepts (RE2 syntax: \
                 no look-around or back-references)",
                pattern.unwrap_or_default()
            );
        }
        if r.error_code != 0 {
            bail!(
                "ListTransactions on broker {id} failed: {}",
                error_name(r.error_code)
            );
        }
        if let Some(unknown) = r.unknown_state_filters.first() {
            bail!(
                "no transaction state is called {}: use Empty, Ongoing, PrepareCommit, \
                 PrepareAbort, CompleteCommit or CompleteAbort",
                unknown.as_str()
            );
        }
        rows.extend(r.transaction_states.iter().map(|t| {
            vec![
                t.transactional_id.0.to_string(),
                t.producer_id.0.to_string(),
                t.transaction_state.to_string(),
                id.to_string(),
            ]
        }));
    }
    rows.sort();
    if rows.is_empty() {
        println!("no transactions");
        return Ok(());
    }
    print_table(
        &["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE", "COORDINATOR"],
        &rows,
    );
    Ok(())
}

/// One row of `describe`: asked of the transactional id's coordinator.
async fn describe(cluster: &mut Cluster, id: &str) -> anyhow::Result<Vec<String>> {
    let coordinator = cluster.coordinator_of(id, 1).await?;
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(id.to_string()))]);
    let ResponseKind::DescribeTransactions(r) = coordinator
        .send(
            ApiKey::DescribeTransactions,
            0,
            RequestKind::DescribeTransactions(request),
        )
        .await?
    else {
        bail!("unexpected response")
    };
    let Some(t) = r.transaction_states.first() else {
        bail!("the coordinator did not describe {id}");
    };
    if t.error_code != 0 {
        bail!("cannot describe {id}: {}", error_name(t.error_code));
    }
    let open_for = if t.transaction_start_time_ms >= 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        (now - t.transaction_start_time_ms).max(0).to_string()
    } else {
        "-".to_string()
    };
    let partitions: Vec<String> = t
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(move |p| format!("{}-{p}", topic.topic.0.as_str()))
        })
        .collect();
    Ok(vec![
        id.to_string(),
        t.producer_id.0.to_string(),
        t.producer_epoch.to_string(),
        t.transaction_state.to_string(),
        t.transaction_timeout_ms.to_string(),
        open_for,
        if partitions.is_empty() {
            "-".to_string()
        } else {
            partitions.join(",")
        },
    ])
}
