//! A small Kafka admin client for the command-line tools: one connection, one request at a
//! time, at fixed versions that Caudal and Apache Kafka both serve.

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use caudal_protocol::kafka_protocol::messages::{
    ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
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
        .value_name("HOST:PORT")
        .env("CAUDAL_BOOTSTRAP")
        .default_value("127.0.0.1:9092")
        .global(true)
        .help("A broker to ask")
}

/// Connects to `--bootstrap` and runs `command` with the client on a small runtime.
pub fn with_client<F, Fut>(m: &clap::ArgMatches, command: F) -> anyhow::Result<()>
where
    F: FnOnce(Client) -> Fut,
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
        command(Client::connect(&bootstrap).await?).await
    })
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
