//! `leader.replication.throttled.rate`: the bytes per second a leader serves to replicas that a
//! reassignment is adding, so that copying a partition to a new broker does not take the disk
//! and network its clients and in-sync followers need. Kafka applies the rate to the replicas
//! named in the topic's `leader.replication.throttled.replicas`, which its reassignment tool sets
//! to the moving replicas; Caudal applies it to exactly those, the partition's adding replicas.
//!
//! A token bucket of one second's worth: a fetch of a throttled replica gets no data while the
//! bucket is empty, and waits out its `max.wait.ms` before fetching again, as Kafka's throttled
//! follower fetches do. A read may take the bucket below zero (a batch is never split); the
//! debt is paid before the next one.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct ReplicationThrottle {
    /// Bytes per second; `None`: no limit.
    rate: Option<f64>,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ReplicationThrottle {
    /// A throttle of `rate` bytes per second; `i64::MAX` (Kafka's default) or more means none.
    pub fn new(rate: i64) -> ReplicationThrottle {
        let rate = (rate < i64::MAX).then(|| rate.max(1) as f64);
        ReplicationThrottle {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: rate.unwrap_or(0.0),
                at: Instant::now(),
            }),
        }
    }

    fn refill(&self, now: Instant) -> std::sync::MutexGuard<'_, Bucket> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
            bucket.at = now;
        }
        bucket
    }

    /// Whether a rate is set at all.
    pub fn is_limited(&self) -> bool {
        self.rate.is_some()
    }

    /// Whether a throttled replica may be sent data now.
    pub fn allows(&self) -> bool {
        self.rate.is_none() || self.refill(Instant::now()).tokens > 0.0
    }

    /// Counts `bytes` sent to throttled replicas.
    pub fn record(&self, bytes: usize) {
        if self.rate.is_some() && bytes > 0 {
            self.refill(Instant::now()).tokens -= bytes as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_always_allows() {
        let t = ReplicationThrottle::new(i64::MAX);
        t.record(1 << 40);
        assert!(t.allows());
    }

    #[test]
    fn a_spent_bucket_refuses_until_refilled() {
        let t = ReplicationThrottle::new(1000);
        assert!(t.allows());
        t.record(5000);
        assert!(!t.allows(), "four seconds of debt");
        // Refilled by hand: the bucket's clock moved 5 s back.
        t.bucket.lock().unwrap().at -= std::time::Duration::from_secs(5);
        assert!(t.allows());
        // Never more than one second's worth saved up.
        t.bucket.lock().unwrap().at -= std::time::Duration::from_secs(100);
        t.record(1500);
        assert!(!t.allows());
    }
}
