//! Rate limit for the log lines about connections the broker closes, refuses or makes wait.
//!
//! A hostile or broken peer can open thousands of connections, each closed for the same reason;
//! one line each would flood the log and hide everything else. Within an interval the first
//! [`FULL_LINES_PER_INTERVAL`] lines of each reason are logged in full and the rest are only
//! counted; [`ConnectionWarnings::flush`], called once per interval, returns the counts for one
//! summary line. Counting is one atomic add per event: no lock, no allocation.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lines of each reason logged in full per interval before the rest are only counted.
pub const FULL_LINES_PER_INTERVAL: u64 = 5;

/// How often the counts are summed up in one line (and the full-line allowance renewed).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Why the broker closed or refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Bytes that do not decode as a request the broker knows.
    MalformedRequest,
    /// A frame longer than `socket.request.max.bytes`.
    FrameTooLarge,
    /// An API or version the broker does not serve.
    UnsupportedRequest,
    /// More connections from one address than `max.connections.per.ip` allows.
    PerIpLimit,
    /// The broker is at `max.connections`: accepting waits for a connection to close.
    MaxConnections,
}

impl Reason {
    const ALL: [Reason; 5] = [
        Reason::MalformedRequest,
        Reason::FrameTooLarge,
        Reason::UnsupportedRequest,
        Reason::PerIpLimit,
        Reason::MaxConnections,
    ];

    /// The name used in the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Reason::MalformedRequest => "malformed_request",
            Reason::FrameTooLarge => "frame_too_large",
            Reason::UnsupportedRequest => "unsupported_request",
            Reason::PerIpLimit => "max_connections_per_ip",
            Reason::MaxConnections => "max_connections",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per-reason counts of events in the current interval.
#[derive(Debug, Default)]
pub struct ConnectionWarnings {
    seen: [AtomicU64; Reason::ALL.len()],
}

impl ConnectionWarnings {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one event; true if its line should be logged in full, false if it is only
    /// counted for the next summary.
    pub fn admit(&self, reason: Reason) -> bool {
        self.seen[reason.index()].fetch_add(1, Ordering::Relaxed) < FULL_LINES_PER_INTERVAL
    }

    /// Ends the interval: the counts of lines not logged, if any, and a fresh allowance.
    pub fn flush(&self) -> Option<Suppressed> {
        let mut counts = [0u64; Reason::ALL.len()];
        for (count, seen) in counts.iter_mut().zip(&self.seen) {
            *count = seen
                .swap(0, Ordering::Relaxed)
                .saturating_sub(FULL_LINES_PER_INTERVAL);
        }
        counts
            .iter()
            .any(|&c| c > 0)
            .then_some(Suppressed { counts })
    }
}

/// Lines counted but not logged during one interval, by reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    counts: [u64; Reason::ALL.len()],
}

impl Suppressed {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn count(&self, reason: Reason) -> u64 {
        self.counts[reason.index()]
    }
}

/// `malformed_request=4980 frame_too_large=10`: the reasons with a count, in a fixed order.
impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for reason in Reason::ALL {
            let n = self.count(reason);
            if n > 0 {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{}={n}", reason.name())?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Logs one summary line per [`INTERVAL`] while lines were suppressed, so the counts appear
/// even if no further event comes. Runs until the task is aborted.
pub async fn flush_every_interval(warnings: std::sync::Arc<ConnectionWarnings>) {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Some(suppressed) = warnings.flush() {
            tracing::warn!(
                "suppressed {} log lines about closed connections in the last {} s: {suppressed}",
                suppressed.total(),
                INTERVAL.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lines_of_each_reason_are_logged_then_counted() {
        let w = ConnectionWarnings::new();
        let logged = (0..100)
            .filter(|_| w.admit(Reason::MalformedRequest))
            .count() as u64;
        assert_eq!(logged, FULL_LINES_PER_INTERVAL);
        // Another reason has its own allowance.
        assert!(w.admit(Reason::FrameTooLarge));
        let s = w.flush().expect("95 lines were suppressed");
        assert_eq!(
            s.count(Reason::MalformedRequest),
            100 - FULL_LINES_PER_INTERVAL
        );
        assert_eq!(s.count(Reason::FrameTooLarge), 0);
        assert_eq!(s.total(), 100 - FULL_LINES_PER_INTERVAL);
    }

    #[test]
    fn a_flush_renews_the_allowance_and_clears_the_counts() {
        let w = ConnectionWarnings::new();
        for _ in 0..20 {
            w.admit(Reason::PerIpLimit);
        }
        assert!(w.flush().is_some());
        assert_eq!(w.flush(), None, "counts must start again from zero");
        assert!(
            w.admit(Reason::PerIpLimit),
            "a new interval logs in full again"
        );
    }

    #[test]
    fn nothing_suppressed_means_no_summary() {
        let w = ConnectionWarnings::new();
        for _ in 0..FULL_LINES_PER_INTERVAL {
            assert!(w.admit(Reason::UnsupportedRequest));
        }
        assert_eq!(w.flush(), None);
    }

    #[test]
    fn the_summary_names_each_reason_with_its_count() {
        let w = ConnectionWarnings::new();
        for _ in 0..(FULL_LINES_PER_INTERVAL + 4980) {
            w.admit(Reason::MalformedRequest);
        }
        for _ in 0..(FULL_LINES_PER_INTERVAL + 10) {
            w.admit(Reason::FrameTooLarge);
        }
        let s = w.flush().expect("lines were suppressed");
        assert_eq!(s.to_string(), "malformed_request=4980 frame_too_large=10");
        assert_eq!(s.total(), 4990);
    }

    #[test]
    fn counting_from_many_threads_loses_nothing() {
        let w = std::sync::Arc::new(ConnectionWarnings::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| w.admit(Reason::MalformedRequest))
                        .count() as u64
                })
            })
            .collect();
        let logged: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(logged, FULL_LINES_PER_INTERVAL);
        let s = w.flush().expect("lines were suppressed");
        assert_eq!(s.count(Reason::MalformedRequest) + logged, 4000);
    }
}
