//! `caudal`: the broker and its command-line tools in one binary.

/// jemalloc rather than glibc's malloc: after a storm of short connections glibc kept tens of
/// megabytes of freed memory resident (free chunks in the middle of its heaps go back only on
/// an explicit `malloc_trim`), and the next storm touched fresh pages. jemalloc, with the
/// settings below, gives pages unused for a second back to the system.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options, read before the first allocation:
/// - a background thread purges unused pages, even while the broker is otherwise idle;
/// - pages unused for 1 s are purged (`dirty_decay_ms`), and at once with `MADV_DONTNEED`
///   (`muzzy_decay_ms:0`) rather than lazily with `MADV_FREE`, which still counts as resident
///   until the kernel wants the memory;
/// - blocks of up to 64 MiB are recycled like any other (`oversize_threshold`): by default
///   jemalloc unmaps blocks of 8 MiB and more as soon as they are freed, so every Fetch
///   answered with 8 MiB or more of records faulted its buffer in afresh.
#[used]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,oversize_threshold:67108864"
        .as_ptr(),
);

/// A C string pointer, which jemalloc reads as its `malloc_conf` global.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points at a constant string, never written.
unsafe impl Sync for MallocConf {}

mod client;
mod cluster;
mod group;
mod log_dump;
mod serve;
mod topic;
mod transactions;

use clap::{Arg, Command};

fn cli() -> Command {
    Command::new("caudal")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Caudal: a Kafka-compatible event streaming platform.\n\nPoint any Kafka client (librdkafka, kcat, confluent-kafka, kafka-python, the Java client) at a running `caudal serve`.")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(
            Arg::new("log")
                .long("log")
                .global(true)
                .env("CAUDAL_LOG")
                .value_name("FILTER")
                .help("Log filter, e.g. `info`, `debug`, `caudal_broker=debug`"),
        )
        .subcommand(serve::command())
        .subcommand(topic::command())
        .subcommand(group::command())
        .subcommand(transactions::command())
        .subcommand(cluster::command())
        .subcommand(log_dump::command())
}

fn main() -> std::process::ExitCode {
    let matches = cli().get_matches();
    let filter = matches
        .get_one::<String>("log")
        .cloned()
        .unwrap_or_else(|| "info".to_string());
    // The Raft library narrates every election and vote at info, and repeats every failed
    // call to an unreachable peer at warn and error, each second. Caudal logs what an operator
    // needs itself (a peer lost and back, leadership, a stopped quorum); asking for
    // `openraft=...` by name gets the library's own lines.
    let filter = if filter.contains("openraft") {
        filter
    } else {
        format!("{filter},openraft=off")
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, plain text for files and `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    if !matches!(matches.subcommand_name(), Some("serve")) {
        restore_sigpipe();
    }
    let result = match matches.subcommand() {
        Some(("serve", m)) => serve::run(m),
        Some(("group", m)) => group::run(m),
        Some(("transactions", m)) => transactions::run(m),
        Some(("topic", m)) => topic::run(m),
        Some(("cluster", m)) => cluster::run(m),
        Some(("log", m)) => log_dump::run(m),
        _ => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The tools print to stdout, often into `head` or `less`: when the reader goes away they should
/// end quietly, as command-line programs do, rather than fail on a broken pipe. (The broker keeps
/// ignoring SIGPIPE, so a write to a closed socket is an error it handles.)
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        super::cli().debug_assert();
    }
}
