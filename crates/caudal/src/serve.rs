//! `caudal serve`: run a broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use caudal_broker::{BrokerConfig, Server, SETTINGS};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
const DEFAULT_DATA_DIR: &str = "./caudal-data";

/// The environment variable for a Kafka-named setting: `num.partitions` -> `CAUDAL_NUM_PARTITIONS`.
fn env_name(key: &str) -> String {
    format!(
        "CAUDAL_{}",
        key.replace(['.', '-'], "_").to_ascii_uppercase()
    )
}

pub fn command() -> Command {
    let mut cmd = Command::new("serve")
        .about("Run a durable single-node broker")
        .long_about(
            "Run a durable single-node broker.\n\n\
             With no options it listens on 127.0.0.1:9092 and keeps its data in ./caudal-data.\n\
             Every option can also be set in a TOML file (--config) or as an environment variable\n\
             (CAUDAL_ and the key in capitals, dots as underscores: CAUDAL_NUM_PARTITIONS=3).\n\
             The command line wins over the environment, which wins over the file.\n\n\
             Example:\n  caudal serve --listen 0.0.0.0:9092 --advertise broker.example:9092 --num.partitions 3",
        )
        .arg(Arg::new("config").long("config").short('c').value_name("FILE").env("CAUDAL_CONFIG").help("TOML file with any of the settings below, e.g. `listen = \"0.0.0.0:9092\"`, `\"num.partitions\" = 3`"))
        .arg(Arg::new("listen").long("listen").value_name("HOST:PORT").env("CAUDAL_LISTEN").help(format!("Address to accept clients on [default: {DEFAULT_LISTEN}]")))
        .arg(Arg::new("advertise").long("advertise").value_name("HOST:PORT").env("CAUDAL_ADVERTISE").help("Address Metadata gives clients to reach this broker [default: the listen address]"))
        .arg(Arg::new("data-dir").long("data-dir").value_name("DIR").env("CAUDAL_DATA_DIR").help(format!("Where partitions and metadata are stored [default: {DEFAULT_DATA_DIR}]")))
        .arg(Arg::new("node-id").long("node-id").value_name("N").env("CAUDAL_NODE_ID").help("This broker's id in Metadata [default: 1]"))
        .next_help_heading("Kafka broker settings (Kafka's names and defaults)");
    for s in SETTINGS {
        cmd = cmd.arg(
            Arg::new(s.key)
                .long(s.key)
                .value_name("VALUE")
                .env(env_name(s.key))
                .help(format!("{} [default: {}]", s.doc, s.default)),
        );
    }
    cmd
}

/// A value from the command line or environment, else from the file.
fn pick(m: &ArgMatches, file: &BTreeMap<String, toml::Value>, key: &str) -> Option<String> {
    let from_cli = matches!(
        m.value_source(key),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    if from_cli {
        return m.get_one::<String>(key).cloned();
    }
    file.get(key).map(|v| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

pub fn config_from(m: &ArgMatches) -> anyhow::Result<BrokerConfig> {
    let file: BTreeMap<String, toml::Value> = match m.get_one::<String>("config") {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {path}"))?;
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("config file {path} is not valid TOML"))?;
            table.into_iter().collect()
        }
        None => BTreeMap::new(),
    };
    let known = |k: &str| {
        ["listen", "advertise", "data-dir", "node-id"].contains(&k)
            || SETTINGS.iter().any(|s| s.key == k)
    };
    if let Some(unknown) = file.keys().find(|k| !known(k)) {
        bail!("config file: unknown key `{unknown}` (see `caudal serve --help` for the keys; Kafka settings are quoted, e.g. \"num.partitions\" = 3)");
    }
    let listen_text = pick(m, &file, "listen").unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen: SocketAddr = listen_text
        .parse()
        .with_context(|| format!("`listen` = `{listen_text}`: expected HOST:PORT with an IP address, e.g. 127.0.0.1:9092 or 0.0.0.0:9092"))?;
    let data_dir =
        PathBuf::from(pick(m, &file, "data-dir").unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()));
    let mut config = BrokerConfig::new(listen, data_dir);
    if let Some(adv) = pick(m, &file, "advertise") {
        let (host, port) = adv
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
            .filter(|(h, _)| !h.is_empty())
            .with_context(|| {
                format!("`advertise` = `{adv}`: expected HOST:PORT, e.g. localhost:9092")
            })?;
        config.advertise = (host, port);
    } else if listen.ip().is_unspecified() {
        // 0.0.0.0 is no address a client can dial; advertise this host's loopback.
        config.advertise = ("localhost".to_string(), listen.port());
    }
    if let Some(id) = pick(m, &file, "node-id") {
        config.node_id = id
            .parse()
            .with_context(|| format!("`node-id` = `{id}`: expected a whole number"))?;
    }
    for s in SETTINGS {
        if let Some(v) = pick(m, &file, s.key) {
            config.set(s.key, &v).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(config)
}

pub fn run(m: &ArgMatches) -> anyhow::Result<()> {
    let config = config_from(m)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Handlers go in before the port opens: a SIGTERM the moment clients can connect must
        // already mean a clean shutdown, not the default action of the signal.
        let shutdown = shutdown_signal()?;
        let data_dir = config.data_dir.clone();
        let server = Server::bind(config).await?;
        let addr = server.local_addr()?;
        let broker = server.broker().clone();
        let (host, port) = &broker.config.advertise;
        tracing::info!(
            "Caudal {} listening on {addr} (advertised as {host}:{port}), data in {}, {} topics",
            env!("CARGO_PKG_VERSION"),
            data_dir.display(),
            broker.topics.all().len()
        );
        server.run(shutdown).await;
        Ok(())
    })
}

/// Registers Ctrl-C and SIGTERM now; the returned future resolves when either arrives.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    })
}
