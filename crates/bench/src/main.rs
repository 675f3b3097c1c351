//! `caudal-bench`: throughput and latency load generator for Caudal (or any
//! Kafka-compatible broker), driven by librdkafka through the `rdkafka` crate.

mod groups;
mod transactions;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

const ABOUT: &str = "Throughput and end-to-end latency benchmark for Caudal, using librdkafka";

const LONG_ABOUT: &str = "\
Throughput and end-to-end latency benchmark for Caudal (or any Kafka-compatible
broker), using librdkafka as the client, in the spirit of Kafka's producer and
consumer perf tools.

Modes:
  produce   send --messages records of --size bytes as fast as librdkafka can
            (linger.ms=5, batches of up to 1 MB, a deep send queue, no
            compression) and wait for every delivery report; prints msgs/s
            and MB/s from the first send to the last acknowledgement.
  consume   read --messages records from the earliest offset with an assigned
            consumer (no consumer group is joined, no offsets committed; fetch
            sizes raised to 10 MB per partition) and drain librdkafka's queue
            in batches; prints msgs/s and MB/s from assignment to the last
            record. The topic must already hold the records (run produce first).
  latency   send --rate records per second for --duration seconds and receive
            them with a second client using default fetch settings; each record
            carries its send time, so the receiver measures produce() call to
            consumer delivery. Prints p50, p99, p99.9 and max, plus the
            producer's own send-to-acknowledgement latency.
  all       produce, then consume what was produced, then latency.
  transactional
            produce as above inside transactions (acks=all), committing every
            --commit-interval-ms; prints throughput and the p50/p99 time of a
            commit (commit_transaction, which first waits for every record of
            the transaction). Compare with `produce -X enable.idempotence=true`,
            and consume the topic with `-C isolation.level=read_committed`
            against `read_uncommitted`.

The topic is created (CreateTopics, replication factor 1) with --partitions
partitions if it does not exist. MB/s counts payload bytes only, 1 MB = 10^6
bytes. Any librdkafka property can be overridden with -X (producer) and
-C (consumer), e.g. -X linger.ms=20 -C fetch.wait.max.ms=100.

Reading the numbers: on a small machine the client shares the CPU with the
broker, so compare the broker's own CPU time (e.g. run it under
`/usr/bin/time -v`) with the wall time printed here. Failed deliveries or
consumer errors are counted in the errors column and make the exit status
non-zero.";

const EXAMPLES: &str = "\
Examples:
  # broker: caudal serve --listen 127.0.0.1:9092 --data-dir /tmp/caudal
  caudal-bench produce --topic b100 --messages 5000000 --size 100 --acks all
  caudal-bench consume --topic b100 --messages 5000000 --size 100
  caudal-bench latency --topic lat --rate 1000 --duration 10 --acks all
  caudal-bench all --bootstrap 127.0.0.1:9092 --topic t1k --messages 1000000 --size 1024
  caudal-bench transactional --topic txn --messages 2000000 --size 100 --commit-interval-ms 100
  caudal-bench consume --topic txn --messages 2000000 -C isolation.level=read_committed";

#[derive(Parser, Debug)]
#[command(name = "caudal-bench", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Produce --messages records of --size bytes as fast as possible
    #[command(after_help = EXAMPLES)]
    Produce(Opts),
    /// Consume --messages records from the earliest offset
    #[command(after_help = EXAMPLES)]
    Consume(Opts),
    /// Measure end-to-end latency at a fixed --rate for --duration seconds
    #[command(after_help = EXAMPLES)]
    Latency(Opts),
    /// Run produce, consume and latency in turn and print one table
    #[command(after_help = EXAMPLES)]
    All(Opts),
    /// Time consumer groups from subscribe to assignment, and rebalances after a member leaves
    Groups(groups::GroupOpts),
    /// Produce inside transactions committed every --commit-interval-ms; time each commit
    #[command(after_help = EXAMPLES)]
    Transactional(transactions::TxnOpts),
}

#[derive(Args, Debug, Clone)]
struct Opts {
    /// Broker to connect to (bootstrap.servers)
    #[arg(long, default_value = "127.0.0.1:9092", env = "CAUDAL_BENCH_BOOTSTRAP")]
    bootstrap: String,

    /// Topic to use; created if missing
    #[arg(long, default_value = "caudal-bench")]
    topic: String,

    /// Records to produce / consume (produce, consume, all)
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,

    /// Payload size of each record in bytes (no key, no headers)
    #[arg(long, default_value_t = 100)]
    size: usize,

    /// Producer acknowledgements: all (-1), 1 (leader) or 0 (none)
    #[arg(long, value_enum, default_value_t = Acks::All)]
    acks: Acks,

    /// Partitions of the topic when it has to be created
    #[arg(long, default_value_t = 1)]
    partitions: i32,

    /// latency: records per second
    #[arg(long, default_value_t = 1000)]
    rate: u64,

    /// latency: seconds of measured traffic
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// produce: linger.ms of the throughput producer
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,

    /// latency: linger.ms of the latency producer (0 sends each record at once)
    #[arg(long, default_value_t = 0)]
    latency_linger_ms: u32,

    /// consume: how records are taken from librdkafka: `batch` drains the
    /// consumer queue with rd_kafka_consume_batch_queue (least client
    /// overhead); `poll` calls the rdkafka crate's poll() once per record
    #[arg(long, value_enum, default_value_t = ConsumeApi::Batch)]
    consume_api: ConsumeApi,

    /// Give up when no progress is made for this many seconds
    #[arg(long, default_value_t = 60)]
    stall_timeout: u64,

    /// Extra librdkafka producer property KEY=VALUE (repeatable), applied last
    #[arg(short = 'X', long = "producer-prop", value_name = "KEY=VALUE")]
    producer_props: Vec<String>,

    /// Extra librdkafka consumer property KEY=VALUE (repeatable), applied last
    #[arg(short = 'C', long = "consumer-prop", value_name = "KEY=VALUE")]
    consumer_props: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Acks {
    #[value(name = "all", alias = "-1")]
    All,
    #[value(name = "1")]
    One,
    #[value(name = "0")]
    Zero,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumeApi {
    Batch,
    Poll,
}

impl Acks {
    fn as_config(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::One => "1",
            Acks::Zero => "0",
        }
    }
}

/// One line of the results table.
#[derive(Debug, Default, Clone)]
struct Row {
    test: String,
    messages: u64,
    size: usize,
    acks: String,
    partitions: usize,
    seconds: f64,
    bytes: u64,
    errors: u64,
    latency: Option<Percentiles>,
    ack_latency: Option<Percentiles>,
    /// Transactions committed, and the time each commit took (transactional mode).
    commits: u64,
    commit_latency: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of nanosecond samples, returned in milliseconds.
    fn from_nanos(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1] as f64 / 1e6
        };
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: *samples.last().unwrap() as f64 / 1e6,
        })
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (mode, opts) = match &cli.mode {
        Mode::Groups(g) => {
            return groups::run(g, |bootstrap, topic, partitions| {
                let cli = Cli::parse_from([
                    "caudal-bench",
                    "produce",
                    "--bootstrap",
                    bootstrap,
                    "--topic",
                    topic,
                    "--partitions",
                    &partitions.to_string(),
                ]);
                match cli.mode {
                    Mode::Produce(o) => ensure_topic(&o),
                    _ => bail!("internal: topic options did not parse"),
                }
            });
        }
        Mode::Transactional(t) => {
            validate(&t.opts)?;
            let partitions = ensure_topic(&t.opts)?;
            let row = transactions::run(t, partitions)?;
            println!();
            print!("{}", render_table(std::slice::from_ref(&row)));
            if row.errors > 0 {
                bail!("some records failed; see the errors column and the messages above");
            }
            return Ok(());
        }
        Mode::Produce(o) => ("produce", o),
        Mode::Consume(o) => ("consume", o),
        Mode::Latency(o) => ("latency", o),
        Mode::All(o) => ("all", o),
    };
    validate(opts)?;
    let partitions = ensure_topic(opts)?;
    let mut rows = Vec::new();
    if matches!(mode, "produce" | "all") {
        rows.push(run_produce(opts, partitions)?);
    }
    if matches!(mode, "consume" | "all") {
        rows.push(run_consume(opts, partitions)?);
    }
    if matches!(mode, "latency" | "all") {
        rows.push(run_latency(opts, partitions)?);
    }
    println!();
    print!("{}", render_table(&rows));
    if rows.iter().any(|r| r.errors > 0) {
        bail!("some records failed; see the errors column and the messages above");
    }
    Ok(())
}

fn validate(opts: &Opts) -> Result<()> {
    if opts.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    if opts.rate == 0 {
        bail!("--rate must be at least 1");
    }
    if opts.duration.is_nan() || opts.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    for kv in opts.producer_props.iter().chain(&opts.consumer_props) {
        if !kv.contains('=') {
            bail!("property {kv:?} is not KEY=VALUE");
        }
    }
    Ok(())
}

fn apply_props(config: &mut ClientConfig, props: &[String]) {
    for kv in props {
        let (k, v) = kv.split_once('=').expect("validated");
        config.set(k, v);
    }
}

/// Logs librdkafka warnings and errors to stderr, and counts delivery
/// outcomes when used by a producer.
#[derive(Default)]
struct BenchContext {
    name: &'static str,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Send-to-acknowledgement latencies, only collected by the latency producer.
    ack_nanos: Option<Mutex<Vec<u64>>>,
}

impl BenchContext {
    fn new(name: &'static str) -> Self {
        BenchContext {
            name,
            ..Default::default()
        }
    }
}

impl ClientContext for BenchContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        ) {
            eprintln!("[{} librdkafka {level:?}] {fac}: {log_message}", self.name);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("[{} librdkafka error] {error}: {reason}", self.name);
    }
}

impl ConsumerContext for BenchContext {}

impl ProducerContext for BenchContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if let (Some(acks), Some(payload)) = (&self.ack_nanos, msg.payload()) {
                    if let Some(sent) = stamp_of(payload) {
                        if read_u64(payload, 16) != WARMUP_SEQ {
                            acks.lock().unwrap().push(now_nanos().saturating_sub(sent));
                        }
                    }
                }
            }
            Err((err, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap();
                if first.is_none() {
                    eprintln!("[{}] delivery failed: {err}", self.name);
                    *first = Some(err.to_string());
                }
            }
        }
    }
}

/// Monotonic nanoseconds since the first call; producer and consumer live in
/// this one process, so they share the clock.
fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latency records start with an 8-byte magic, the send time and a sequence number.
const STAMP_MAGIC: u64 = 0xCA0D_A1BE_1C40_0001;
const STAMP_LEN: usize = 24;
const WARMUP_SEQ: u64 = u64::MAX;

fn write_stamp(buf: &mut [u8], seq: u64) {
    buf[0..8].copy_from_slice(&STAMP_MAGIC.to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&now_nanos().to_le_bytes());
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    (payload.len() >= STAMP_LEN && read_u64(payload, 0) == STAMP_MAGIC)
        .then(|| read_u64(payload, 8))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Creates the topic if it does not exist and returns its partition count.
fn ensure_topic(opts: &Opts) -> Result<usize> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &opts.bootstrap)
        .create()
        .context("creating the admin client")?;
    let topic = NewTopic::new(&opts.topic, opts.partitions, TopicReplication::Fixed(1));
    let admin_opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime()?
        .block_on(admin.create_topics([&topic], &admin_opts))
        .with_context(|| format!("CreateTopics for {:?} at {}", opts.topic, opts.bootstrap))?;
    for result in results {
        match result {
            Ok(name) => eprintln!("created topic {name} with {} partition(s)", opts.partitions),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("could not create topic {name}: {code}"),
        }
    }
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&opts.topic), Duration::from_secs(30))
        .context("fetching topic metadata")?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == opts.topic)
        .ok_or_else(|| anyhow!("topic {} missing from metadata", opts.topic))?;
    if let Some(err) = t.error() {
        bail!("metadata for {}: {:?}", opts.topic, err);
    }
    let partitions = t.partitions().len();
    if partitions != opts.partitions as usize {
        eprintln!(
            "note: topic {} already exists with {partitions} partition(s); --partitions {} ignored",
            opts.topic, opts.partitions
        );
    }
    Ok(partitions)
}

fn producer_config(opts: &Opts, linger_ms: u32) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &opts.bootstrap)
        .set("acks", opts.acks.as_config())
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "none")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097152")
        .set("message.timeout.ms", "120000");
    apply_props(&mut c, &opts.producer_props);
    c
}

fn consumer_config(opts: &Opts, throughput: bool) -> ClientConfig {
    let mut c = ClientConfig::new();
    // librdkafka only lets a consumer with a group.id call assign(); the group
    // is never joined (no subscribe) and no offsets are committed.
    c.set("bootstrap.servers", &opts.bootstrap)
        .set("group.id", "caudal-bench")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    if throughput {
        c.set("max.partition.fetch.bytes", "10485760")
            .set("fetch.max.bytes", "52428800")
            .set("queued.min.messages", "1000000");
    }
    apply_props(&mut c, &opts.consumer_props);
    c
}

fn run_produce(opts: &Opts, partitions: usize) -> Result<Row> {
    let ctx = BenchContext::new("producer");
    // A ThreadedProducer serves delivery reports on its own thread, which
    // blocks while idle (BaseProducer::poll spins through sub-millisecond
    // waits, which would take a core away from the broker on small machines).
    let producer: ThreadedProducer<BenchContext> = producer_config(opts, opts.linger_ms)
        .create_with_context(ctx)
        .context("creating the producer")?;
    // Connect and learn the topic's leader before the clock starts.
    producer
        .client()
        .fetch_metadata(Some(&opts.topic), Duration::from_secs(30))
        .context("producer metadata")?;

    let mut payload = throughput_payload(opts.size);
    eprintln!(
        "producing {} records of {} B to {} (acks={}, linger.ms={})",
        opts.messages,
        opts.size,
        opts.topic,
        opts.acks.as_config(),
        opts.linger_ms
    );
    let ctx = producer.context();
    let start = Instant::now();
    let mut progress = Progress::new(opts.stall_timeout);
    for i in 0..opts.messages {
        send_numbered(&producer, &opts.topic, &mut payload, i, &mut progress)?;
    }
    while done(ctx) < opts.messages {
        thread::sleep(Duration::from_micros(200));
        progress.check(done(ctx), "waiting for delivery reports")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let errors = ctx.failed.load(Ordering::Relaxed);
    Ok(Row {
        test: "produce".into(),
        messages: opts.messages,
        size: opts.size,
        acks: opts.acks.as_config().into(),
        partitions,
        seconds,
        bytes: opts.messages * opts.size as u64,
        errors,
        ..Default::default()
    })
}

/// The payload of the throughput modes: letters, the first 8 bytes overwritten by a number.
fn throughput_payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Sends record number `i` (in the payload's first 8 bytes), waiting while librdkafka's queue is
/// full; fails if deliveries stop for --stall-timeout.
fn send_numbered(
    producer: &ThreadedProducer<BenchContext>,
    topic: &str,
    payload: &mut [u8],
    i: u64,
    progress: &mut Progress,
) -> Result<()> {
    if payload.len() >= 8 {
        payload[0..8].copy_from_slice(&i.to_le_bytes());
    }
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(&payload[..]);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                thread::sleep(Duration::from_micros(200));
                progress.check(
                    done(producer.context()),
                    "producer queue full, no deliveries",
                )?;
            }
            Err((e, _)) => return Err(e).context("send"),
        }
    }
}

fn done(ctx: &BenchContext) -> u64 {
    ctx.delivered.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed)
}

/// Fails when a counter stops moving for too long.
struct Progress {
    last_value: u64,
    last_change: Instant,
    limit: Duration,
}

impl Progress {
    fn new(stall_secs: u64) -> Self {
        Progress {
            last_value: 0,
            last_change: Instant::now(),
            limit: Duration::from_secs(stall_secs),
        }
    }

    fn check(&mut self, value: u64, what: &str) -> Result<()> {
        if value != self.last_value {
            self.last_value = value;
            self.last_change = Instant::now();
        } else if self.last_change.elapsed() > self.limit {
            bail!(
                "no progress for {:?} ({what}; count stuck at {value})",
                self.limit
            );
        }
        Ok(())
    }
}

fn assign_all(
    consumer: &BaseConsumer<BenchContext>,
    topic: &str,
    partitions: usize,
    offset_of: impl Fn(i32) -> Result<Offset>,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, offset_of(p)?)?;
    }
    consumer.assign(&tpl).context("assign")?;
    Ok(())
}

fn watermarks(consumer: &BaseConsumer<BenchContext>, topic: &str, p: i32) -> Result<(i64, i64)> {
    consumer
        .fetch_watermarks(topic, p, Duration::from_secs(30))
        .with_context(|| format!("ListOffsets for {topic}/{p}"))
}

fn run_consume(opts: &Opts, partitions: usize) -> Result<Row> {
    let consumer: BaseConsumer<BenchContext> = consumer_config(opts, true)
        .create_with_context(BenchContext::new("consumer"))
        .context("creating the consumer")?;
    let mut available = 0u64;
    for p in 0..partitions as i32 {
        let (low, high) = watermarks(&consumer, &opts.topic, p)?;
        available += (high - low).max(0) as u64;
    }
    let target = opts.messages.min(available);
    if target < opts.messages {
        eprintln!(
            "note: topic {} holds only {available} records; consuming those",
            opts.topic
        );
    }
    eprintln!(
        "consuming {target} records from the beginning of {}",
        opts.topic
    );
    let start = Instant::now();
    assign_all(&consumer, &opts.topic, partitions, |_| {
        Ok(Offset::Beginning)
    })?;
    let (mut count, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut progress = Progress::new(opts.stall_timeout);
    match opts.consume_api {
        ConsumeApi::Batch => {
            let mut reader = BatchReader::new(&consumer, 10_000)?;
            while count < target {
                let got = reader.read(Duration::from_millis(100), |record| match record {
                    Ok(len) => {
                        count += 1;
                        bytes += len as u64;
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("consumer error: {e}");
                    }
                })?;
                if got == 0 {
                    progress.check(count, "consuming")?;
                }
            }
        }
        ConsumeApi::Poll => {
            while count < target {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(msg)) => {
                        count += 1;
                        bytes += msg.payload_len() as u64;
                    }
                    Some(Err(e)) => {
                        errors += 1;
                        eprintln!("consumer error: {e}");
                    }
                    None => progress.check(count, "consuming")?,
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Row {
        test: "consume".into(),
        messages: count,
        size: bytes.checked_div(count).unwrap_or(0) as usize,
        acks: "-".into(),
        partitions,
        seconds,
        bytes,
        errors,
        ..Default::default()
    })
}

/// Reads records from a consumer's queue many at a time through librdkafka's
/// batch API, which costs far less per record than one poll per record.
struct BatchReader<'a> {
    queue: *mut rdsys::rd_kafka_queue_t,
    slots: Vec<*mut rdsys::rd_kafka_message_t>,
    /// The queue belongs to this consumer, which must outlive the reader.
    _consumer: std::marker::PhantomData<&'a BaseConsumer<BenchContext>>,
}

impl<'a> BatchReader<'a> {
    fn new(consumer: &'a BaseConsumer<BenchContext>, batch: usize) -> Result<Self> {
        // SAFETY: the client pointer is valid while `consumer` lives; the
        // returned queue holds its own reference, released in Drop.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        if queue.is_null() {
            bail!("librdkafka returned no consumer queue");
        }
        Ok(BatchReader {
            queue,
            slots: vec![std::ptr::null_mut(); batch],
            _consumer: std::marker::PhantomData,
        })
    }

    /// Waits up to `timeout` for records, hands each one's payload length (or
    /// its error) to `each`, and returns how many records were taken.
    fn read(
        &mut self,
        timeout: Duration,
        mut each: impl FnMut(Result<usize, String>),
    ) -> Result<usize> {
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `slots` has room for `slots.len()` message pointers.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                self.slots.as_mut_ptr(),
                self.slots.len(),
            )
        };
        if n < 0 {
            bail!("rd_kafka_consume_batch_queue failed");
        }
        let n = n as usize;
        for &msg in &self.slots[..n] {
            // SAFETY: librdkafka filled the first `n` slots with messages we
            // now own; each is destroyed exactly once, right after use.
            unsafe {
                let m = &*msg;
                if m.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    each(Ok(m.len));
                } else {
                    let text = std::ffi::CStr::from_ptr(rdsys::rd_kafka_err2str(m.err));
                    each(Err(text.to_string_lossy().into_owned()));
                }
                rdsys::rd_kafka_message_destroy(msg);
            }
        }
        Ok(n)
    }
}

impl Drop for BatchReader<'_> {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `new`.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) }
    }
}

fn run_latency(opts: &Opts, partitions: usize) -> Result<Row> {
    let size = opts.size.max(STAMP_LEN);
    if size != opts.size {
        eprintln!("note: latency records need {STAMP_LEN} bytes; using --size {size}");
    }
    let total = ((opts.rate as f64) * opts.duration).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / opts.rate as f64);

    let consumer: BaseConsumer<BenchContext> = consumer_config(opts, false)
        .create_with_context(BenchContext::new("latency consumer"))
        .context("creating the consumer")?;
    // Start exactly at today's end of each partition, so no earlier record is seen.
    assign_all(&consumer, &opts.topic, partitions, |p| {
        Ok(Offset::Offset(watermarks(&consumer, &opts.topic, p)?.1))
    })?;

    let mut ctx = BenchContext::new("latency producer");
    ctx.ack_nanos = Some(Mutex::new(Vec::with_capacity(total as usize)));
    let producer: ThreadedProducer<BenchContext> = producer_config(opts, opts.latency_linger_ms)
        .create_with_context(ctx)
        .context("creating the producer")?;

    let warmed_up = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer_thread = {
        let warmed_up = warmed_up.clone();
        let stop = stop.clone();
        thread::Builder::new()
            .name("latency-consumer".into())
            .spawn(move || -> Result<(Vec<u64>, u64)> {
                let mut samples = Vec::with_capacity(total as usize);
                let mut errors = 0;
                while (samples.len() as u64) < total && !stop.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(50)) {
                        Some(Ok(msg)) => {
                            let received = now_nanos();
                            let Some(payload) = msg.payload() else {
                                continue;
                            };
                            let Some(sent) = stamp_of(payload) else {
                                continue;
                            };
                            if read_u64(payload, 16) == WARMUP_SEQ {
                                warmed_up.store(true, Ordering::Release);
                            } else {
                                samples.push(received.saturating_sub(sent));
                            }
                        }
                        Some(Err(e)) => {
                            errors += 1;
                            eprintln!("latency consumer error: {e}");
                        }
                        None => {}
                    }
                }
                Ok((samples, errors))
            })?
    };

    let mut payload = vec![0u8; size];
    // Warm-up: one record on each partition must make the whole trip first.
    let deadline = Instant::now() + Duration::from_secs(opts.stall_timeout);
    for p in 0..partitions as i32 {
        write_stamp(&mut payload, WARMUP_SEQ);
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&opts.topic)
                    .partition(p)
                    .payload(&payload[..]),
            )
            .map_err(|(e, _)| e)
            .context("warm-up send")?;
    }
    while !warmed_up.load(Ordering::Acquire) || done(producer.context()) < partitions as u64 {
        thread::sleep(Duration::from_millis(1));
        if Instant::now() > deadline || consumer_thread.is_finished() {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "warm-up record did not come back within {:?}",
                opts.stall_timeout
            );
        }
    }
    let warm_delivered = done(producer.context());

    eprintln!(
        "latency: {total} records of {size} B at {} msg/s to {} (acks={}, linger.ms={})",
        opts.rate,
        opts.topic,
        opts.acks.as_config(),
        opts.latency_linger_ms
    );
    let start = Instant::now();
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        // Sleep (rather than spin) until the record is due, leaving the
        // CPU to the broker.
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        write_stamp(&mut payload, i);
        let mut record = BaseRecord::<[u8], [u8]>::to(&opts.topic).payload(&payload[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e).context("send");
                }
            }
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();
    let mut progress = Progress::new(opts.stall_timeout);
    while done(producer.context()) - warm_delivered < total {
        thread::sleep(Duration::from_millis(1));
        if let Err(e) = progress.check(done(producer.context()), "waiting for delivery reports") {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    }
    // The consumer stops by itself once it has every record; bound the wait.
    let deadline = Instant::now() + Duration::from_secs(opts.stall_timeout);
    while !consumer_thread.is_finished() {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(5));
    }
    let (mut samples, consumer_errors) = consumer_thread
        .join()
        .map_err(|_| anyhow!("latency consumer panicked"))??;
    let received = samples.len() as u64;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if received < total {
        eprintln!("latency: only {received} of {total} records came back");
    }
    let mut acks = std::mem::take(
        &mut *producer
            .context()
            .ack_nanos
            .as_ref()
            .unwrap()
            .lock()
            .unwrap(),
    );
    Ok(Row {
        test: "latency".into(),
        messages: received,
        size,
        acks: opts.acks.as_config().into(),
        partitions,
        seconds: send_seconds,
        bytes: received * size as u64,
        errors: failed + consumer_errors + (total - received.min(total)),
        latency: Percentiles::from_nanos(&mut samples),
        ack_latency: Percentiles::from_nanos(&mut acks),
        ..Default::default()
    })
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render_table(rows: &[Row]) -> String {
    let header = [
        "test", "records", "size B", "acks", "parts", "seconds", "msgs/s", "MB/s", "errors",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let rate = if r.seconds > 0.0 {
            r.messages as f64 / r.seconds
        } else {
            0.0
        };
        let mbps = if r.seconds > 0.0 {
            r.bytes as f64 / r.seconds / 1e6
        } else {
            0.0
        };
        lines.push(vec![
            r.test.clone(),
            thousands(r.messages),
            r.size.to_string(),
            r.acks.clone(),
            r.partitions.to_string(),
            format!("{:.2}", r.seconds),
            thousands(rate.round() as u64),
            format!("{mbps:.1}"),
            r.errors.to_string(),
        ]);
    }
    let mut out = grid(&lines);
    let lat: Vec<&Row> = rows
        .iter()
        .filter(|r| r.latency.is_some() || r.ack_latency.is_some() || r.commit_latency.is_some())
        .collect();
    if !lat.is_empty() {
        let mut lines = vec![["latency (ms)", "samples", "p50", "p99", "p99.9", "max"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()];
        for r in lat {
            for (name, p, samples) in [
                ("end-to-end (send -> consume)", r.latency, r.messages),
                ("producer ack (send -> ack)", r.ack_latency, r.messages),
                ("transaction commit", r.commit_latency, r.commits),
            ] {
                if let Some(p) = p {
                    lines.push(vec![
                        name.to_string(),
                        thousands(samples),
                        format!("{:.3}", p.p50),
                        format!("{:.3}", p.p99),
                        format!("{:.3}", p.p999),
                        format!("{:.3}", p.max),
                    ]);
                }
            }
        }
        out.push('\n');
        out.push_str(&grid(&lines));
    }
    out
}

/// Formats rows as an aligned text table; the first row is the header.
fn grid(lines: &[Vec<String>]) -> String {
    let cols = lines[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        for (c, cell) in line.iter().enumerate() {
            let sep = if c == 0 { "" } else { "  " };
            if c == 0 {
                let _ = write!(out, "{sep}{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(out, "{sep}{cell:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (cols - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        let p = Percentiles::from_nanos(&mut v).unwrap();
        assert_eq!(p.p50, 500.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.p999, 999.0);
        assert_eq!(p.max, 1000.0);
        assert!(Percentiles::from_nanos(&mut []).is_none());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(5_000_000), "5,000,000");
    }

    #[test]
    fn stamps_round_trip() {
        let mut buf = vec![0u8; 100];
        write_stamp(&mut buf, 7);
        assert!(stamp_of(&buf).is_some());
        assert_eq!(read_u64(&buf, 16), 7);
        assert!(stamp_of(&buf[..10]).is_none());
        assert!(stamp_of(&[0u8; 24]).is_none());
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "caudal-bench",
            "produce",
            "--topic",
            "t",
            "--messages",
            "10",
            "--acks",
            "0",
            "-X",
            "linger.ms=1",
        ])
        .unwrap();
        let Mode::Produce(o) = cli.mode else { panic!() };
        assert_eq!(o.acks, Acks::Zero);
        assert_eq!(o.messages, 10);
        assert_eq!(o.producer_props, vec!["linger.ms=1".to_string()]);
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
