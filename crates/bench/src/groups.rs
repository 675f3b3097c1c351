//! `caudal-bench groups`: how long consumer groups take to get their partitions.
//!
//! Starts `--groups` groups of `--members` librdkafka consumers each, all subscribing to one
//! topic at once, and measures for every group the time from subscribe until every member holds
//! a partition and the members together hold them all. Then one member of every group with more
//! than one member closes (a clean LeaveGroup) and the time until the rest hold all partitions
//! again is measured. The broker's `group.initial.rebalance.delay.ms` (3 s by default, extended
//! while members keep arriving) is part of the first figure, as it is with Kafka.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[derive(Args, Debug, Clone)]
pub struct GroupOpts {
    /// Broker to connect to (bootstrap.servers)
    #[arg(long, default_value = "127.0.0.1:9092", env = "CAUDAL_BENCH_BOOTSTRAP")]
    pub bootstrap: String,
    /// Topic every group subscribes to; created with --partitions if missing
    #[arg(long, default_value = "caudal-bench-groups")]
    pub topic: String,
    /// Partitions of the topic when it has to be created
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Number of groups
    #[arg(long, default_value_t = 100)]
    pub groups: usize,
    /// Consumers per group
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// partition.assignment.strategy of the consumers
    #[arg(long, default_value = "range")]
    pub assignor: String,
    /// Give up after this many seconds per phase
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    format!(
        "{name:<18} {:>6}  {:>8}  {:>8}  {:>8}",
        times.len(),
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        ms(times.last().copied().unwrap_or_default())
    )
}

/// Partitions each member holds now (serving the consumer's callbacks first).
fn holdings(members: &[BaseConsumer]) -> Vec<BTreeSet<i32>> {
    members
        .iter()
        .map(|c| {
            let _ = c.poll(Duration::ZERO);
            c.assignment()
                .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default()
        })
        .collect()
}

/// Whether the members hold every partition, each member at least one when there are enough.
fn settled(held: &[BTreeSet<i32>], partitions: i32) -> bool {
    let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
    let total: usize = held.iter().map(BTreeSet::len).sum();
    let everyone = held.len() > partitions as usize || held.iter().all(|h| !h.is_empty());
    all.len() == partitions as usize && total == partitions as usize && everyone
}

pub fn run(
    opts: &GroupOpts,
    ensure_topic: impl Fn(&str, &str, i32) -> Result<usize>,
) -> Result<()> {
    let partitions = ensure_topic(&opts.bootstrap, &opts.topic, opts.partitions)? as i32;
    let mut groups: Vec<Vec<BaseConsumer>> = Vec::with_capacity(opts.groups);
    let start = Instant::now();
    for g in 0..opts.groups {
        let mut members = Vec::with_capacity(opts.members);
        for m in 0..opts.members {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &opts.bootstrap)
                .set("group.id", format!("caudal-bench-group-{g}"))
                .set("client.id", format!("bench-g{g}-m{m}"))
                .set("partition.assignment.strategy", &opts.assignor)
                .set("session.timeout.ms", "30000")
                .set("enable.auto.commit", "false")
                .create()
                .context("creating a consumer")?;
            consumer.subscribe(&[&opts.topic]).context("subscribing")?;
            members.push(consumer);
        }
        groups.push(members);
    }
    let subscribed = start.elapsed();
    eprintln!(
        "{} consumers in {} groups subscribed in {:.1} s; waiting for assignments",
        opts.groups * opts.members,
        opts.groups,
        subscribed.as_secs_f64()
    );
    let mut first: Vec<Option<Duration>> = vec![None; opts.groups];
    let deadline = Instant::now() + Duration::from_secs(opts.timeout);
    while first.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!(
                "{} groups never got all their partitions",
                first.iter().filter(|f| f.is_none()).count()
            );
        }
        for (g, members) in groups.iter().enumerate() {
            if first[g].is_none() && settled(&holdings(members), partitions) {
                first[g] = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let first: Vec<Duration> = first.into_iter().flatten().collect();
    // One member of each group leaves, all at once (closing blocks, so each in its own
    // thread); the rest take over. Times run from the start of the close.
    let mut after_leave: Vec<Option<Duration>> = vec![None; opts.groups];
    let mut left_at = Vec::with_capacity(opts.groups);
    let mut closers = Vec::new();
    for members in &mut groups {
        if members.len() > 1 {
            let leaving = members.remove(0);
            left_at.push(Some(Instant::now()));
            closers.push(std::thread::spawn(move || drop(leaving)));
        } else {
            left_at.push(None);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(opts.timeout);
    while after_leave
        .iter()
        .zip(&left_at)
        .any(|(a, l)| a.is_none() && l.is_some())
    {
        if Instant::now() > deadline {
            bail!("groups did not rebalance after a member left");
        }
        for (g, members) in groups.iter().enumerate() {
            if let (None, Some(at)) = (after_leave[g], left_at[g]) {
                if settled(&holdings(members), partitions) {
                    after_leave[g] = Some(at.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for closer in closers {
        let _ = closer.join();
    }
    let after_leave: Vec<Duration> = after_leave.into_iter().flatten().collect();
    println!();
    println!(
        "{} groups x {} members, topic {} with {partitions} partitions, assignor {}",
        opts.groups, opts.members, opts.topic, opts.assignor
    );
    println!(
        "{:<18} {:>6}  {:>8}  {:>8}  {:>8}",
        "phase", "groups", "p50 ms", "p99 ms", "max ms"
    );
    println!("{}", "-".repeat(56));
    println!("{}", summary("first assignment", first));
    if !after_leave.is_empty() {
        println!("{}", summary("after a leave", after_leave));
    }
    Ok(())
}
