//! Consumer basics: subscribe with a consumer group and poll, starting from the earliest offset
//! (or the latest with `--from latest`), committing after each record is processed
//! (at-least-once). Stops after `--count` records or `--idle-secs` without any.
//!
//! Run a broker and the producer example first, then:
//!     cargo run --release -p caudal-examples --example consumer -- --topic rust-demo --count 18

use std::time::{Duration, Instant};

use anyhow::Context;
use caudal_examples::{arg, bootstrap};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::Message;

fn main() -> anyhow::Result<()> {
    let topic = arg("--topic", "rust-demo");
    let group = arg("--group", "rust-demo-group");
    let from = arg("--from", "earliest");
    let count: usize = arg("--count", "18")
        .parse()
        .context("--count takes a number")?;
    let idle = Duration::from_secs(
        arg("--idle-secs", "10")
            .parse()
            .context("--idle-secs takes a number")?,
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &group)
        .set("auto.offset.reset", &from)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the consumer")?;
    consumer.subscribe(&[&topic]).context("subscribing")?;
    println!("consuming {topic} as group {group}, starting from the {from} offset when nothing is committed");
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < count && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => eprintln!("error: {e}"),
            Some(Ok(m)) => {
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_else(|| "-".into());
                let value = m
                    .payload()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| "null".into());
                println!(
                    "partition={} offset={} key={key} value={value}",
                    m.partition(),
                    m.offset()
                );
                consumer
                    .commit_message(&m, CommitMode::Sync)
                    .context("committing")?;
                seen += 1;
                last = Instant::now();
            }
        }
    }
    println!("consumed {seen} records");
    Ok(())
}
