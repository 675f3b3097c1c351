//! Producer basics: plain, keyed and JSON records, each send waiting for its delivery report,
//! and which partition each key lands in (the same key always lands in the same partition).
//!
//! Run a broker (`cargo run --release -- serve`), then:
//!     cargo run --release -p caudal-examples --example producer -- --topic rust-demo --count 6

use std::time::Duration;

use anyhow::Context;
use caudal_examples::{arg, bootstrap};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let topic = arg("--topic", "rust-demo");
    let count: usize = arg("--count", "6")
        .parse()
        .context("--count takes a number")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .create()
        .context("creating the producer")?;
    let send = |key: Option<String>, value: String| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let mut record = FutureRecord::to(&topic).payload(&value);
            if let Some(k) = &key {
                record = record.key(k);
            }
            let delivery = producer
                .send(record, Timeout::After(Duration::from_secs(10)))
                .await;
            match delivery {
                Ok(d) => {
                    println!(
                        "delivered key={} value={value} partition={} offset={}",
                        key.as_deref().unwrap_or("-"),
                        d.partition,
                        d.offset
                    );
                    Ok(())
                }
                Err((e, _)) => Err(anyhow::anyhow!("delivery failed: {e}")),
            }
        }
    };
    println!("plain text:");
    for i in 0..count {
        send(None, format!("hello {i}")).await?;
    }
    println!("keyed (the same key always lands in the same partition):");
    for i in 0..count {
        send(Some(format!("user-{}", i % 3)), format!("event {i}")).await?;
    }
    println!("JSON:");
    for i in 0..count {
        send(
            Some(format!("sensor-{}", i % 2)),
            format!(
                "{{\"sensor\": {}, \"celsius\": {:.1}}}",
                i % 2,
                20.0 + i as f64 / 2.0
            ),
        )
        .await?;
    }
    println!("done: {} records", 3 * count);
    Ok(())
}
