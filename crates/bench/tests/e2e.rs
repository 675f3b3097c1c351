//! End-to-end tests: the real `caudal` broker binary, driven by librdkafka.
//!
//! The broker is taken from `CAUDAL_BIN`, or `target/release/caudal` at the
//! workspace root; build it first with `cargo build --release`. Each test
//! starts its own broker on a free loopback port with a temporary data
//! directory and kills it when the test ends.

use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tempfile::TempDir;

/// How long any single wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn broker_bin() -> PathBuf {
    match std::env::var_os("CAUDAL_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/caudal"),
    }
}

/// A running broker; killed (and its data directory removed) on drop.
struct Broker {
    child: Child,
    addr: String,
    dir: TempDir,
}

impl Broker {
    fn start() -> Broker {
        let bin = broker_bin();
        assert!(
            bin.is_file(),
            "Caudal broker binary not found at {}: build it with `cargo build --release` \
             (or point CAUDAL_BIN at a caudal binary) before running these tests",
            bin.display()
        );
        // A port picked this way can be taken by someone else before the
        // broker binds it; try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let dir = tempfile::tempdir().expect("temp dir");
            let log = File::create(dir.path().join("broker.log")).expect("log file");
            let child = Command::new(&bin)
                .args(["serve", "--listen", &addr, "--data-dir"])
                .arg(dir.path().join("data"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut broker = Broker { child, addr, dir };
            let start = Instant::now();
            loop {
                if TcpStream::connect(&broker.addr).is_ok() {
                    return broker;
                }
                if let Some(status) = broker.child.try_wait().expect("try_wait") {
                    last_log = broker.log();
                    eprintln!("broker exited early ({status}); log:\n{last_log}");
                    break;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "broker did not accept connections on {} within {DEADLINE:?}; log:\n{}",
                    broker.addr,
                    broker.log()
                );
                // Poll interval while waiting for the port to open.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        panic!("could not start the broker; last log:\n{last_log}");
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("broker.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .expect("admin client")
    }

    fn create_topic(&self, topic: &str, partitions: i32) {
        let results = block_on(self.admin().create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(DEADLINE)),
        ))
        .expect("CreateTopics");
        assert_eq!(results, vec![Ok(topic.to_string())]);
    }

    fn producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.addr)
            .set("message.timeout.ms", "30000");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config.create().expect("producer")
    }

    fn consumer(&self, extra: &[(&str, &str)]) -> BaseConsumer {
        let mut config = ClientConfig::new();
        // librdkafka needs a group.id to allow assign(); no group is joined.
        config
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "caudal-e2e")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config.create().expect("consumer")
    }

    fn high_watermark(&self, topic: &str, partition: i32) -> i64 {
        self.consumer(&[])
            .fetch_watermarks(topic, partition, DEADLINE)
            .expect("watermarks")
            .1
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("broker log ({}):\n{}", self.addr, self.log());
        }
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A record to send and later compare with what comes back.
#[derive(Debug, Clone, PartialEq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    fn plain(value: impl Into<Vec<u8>>) -> Rec {
        Rec {
            key: None,
            value: value.into(),
            headers: vec![],
        }
    }

    fn of(msg: &OwnedMessage) -> Rec {
        Rec {
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().unwrap_or_default().to_vec(),
            headers: msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Sends all records to one partition, in order, and returns their offsets
/// (-1 where the broker sends no acknowledgement, as with acks=0).
fn produce(producer: &FutureProducer, topic: &str, partition: i32, records: &[Rec]) -> Vec<i64> {
    let mut pending = Vec::with_capacity(records.len());
    for rec in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_ref(),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(&rec.value)
            .headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(k);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueue record");
        pending.push(delivery);
    }
    block_on(async {
        let mut offsets = Vec::new();
        for (i, fut) in pending.into_iter().enumerate() {
            match fut.await.expect("delivery report") {
                Ok(d) => {
                    assert_eq!(d.partition, partition);
                    offsets.push(d.offset);
                }
                Err((e, _)) => panic!("record {i} was not delivered: {e}"),
            }
        }
        offsets
    })
}

/// Assigns one partition at `offset` and polls until `n` records arrived.
fn consume(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: Offset,
    n: usize,
) -> Vec<OwnedMessage> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, offset).unwrap();
    consumer.assign(&tpl).expect("assign");
    poll_n(consumer, n)
}

fn poll_n(consumer: &BaseConsumer, n: usize) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "got only {} of {n} records within {DEADLINE:?}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => out.push(msg.detach()),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
        }
    }
    out
}

fn assert_records(got: &[OwnedMessage], want: &[Rec], first_offset: i64) {
    assert_eq!(got.len(), want.len(), "record count");
    for (i, (msg, rec)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            msg.offset(),
            first_offset + i as i64,
            "offset of record {i}"
        );
        assert_eq!(&Rec::of(msg), rec, "record {i}");
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec::plain(format!("{prefix}-{i:06}")))
        .collect()
}

#[test]
fn admin_client_creates_topics() {
    let broker = Broker::start();
    broker.create_topic("created", 3);

    let admin = broker.admin();
    let metadata = admin
        .inner()
        .fetch_metadata(Some("created"), DEADLINE)
        .expect("metadata");
    let topic = &metadata.topics()[0];
    assert_eq!(topic.name(), "created");
    assert!(topic.error().is_none(), "{:?}", topic.error());
    let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);

    let again = block_on(admin.create_topics(
        [&NewTopic::new("created", 3, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(DEADLINE)),
    ))
    .expect("CreateTopics");
    assert_eq!(
        again,
        vec![Err((
            "created".to_string(),
            RDKafkaErrorCode::TopicAlreadyExists
        ))]
    );

    // Records land in the partition they are sent to.
    let producer = broker.producer(&[]);
    for p in 0..3 {
        produce(&producer, "created", p, &[Rec::plain(format!("p{p}"))]);
    }
    for p in 0..3 {
        let got = consume(&broker.consumer(&[]), "created", p, Offset::Beginning, 1);
        assert_records(&got, &[Rec::plain(format!("p{p}"))], 0);
    }
}

#[test]
fn plain_keyed_and_header_records_come_back_in_order() {
    let broker = Broker::start();
    broker.create_topic("mixed", 1);
    let mut records = Vec::new();
    for i in 0..30 {
        records.push(match i % 3 {
            0 => Rec::plain(format!("plain {i}")),
            1 => Rec {
                key: Some(format!("key-{i}").into_bytes()),
                value: format!("keyed {i}").into_bytes(),
                headers: vec![],
            },
            _ => Rec {
                key: Some(format!("k{i}").into_bytes()),
                value: vec![i as u8; 1 + i * 37],
                headers: vec![
                    ("trace".to_string(), Some(format!("t-{i}").into_bytes())),
                    ("empty".to_string(), Some(vec![])),
                    ("null".to_string(), None),
                    ("trace".to_string(), Some(b"duplicate key".to_vec())),
                ],
            },
        });
    }
    // An empty value too.
    records.push(Rec::plain(Vec::new()));

    let producer = broker.producer(&[("linger.ms", "20")]);
    let offsets = produce(&producer, "mixed", 0, &records);
    assert_eq!(offsets, (0..records.len() as i64).collect::<Vec<_>>());

    let got = consume(
        &broker.consumer(&[]),
        "mixed",
        0,
        Offset::Beginning,
        records.len(),
    );
    assert_records(&got, &records, 0);
    assert_eq!(broker.high_watermark("mixed", 0), records.len() as i64);
}

#[test]
fn consumer_from_end_sees_only_new_records() {
    let broker = Broker::start();
    broker.create_topic("tail", 1);
    let producer = broker.producer(&[]);
    let old = numbered("old", 50);
    produce(&producer, "tail", 0, &old);

    let consumer = broker.consumer(&[("enable.partition.eof", "true")]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tail", 0, Offset::End).unwrap();
    consumer.assign(&tpl).expect("assign");
    // The end-of-partition event proves the consumer has resolved "end" and
    // is fetching from there, so what is produced next is new to it.
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no end-of-partition event");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Err(KafkaError::PartitionEOF(0))) => break,
            Some(Ok(msg)) => panic!("consumer at end received old record {}", msg.offset()),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }

    let new = numbered("new", 20);
    produce(&producer, "tail", 0, &new);
    let got = poll_n(&consumer, new.len());
    assert_records(&got, &new, old.len() as i64);
}

#[test]
fn every_compression_codec_round_trips() {
    let broker = Broker::start();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        broker.create_topic(&topic, 1);
        // Compressible values, with keys and headers, batched by linger.ms.
        let records: Vec<Rec> = (0..500)
            .map(|i| Rec {
                key: Some(format!("key-{}", i % 7).into_bytes()),
                value: format!("{codec} record {i:05} ")
                    .repeat(1 + i % 20)
                    .into_bytes(),
                headers: vec![("n".to_string(), Some(i.to_string().into_bytes()))],
            })
            .collect();
        let producer = broker.producer(&[("compression.type", codec), ("linger.ms", "50")]);
        let offsets = produce(&producer, &topic, 0, &records);
        assert_eq!(offsets, (0..500).collect::<Vec<i64>>(), "{codec}");
        let got = consume(
            &broker.consumer(&[]),
            &topic,
            0,
            Offset::Beginning,
            records.len(),
        );
        assert_records(&got, &records, 0);
    }
}

#[test]
fn acks_zero_one_and_all_each_deliver() {
    let broker = Broker::start();
    for acks in ["0", "1", "all"] {
        let topic = format!("acks-{acks}");
        broker.create_topic(&topic, 1);
        let producer = broker.producer(&[("acks", acks)]);
        let records = numbered(&format!("acks={acks}"), 200);
        let offsets = produce(&producer, &topic, 0, &records);
        if acks != "0" {
            assert_eq!(offsets, (0..200).collect::<Vec<i64>>(), "acks={acks}");
        }
        let got = consume(
            &broker.consumer(&[]),
            &topic,
            0,
            Offset::Beginning,
            records.len(),
        );
        assert_records(&got, &records, 0);
        assert_eq!(broker.high_watermark(&topic, 0), 200, "acks={acks}");
    }
}

#[test]
fn idempotent_producer_delivers_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("idem", 1);
    let producer = broker.producer(&[
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("max.in.flight.requests.per.connection", "5"),
        ("linger.ms", "5"),
        ("batch.num.messages", "100"),
    ]);
    let records = numbered("idem", 3000);
    // In several rounds, so batches from the same producer id follow each
    // other with increasing sequence numbers.
    let mut offsets = Vec::new();
    for chunk in records.chunks(1000) {
        offsets.extend(produce(&producer, "idem", 0, chunk));
    }
    assert_eq!(offsets, (0..3000).collect::<Vec<i64>>());
    producer.flush(DEADLINE).expect("flush");
    drop(producer);

    assert_eq!(broker.high_watermark("idem", 0), 3000, "duplicates or gaps");
    let got = consume(
        &broker.consumer(&[]),
        "idem",
        0,
        Offset::Beginning,
        records.len(),
    );
    assert_records(&got, &records, 0);
}

/// Runs caudal-bench with `args`; its stdout, once it succeeded.
fn run_bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_caudal-bench"))
        .args(args)
        .output()
        .expect("run caudal-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "caudal-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

#[test]
fn bench_binary_runs_every_mode() {
    let broker = Broker::start();
    let stdout = run_bench(&[
        "all",
        "--bootstrap",
        &broker.addr,
        "--topic",
        "bench-smoke",
        "--messages",
        "20000",
        "--size",
        "200",
        "--rate",
        "500",
        "--duration",
        "1",
    ]);
    for needle in ["produce ", "consume ", "latency ", "end-to-end", "p99.9"] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert_eq!(broker.high_watermark("bench-smoke", 0), 20000 + 500 + 1);
}

#[test]
fn bench_transactional_mode_commits_what_it_produces() {
    let broker = Broker::start();
    let stdout = run_bench(&[
        "transactional",
        "--bootstrap",
        &broker.addr,
        "--topic",
        "bench-txn",
        "--messages",
        "20000",
        "--size",
        "200",
        "--commit-interval-ms",
        "20",
    ]);
    let commits: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("transaction commit"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no commit latency row in:\n{stdout}"));
    assert!(commits >= 1, "{stdout}");
    // Every record committed, each transaction closed by one commit marker.
    let end = broker.high_watermark("bench-txn", 0);
    assert_eq!(end, 20000 + commits as i64, "{stdout}");
    let consumer = broker.consumer(&[("isolation.level", "read_committed")]);
    let got = consume(&consumer, "bench-txn", 0, Offset::Beginning, 20000);
    assert_eq!(got.len(), 20000);
}
