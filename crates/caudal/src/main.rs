//! `caudal`: the broker and its command-line tools in one binary.

mod client;
mod group;
mod log_dump;
mod serve;
mod topic;

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
        .subcommand(log_dump::command())
}

fn main() -> std::process::ExitCode {
    let matches = cli().get_matches();
    let filter = matches
        .get_one::<String>("log")
        .cloned()
        .unwrap_or_else(|| "info".to_string());
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
        Some(("topic", m)) => topic::run(m),
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
