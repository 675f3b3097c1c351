//! `max.connections` and `max.connections.per.ip`, as Kafka's ConnectionQuotas (KIP-402).
//!
//! At the broker-wide limit the acceptor waits for a connection to close before it takes the
//! next one off the listen queue, so clients wait in the kernel's backlog instead of being
//! refused. Over the per-address limit a new connection is closed at once. Every admitted
//! connection holds a [`ConnectionSlot`]; dropping it (however the connection ends) gives both
//! counts back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A new connection refused because its address already has the most it may.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many connections from {ip} (maximum {max})")]
pub struct TooManyConnections {
    pub ip: IpAddr,
    pub max: usize,
}

/// Open connections per address.
type PerIpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

#[derive(Debug)]
pub struct ConnectionQuotas {
    /// One permit per connection `max.connections` allows.
    broker: Arc<Semaphore>,
    #[cfg(test)]
    max_connections: usize,
    max_per_ip: usize,
    overrides: HashMap<IpAddr, usize>,
    /// Open connections per address; only kept when some address has a limit.
    per_ip: Option<PerIpCounts>,
}

impl ConnectionQuotas {
    pub fn new(
        max_connections: usize,
        max_per_ip: usize,
        overrides: impl IntoIterator<Item = (IpAddr, usize)>,
    ) -> Self {
        let overrides: HashMap<IpAddr, usize> = overrides
            .into_iter()
            .map(|(ip, max)| (ip.to_canonical(), max))
            .collect();
        // Kafka's default (2147483647) is no limit in practice: skip the per-address map then.
        let limited = max_per_ip < i32::MAX as usize || !overrides.is_empty();
        let max_connections = max_connections.min(Semaphore::MAX_PERMITS);
        ConnectionQuotas {
            broker: Arc::new(Semaphore::new(max_connections)),
            #[cfg(test)]
            max_connections,
            max_per_ip,
            overrides,
            per_ip: limited.then(Default::default),
        }
    }

    pub fn from_config(config: &crate::BrokerConfig) -> Self {
        Self::new(
            config.max_connections(),
            config.max_connections_per_ip(),
            config.max_connections_per_ip_overrides(),
        )
    }

    /// A free broker-wide slot, without waiting; `None` at `max.connections`.
    pub fn try_broker_slot(&self) -> Option<BrokerSlot> {
        self.broker.clone().try_acquire_owned().ok().map(BrokerSlot)
    }

    /// A broker-wide slot, waiting (in order of arrival) while the broker is at
    /// `max.connections`. (`None` only if the semaphore were closed, which nothing does.)
    pub async fn broker_slot(&self) -> Option<BrokerSlot> {
        self.broker
            .clone()
            .acquire_owned()
            .await
            .ok()
            .map(BrokerSlot)
    }

    /// Admits a connection from `ip` into the slot taken for it, or refuses it when the
    /// address is at its limit (the broker-wide slot is then given back).
    pub fn admit(
        &self,
        slot: BrokerSlot,
        ip: IpAddr,
    ) -> Result<ConnectionSlot, TooManyConnections> {
        let Some(per_ip) = &self.per_ip else {
            return Ok(ConnectionSlot {
                _broker: slot.0,
                per_ip: None,
            });
        };
        // An IPv4 client of a listener on `[::]` shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        let max = self.overrides.get(&ip).copied().unwrap_or(self.max_per_ip);
        let mut counts = per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            if *count == 0 {
                counts.remove(&ip);
            }
            return Err(TooManyConnections { ip, max });
        }
        *count += 1;
        Ok(ConnectionSlot {
            _broker: slot.0,
            per_ip: Some((per_ip.clone(), ip)),
        })
    }

    /// Open connections from `ip` (0 when no per-address limit is configured).
    #[cfg(test)]
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip.as_ref().map_or(0, |m| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ip.to_canonical())
                .copied()
                .unwrap_or(0)
        })
    }

    /// Connections open now, broker-wide.
    #[cfg(test)]
    pub fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.broker.available_permits())
    }
}

/// One of the `max.connections` slots, taken before the connection is accepted.
#[derive(Debug)]
pub struct BrokerSlot(OwnedSemaphorePermit);

/// What an open connection holds of the quotas; dropping it gives them back.
#[derive(Debug)]
pub struct ConnectionSlot {
    _broker: OwnedSemaphorePermit,
    per_ip: Option<(PerIpCounts, IpAddr)>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = &self.per_ip {
            let mut counts = per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    // Forget the address, so the map holds only addresses with connections.
                    counts.remove(ip);
                }
            }
        }
    }
}

/// `max.connections.per.ip.overrides`: Kafka's `host:count,host:count`, split at the last colon
/// so IPv6 addresses work (`::1:5`). Hosts must be IP addresses.
pub fn parse_overrides(value: &str) -> Result<Vec<(IpAddr, usize)>, String> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (host, count) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("`{entry}`: expected IP:COUNT"))?;
        let host = host.trim().trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host
            .parse()
            .map_err(|_| format!("`{entry}`: `{host}` is not an IP address"))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|&c| i32::try_from(c).is_ok())
            .ok_or_else(|| {
                format!(
                    "`{entry}`: the count must be a whole number from 0 to {}",
                    i32::MAX
                )
            })?;
        out.push((ip, count as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNLIMITED: usize = i32::MAX as usize;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_connection_over_the_per_ip_limit_is_refused_and_slots_come_back() {
        let q = ConnectionQuotas::new(UNLIMITED, 2, []);
        let a = q
            .admit(q.try_broker_slot().unwrap(), ip("10.0.0.1"))
            .unwrap();
        let b = q
            .admit(q.try_broker_slot().unwrap(), ip("10.0.0.1"))
            .unwrap();
        let refused = q.admit(q.try_broker_slot().unwrap(), ip("10.0.0.1"));
        assert_eq!(
            refused.unwrap_err(),
            TooManyConnections {
                ip: ip("10.0.0.1"),
                max: 2
            }
        );
        // Another address has its own count.
        let other = q
            .admit(q.try_broker_slot().unwrap(), ip("10.0.0.2"))
            .unwrap();
        assert_eq!(q.connections_from(ip("10.0.0.1")), 2);
        assert_eq!(q.open_connections(), 3, "the refused slot was given back");
        drop(a);
        assert_eq!(q.connections_from(ip("10.0.0.1")), 1);
        let c = q
            .admit(q.try_broker_slot().unwrap(), ip("10.0.0.1"))
            .unwrap();
        drop((b, c, other));
        assert_eq!(q.connections_from(ip("10.0.0.1")), 0);
        assert_eq!(q.open_connections(), 0);
        assert!(q.per_ip.as_ref().unwrap().lock().unwrap().is_empty());
    }

    #[test]
    fn overrides_win_over_the_default_and_match_ipv4_mapped_addresses() {
        let q = ConnectionQuotas::new(UNLIMITED, 0, [(ip("127.0.0.1"), 1)]);
        assert!(q
            .admit(q.try_broker_slot().unwrap(), ip("10.0.0.1"))
            .is_err());
        let held = q
            .admit(q.try_broker_slot().unwrap(), ip("::ffff:127.0.0.1"))
            .unwrap();
        assert!(q
            .admit(q.try_broker_slot().unwrap(), ip("127.0.0.1"))
            .is_err());
        drop(held);
        assert!(q
            .admit(q.try_broker_slot().unwrap(), ip("127.0.0.1"))
            .is_ok());
    }

    #[test]
    fn at_max_connections_a_slot_is_had_only_once_one_is_given_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let q = Arc::new(ConnectionQuotas::new(2, UNLIMITED, []));
            let a = q
                .admit(q.broker_slot().await.unwrap(), ip("10.0.0.1"))
                .unwrap();
            let _b = q
                .admit(q.broker_slot().await.unwrap(), ip("10.0.0.2"))
                .unwrap();
            assert!(q.try_broker_slot().is_none());
            let waiter = tokio::spawn({
                let q = q.clone();
                async move { q.broker_slot().await }
            });
            tokio::task::yield_now().await;
            assert!(
                !waiter.is_finished(),
                "a third slot was handed out at max.connections=2"
            );
            drop(a);
            let slot = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("the waiting acceptor got no slot after a connection closed")
                .unwrap();
            assert_eq!(q.open_connections(), 2);
            drop(slot);
            assert_eq!(q.open_connections(), 1);
        });
    }

    #[test]
    fn no_per_ip_bookkeeping_without_a_per_ip_limit() {
        let q = ConnectionQuotas::new(UNLIMITED, UNLIMITED, []);
        assert!(q.per_ip.is_none());
        let slots: Vec<_> = (0..100)
            .map(|_| {
                q.admit(q.try_broker_slot().unwrap(), ip("10.0.0.1"))
                    .unwrap()
            })
            .collect();
        assert_eq!(q.open_connections(), 100);
        drop(slots);
        assert_eq!(q.open_connections(), 0);
    }

    #[test]
    fn overrides_parse_as_kafka_writes_them() {
        assert_eq!(
            parse_overrides("127.0.0.1:5, 10.1.2.3:0,::1:7,[fe80::1]:3").unwrap(),
            vec![
                (ip("127.0.0.1"), 5),
                (ip("10.1.2.3"), 0),
                (ip("::1"), 7),
                (ip("fe80::1"), 3)
            ]
        );
        assert_eq!(parse_overrides("").unwrap(), vec![]);
        for bad in [
            "127.0.0.1",
            "localhost:5",
            "127.0.0.1:-1",
            "127.0.0.1:x",
            "1.2.3.4:3000000000",
        ] {
            assert!(parse_overrides(bad).is_err(), "{bad} was accepted");
        }
    }
}
