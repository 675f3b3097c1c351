//! `caudal serve`: run a broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use caudal_broker::config::{Listener, ProcessRoles};
use caudal_broker::ListenerKind;
use caudal_broker::{BrokerConfig, ControllerServer, Server, SETTINGS};
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
        .arg(Arg::new("listen").long("listen").value_name("[NAME://]HOST:PORT,...").env("CAUDAL_LISTEN").help(format!("Where to accept clients [default: {DEFAULT_LISTEN}]. Several listeners, as Kafka's `listeners`: EXTERNAL://0.0.0.0:9092,INTERNAL://0.0.0.0:29092")))
        .arg(Arg::new("advertise").long("advertise").value_name("[NAME://]HOST:PORT,...").env("CAUDAL_ADVERTISE").help("Address Metadata gives the clients of each listener, as Kafka's `advertised.listeners`: EXTERNAL://localhost:9092,INTERNAL://caudal:29092 [default: the listen address]"))
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

/// Splits `[NAME://]ADDRESS` into its name (if any) and address.
fn named(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once("://") {
        Some((name, rest)) => (Some(name), rest),
        None => (None, entry),
    }
}

/// Kafka's `listeners` and `advertised.listeners`: comma-separated `[NAME://]HOST:PORT` lists.
/// Advertised addresses match listeners by name, or by position when unnamed; a listener with
/// none advertises its own address (localhost for 0.0.0.0, which no client can dial).
fn listeners(listen: &str, advertise: Option<&str>) -> anyhow::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (i, entry) in listen
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (name, addr) = named(entry);
        let listen: SocketAddr = addr.parse().with_context(|| {
            format!("`listen` entry `{entry}`: expected [NAME://]HOST:PORT with an IP address, e.g. 0.0.0.0:9092 or INTERNAL://0.0.0.0:29092")
        })?;
        let name = name.map(str::to_string).unwrap_or_else(|| {
            if i == 0 {
                "PLAINTEXT".into()
            } else {
                format!("LISTENER{i}")
            }
        });
        if out.iter().any(|l: &Listener| l.name == name) {
            bail!("`listen`: the listener name {name} is used twice");
        }
        let host = if listen.ip().is_unspecified() {
            "localhost".to_string()
        } else {
            listen.ip().to_string()
        };
        out.push(Listener {
            name,
            listen,
            advertise: (host, listen.port()),
            kind: ListenerKind::Client,
        });
    }
    if out.is_empty() {
        bail!("`listen` is empty: give at least one HOST:PORT, e.g. 127.0.0.1:9092");
    }
    for (i, entry) in advertise
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (name, addr) = named(entry);
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
            .filter(|(h, _)| !h.is_empty())
            .with_context(|| {
                format!(
                    "`advertise` entry `{entry}`: expected [NAME://]HOST:PORT, e.g. localhost:9092"
                )
            })?;
        let target = match name {
            Some(n) => out.iter_mut().find(|l| l.name == n).with_context(|| {
                format!(
                    "`advertise` names the listener {n}, but `listen` has no listener of that name"
                )
            })?,
            None => out.get_mut(i).with_context(|| {
                "`advertise` has more entries than `listen` has listeners".to_string()
            })?,
        };
        target.advertise = (host, port);
    }
    Ok(out)
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
    let data_dir =
        PathBuf::from(pick(m, &file, "data-dir").unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()));
    let mut config = BrokerConfig::new(DEFAULT_LISTEN.parse()?, data_dir);
    config.listeners = listeners(&listen_text, pick(m, &file, "advertise").as_deref())?;
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
    config
        .apply_listener_roles()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    config
        .check_combinations()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(config)
}

pub fn run(m: &ArgMatches) -> anyhow::Result<()> {
    let config = config_from(m)?;
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Handlers go in before the port opens: a SIGTERM the moment clients can connect must
        // already mean a clean shutdown, not the default action of the signal.
        let shutdown = shutdown_signal()?;
        let data_dir = config.data_dir.clone();
        if config.process_roles() == ProcessRoles::Controller {
            return run_controller_only(config, shutdown).await;
        }
        let server = Server::bind(config).await?;
        let addrs = server.local_addrs()?;
        let broker = server.broker().clone();
        let listening: Vec<String> = broker
            .config
            .listeners
            .iter()
            .zip(&addrs)
            .map(|(l, addr)| {
                let named = if broker.config.listeners.len() > 1 {
                    format!("{} ", l.name)
                } else {
                    String::new()
                };
                format!(
                    "{named}{addr} (advertised as {}:{})",
                    l.advertise.0, l.advertise.1
                )
            })
            .collect();
        tracing::info!(
            "Caudal {} listening on {}, data in {}, {} topics",
            env!("CARGO_PKG_VERSION"),
            listening.join(", "),
            data_dir.display(),
            broker.topics.all().len()
        );
        match server.run(shutdown).await {
            caudal_broker::Stopped::Asked => Ok(()),
            caudal_broker::Stopped::MetadataFailed => {
                anyhow::bail!("stopped because the metadata log failed; see the log above")
            }
        }
    })
}

/// A controller-only node: the quorum and the controller on its controller listeners.
async fn run_controller_only(
    config: BrokerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listeners = config.listeners.clone();
    let data_dir = config.data_dir.clone();
    let server = ControllerServer::bind(config).await?;
    let listening: Vec<String> = listeners
        .iter()
        .zip(server.local_addrs())
        .map(|(l, addr)| format!("{} {addr}", l.name))
        .collect();
    tracing::info!(
        "Caudal {} controller-only node listening on {}, data in {}",
        env!("CARGO_PKG_VERSION"),
        listening.join(", "),
        data_dir.display()
    );
    match server.run(shutdown).await {
        caudal_broker::Stopped::Asked => Ok(()),
        caudal_broker::Stopped::MetadataFailed => {
            anyhow::bail!("stopped because the metadata log failed; see the log above")
        }
    }
}

/// Every partition keeps three files open (log, offset index, time index), so a broker with a
/// few hundred partitions passes the usual soft limit of 1024 open files. Raise the soft limit to
/// the hard one, as Kafka's operators are told to.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(open_files = raised.rlim_cur, "raised the open-file limit");
            return;
        }
    }
    if limit.rlim_cur < 4096 {
        tracing::warn!(open_files = limit.rlim_cur, "the open-file limit is low: the broker keeps at most half of it in log files open and reopens the rest as they are used, which costs time with many busy partitions; raise it (ulimit -n)");
    }
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

#[cfg(test)]
mod tests {
    use super::listeners;

    #[test]
    fn listeners_pair_with_advertised_addresses_by_name_or_position() {
        let l = listeners("0.0.0.0:9092", None).unwrap();
        assert_eq!(
            (l[0].name.as_str(), l[0].advertise.clone()),
            ("PLAINTEXT", ("localhost".to_string(), 9092))
        );
        let l = listeners(
            "EXTERNAL://0.0.0.0:9092,INTERNAL://0.0.0.0:29092",
            Some("INTERNAL://caudal:29092,EXTERNAL://localhost:9092"),
        )
        .unwrap();
        assert_eq!(l[0].advertise, ("localhost".to_string(), 9092));
        assert_eq!(l[1].advertise, ("caudal".to_string(), 29092));
        let l = listeners("127.0.0.1:1,127.0.0.1:2", Some("a:10,b:20")).unwrap();
        assert_eq!(
            (l[1].name.as_str(), l[1].advertise.clone()),
            ("LISTENER1", ("b".to_string(), 20))
        );
        for (listen, advertise, problem) in [
            ("", None, "empty"),
            ("host:9092", None, "IP address"),
            ("A://127.0.0.1:1,A://127.0.0.1:2", None, "used twice"),
            (
                "A://127.0.0.1:1",
                Some("B://x:1"),
                "no listener of that name",
            ),
            ("127.0.0.1:1", Some("x:1,y:2"), "more entries"),
            ("127.0.0.1:1", Some("nohost"), "HOST:PORT"),
        ] {
            let e = listeners(listen, advertise).unwrap_err().to_string();
            assert!(e.contains(problem), "{listen} / {advertise:?}: {e}");
        }
    }
}
