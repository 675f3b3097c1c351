//! `caudal-bench transactional`: the produce mode inside transactions, committed every
//! --commit-interval-ms, with the time each commit takes.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use rdkafka::bindings as rdsys;
use rdkafka::producer::{Producer, ThreadedProducer};

use crate::{
    producer_config, send_numbered, throughput_payload, BenchContext, Opts, Percentiles, Progress,
    Row,
};

#[derive(Args, Debug, Clone)]
pub(crate) struct TxnOpts {
    #[command(flatten)]
    pub(crate) opts: Opts,

    /// Commit the open transaction once it has been open this long, and begin the next
    #[arg(long, default_value_t = 100)]
    pub(crate) commit_interval_ms: u64,

    /// transactional.id of the producer
    #[arg(long, default_value = "caudal-bench")]
    pub(crate) transactional_id: String,
}

/// How long a transaction call may take before the benchmark gives up.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn run(t: &TxnOpts, partitions: usize) -> Result<Row> {
    let opts = &t.opts;
    let mut config = producer_config(opts, opts.linger_ms);
    // librdkafka wants message.timeout.ms (120 s here) within transaction.timeout.ms.
    config
        .set("transactional.id", &t.transactional_id)
        .set("transaction.timeout.ms", "120000")
        .set("acks", "all");
    let producer: ThreadedProducer<BenchContext> = config
        .create_with_context(BenchContext::new("producer"))
        .context("creating the transactional producer")?;
    producer
        .client()
        .fetch_metadata(Some(&opts.topic), Duration::from_secs(30))
        .context("producer metadata")?;
    producer
        .init_transactions(TXN_TIMEOUT)
        .context("init_transactions")?;

    let mut payload = throughput_payload(opts.size);
    let interval = Duration::from_millis(t.commit_interval_ms);
    eprintln!(
        "producing {} records of {} B to {} in transactions committed every {} ms \
         (acks=all, linger.ms={})",
        opts.messages, opts.size, opts.topic, t.commit_interval_ms, opts.linger_ms
    );
    let ctx = producer.context();
    let mut commits: Vec<u64> = Vec::new();
    let mut progress = Progress::new(opts.stall_timeout);
    let start = Instant::now();
    // When the open transaction began; one begins with its first record.
    let mut opened: Option<Instant> = None;
    for i in 0..opts.messages {
        if opened.is_none() {
            producer.begin_transaction().context("begin_transaction")?;
            opened = Some(Instant::now());
        }
        send_numbered(&producer, &opts.topic, &mut payload, i, &mut progress)?;
        if opened.is_some_and(|at| at.elapsed() >= interval) {
            commits.push(commit(&producer)?);
            opened = None;
        }
    }
    if opened.is_some() {
        commits.push(commit(&producer)?);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Row {
        test: "transactional".into(),
        messages: opts.messages,
        size: opts.size,
        acks: "all".into(),
        partitions,
        seconds,
        bytes: opts.messages * opts.size as u64,
        errors: ctx.failed.load(std::sync::atomic::Ordering::Relaxed),
        commit_latency: Percentiles::from_nanos(&mut commits),
        commits: commits.len() as u64,
        ..Default::default()
    })
}

/// Commits the open transaction (librdkafka first waits for every record of it to be
/// acknowledged) and returns how long that took, in nanoseconds.
///
/// Calls librdkafka directly: the rdkafka crate's `commit_transaction` first flushes by polling
/// in steps of 100 ms, which on a `ThreadedProducer` (whose own thread serves the events) adds
/// up to 100 ms to every commit. librdkafka's own commit waits for the deliveries itself.
fn commit(producer: &ThreadedProducer<BenchContext>) -> Result<u64> {
    let began = Instant::now();
    let timeout_ms = i32::try_from(TXN_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the producer's handle is alive for the call; a returned error object is owned
    // by us and destroyed after its message is copied.
    unsafe {
        let error = rdsys::rd_kafka_commit_transaction(producer.client().native_ptr(), timeout_ms);
        if !error.is_null() {
            let message = CStr::from_ptr(rdsys::rd_kafka_error_string(error))
                .to_string_lossy()
                .into_owned();
            rdsys::rd_kafka_error_destroy(error);
            bail!("commit_transaction: {message}");
        }
    }
    Ok(began.elapsed().as_nanos() as u64)
}
