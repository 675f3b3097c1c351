//! Transactions with the rdkafka crate: a transactional producer commits one batch of records
//! and aborts another; a `read_committed` consumer sees only the committed ones, a
//! `read_uncommitted` one sees both.
//!
//! Run a broker (`cargo run --release -- serve`), then:
//!     cargo run --release -p caudal-examples --example transactions -- --topic rust-txn

use std::time::Duration;

use anyhow::Context;
use caudal_examples::{arg, bootstrap};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn read_all(topic: &str, isolation: &str) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", "caudal-examples-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .context("creating the consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(values),
            Some(Err(e)) => anyhow::bail!("consumer error: {e}"),
            Some(Ok(m)) => {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
        }
    }
    anyhow::bail!("did not reach the end of {topic} within {TIMEOUT:?}")
}

fn main() -> anyhow::Result<()> {
    let topic = arg("--topic", "rust-txn");
    let txn_id = arg("--transactional-id", "rust-txn-example");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", &txn_id)
        .create()
        .context("creating the transactional producer")?;
    producer.init_transactions(TIMEOUT)?;

    producer.begin_transaction()?;
    for i in 0..3 {
        producer
            .send(BaseRecord::<(), _>::to(&topic).payload(&format!("committed {i}")))
            .map_err(|(e, _)| e)?;
    }
    producer.commit_transaction(TIMEOUT)?;
    println!("committed 3 records");

    producer.begin_transaction()?;
    for i in 0..2 {
        producer
            .send(BaseRecord::<(), _>::to(&topic).payload(&format!("aborted {i}")))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(TIMEOUT)?;
    producer.abort_transaction(TIMEOUT)?;
    println!("aborted 2 records");

    let committed = read_all(&topic, "read_committed")?;
    let everything = read_all(&topic, "read_uncommitted")?;
    println!("read_committed sees {}: {committed:?}", committed.len());
    println!("read_uncommitted sees {}: {everything:?}", everything.len());
    Ok(())
}
