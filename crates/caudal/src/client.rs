//! A small Kafka admin client for the command-line tools: one request at a time per connection,
//! at fixed versions that Caudal and Apache Kafka both serve; a connection to the bootstrap and,
//! in a cluster, to whichever broker a request must reach ([`Cluster`]).

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

use caudal_protocol::kafka_protocol::error::ResponseError;
use caudal_protocol::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use caudal_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use caudal_protocol::kafka_protocol::messages::{
    ApiKey, BrokerId, FindCoordinatorRequest, ListOffsetsRequest, MetadataRequest,
    MetadataResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind, TopicName,
};
use caudal_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Responses larger than this are refused rather than buffered.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    bootstrap: String,
}

impl Client {
    pub async fn connect(bootstrap: &str) -> anyhow::Result<Client> {
        let stream = tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(bootstrap))
            .await
            .with_context(|| format!("timed out connecting to {bootstrap}"))?
            .with_context(|| format!("cannot connect to {bootstrap}: is `caudal serve` running there? (--bootstrap HOST:PORT)"))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            correlation_id: 0,
            bootstrap: bootstrap.to_string(),
        })
    }

    /// Connects to the first broker of a comma-separated `--bootstrap` list that answers, as
    /// Kafka's tools take `--bootstrap-server host1:9092,host2:9092`.
    pub async fn connect_any(bootstrap: &str) -> anyhow::Result<Client> {
        let mut failures = Vec::new();
        for address in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Client::connect(address).await {
                Ok(client) => return Ok(client),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        match failures.len() {
            0 => anyhow::bail!("--bootstrap is empty: give HOST:PORT[,HOST:PORT...]"),
            1 => anyhow::bail!("{}", failures[0]),
            _ => anyhow::bail!(
                "no broker of --bootstrap answered:\n  {}",
                failures.join("\n  ")
            ),
        }
    }

    pub async fn send(
        &mut self,
        api: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> anyhow::Result<ResponseKind> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("caudal-cli")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        body.encode(&mut buf, version)
            .map_err(|e| anyhow::anyhow!("encoding {api:?}: {e}"))?;
        let len = i32::try_from(buf.len() - 4)?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&buf)
            .await
            .with_context(|| format!("sending to {}", self.bootstrap))?;
        let len = self
            .stream
            .read_i32()
            .await
            .with_context(|| format!("{} closed the connection", self.bootstrap))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n <= MAX_RESPONSE_BYTES)
            .context("the broker sent an impossible response length")?;
        let mut frame = vec![0u8; len];
        self.stream.read_exact(&mut frame).await?;
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "response out of order (correlation id {} for {})",
                header.correlation_id,
                self.correlation_id
            );
        }
        let response = ResponseKind::decode(api, &mut frame, version)
            .map_err(|e| anyhow::anyhow!("decoding {api:?} v{version}: {e}"))?;
        let _ = frame.remaining();
        Ok(response)
    }
}

/// The `--bootstrap` option every client command takes.
pub fn bootstrap_arg() -> clap::Arg {
    clap::Arg::new("bootstrap")
        .long("bootstrap")
        .short('b')
        .value_name("HOST:PORT[,HOST:PORT...]")
        .env("CAUDAL_BOOTSTRAP")
        .default_value("127.0.0.1:9092")
        .global(true)
        .help("Brokers to ask, the first that answers")
}

/// Connects to `--bootstrap` and runs `command` with the cluster it leads to, on a small
/// runtime.
pub fn with_cluster<F, Fut>(m: &clap::ArgMatches, command: F) -> anyhow::Result<()>
where
    F: FnOnce(Cluster) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bootstrap = m
            .get_one::<String>("bootstrap")
            .cloned()
            .unwrap_or_default();
        command(Cluster::new(Client::connect_any(&bootstrap).await?)).await
    })
}

/// How many times a tool asks again for a group coordinator that is not ready (being elected,
/// or loading the group), and how long it waits between.
const COORDINATOR_ATTEMPTS: u32 = 20;
const COORDINATOR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);

/// The bootstrap connection, and connections to the brokers the cluster names, opened as
/// needed at the addresses Metadata advertises for the bootstrap's listener. Requests that any
/// broker answers go to the bootstrap; those only one broker answers (a group's coordinator,
/// a partition's leader) go to that broker, as Kafka's own tools send them.
pub struct Cluster {
    bootstrap: Client,
    /// `host:port` -> its connection.
    connections: BTreeMap<String, Client>,
}

impl Cluster {
    pub fn new(bootstrap: Client) -> Cluster {
        Cluster {
            bootstrap,
            connections: BTreeMap::new(),
        }
    }

    /// The bootstrap broker, for requests any broker answers.
    pub fn any(&mut self) -> &mut Client {
        &mut self.bootstrap
    }

    /// A connection to the broker advertised at `host:port`.
    pub async fn at(&mut self, address: &str) -> anyhow::Result<&mut Client> {
        if !self.connections.contains_key(address) {
            let client = Client::connect(address).await.with_context(|| {
                format!(
                    "the cluster advertises a broker at {address}, which this host cannot reach"
                )
            })?;
            self.connections.insert(address.to_string(), client);
        }
        self.connections
            .get_mut(address)
            .context("a connection just made")
    }

    /// Metadata for `topics` (every topic if `None`).
    pub async fn metadata(
        &mut self,
        topics: Option<&[String]>,
    ) -> anyhow::Result<MetadataResponse> {
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                })
                .collect()
        });
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(false);
        match self
            .bootstrap
            .send(ApiKey::Metadata, 12, RequestKind::Metadata(request))
            .await?
        {
            ResponseKind::Metadata(r) => Ok(r),
            _ => bail!("unexpected response to Metadata"),
        }
    }

    /// The coordinator of `group`, found with FindCoordinator and asked again while it is
    /// being elected or is loading.
    pub async fn coordinator(&mut self, group: &str) -> anyhow::Result<&mut Client> {
        self.coordinator_of(group, 0).await
    }

    /// The coordinator of a group (`key_type` 0) or a transactional id (1).
    pub async fn coordinator_of(&mut self, key: &str, key_type: i8) -> anyhow::Result<&mut Client> {
        let group = key;
        let mut attempt = 0;
        let address = loop {
            attempt += 1;
            let request = FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(group.to_string()))
                .with_key_type(key_type);
            let ResponseKind::FindCoordinator(r) = self
                .bootstrap
                .send(
                    ApiKey::FindCoordinator,
                    3,
                    RequestKind::FindCoordinator(request),
                )
                .await?
            else {
                bail!("unexpected response to FindCoordinator")
            };
            let retriable = [
                ResponseError::CoordinatorNotAvailable.code(),
                ResponseError::CoordinatorLoadInProgress.code(),
                ResponseError::NotCoordinator.code(),
            ];
            match r.error_code {
                0 => break format!("{}:{}", r.host.as_str(), r.port),
                code if retriable.contains(&code) && attempt < COORDINATOR_ATTEMPTS => {
                    tokio::time::sleep(COORDINATOR_BACKOFF).await;
                }
                code => bail!("no coordinator for {group}: {}", error_name(code)),
            }
        };
        self.at(&address).await
    }

    /// The offset of each partition of `partitions` at `timestamp` (-1: the log end, -2: the
    /// log start), asked of each partition's leader. Partitions without a leader, or whose
    /// leader answers an error, are left out.
    pub async fn list_offsets(
        &mut self,
        partitions: &BTreeMap<String, Vec<i32>>,
        timestamp: i64,
    ) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
        let mut out = BTreeMap::new();
        if partitions.is_empty() {
            return Ok(out);
        }
        let topics: Vec<String> = partitions.keys().cloned().collect();
        let metadata = self.metadata(Some(&topics)).await?;
        let addresses: BTreeMap<i32, String> = metadata
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        // Leader address -> topic -> partitions it leads.
        let mut by_leader: BTreeMap<&str, BTreeMap<&str, Vec<i32>>> = BTreeMap::new();
        for t in &metadata.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.as_str()) else {
                continue;
            };
            let Some(wanted) = partitions.get(name) else {
                continue;
            };
            for p in &t.partitions {
                if !wanted.contains(&p.partition_index) {
                    continue;
                }
                if let Some(address) = addresses.get(&p.leader_id.0) {
                    by_leader
                        .entry(address.as_str())
                        .or_default()
                        .entry(name)
                        .or_default()
                        .push(p.partition_index);
                }
            }
        }
        for (address, topics) in by_leader {
            let topics = topics
                .into_iter()
                .map(|(t, ps)| {
                    ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(
                            ps.into_iter()
                                .map(|p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_timestamp(timestamp)
                                })
                                .collect(),
                        )
                })
                .collect();
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(topics);
            let ResponseKind::ListOffsets(r) = self
                .at(address)
                .await?
                .send(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
                .await?
            else {
                bail!("unexpected response to ListOffsets")
            };
            for t in r.topics {
                for p in t.partitions {
                    if p.error_code == 0 {
                        out.insert((t.name.0.as_str().to_string(), p.partition_index), p.offset);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Prints rows as an aligned table with a header line.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(|s| s.as_str())
            .collect(),
    );
    for row in rows {
        line(row.iter().map(|s| s.as_str()).collect());
    }
}

/// Kafka's name for an error code, for messages.
pub fn error_name(code: i16) -> String {
    match caudal_protocol::kafka_protocol::error::ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(e) => format!("{e:?} ({code})"),
    }
}
