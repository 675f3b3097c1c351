//! The broker's way to the active controller.
//!
//! Registration, heartbeats, producer-id blocks and (once handlers forward) admin requests go
//! through one [`ControllerChannel`]. Today the controller runs in this process and the channel
//! calls its service directly; once nodes talk, a network transport sends the same requests to
//! the quorum leader's controller listener, and the callers do not change.
//!
//! A controller that is not active (this node does not lead, or is still becoming the
//! controller) answers NOT_CONTROLLER; the channel retries with backoff until the caller's
//! timeout, as Kafka's broker does with the requests it forwards, and then answers
//! REQUEST_TIMED_OUT. At most [`MAX_FORWARDED_REQUESTS`] calls are in flight; a caller beyond
//! that waits for a slot within its timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::controller::{ControllerCallError, ControllerHandle};
use caudal_metadata::ControllerRequest;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::controller_connection::{self, ControllerConnection};

/// Calls in flight at once (Caudal's `max.forwarded.requests`).
pub const MAX_FORWARDED_REQUESTS: usize = 1000;

/// Why a call through the channel got no answer from a controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No active controller answered within the caller's timeout.
    #[error(
        "no active controller answered within {timeout:?} (last known quorum leader: {leader:?})"
    )]
    TimedOut {
        timeout: Duration,
        leader: Option<u64>,
    },
    /// The controller service this channel reaches has stopped: the node is shutting down.
    #[error("the controller has stopped")]
    Stopped,
}

impl ChannelError {
    /// What a broker answers a forwarded request with, as Kafka's does: REQUEST_TIMED_OUT when
    /// no controller answered in time, NOT_CONTROLLER when the controller is gone (the client
    /// looks for another broker).
    pub fn kafka_error(&self) -> ResponseError {
        match self {
            ChannelError::TimedOut { .. } => ResponseError::RequestTimedOut,
            ChannelError::Stopped => ResponseError::NotController,
        }
    }
}

/// Exponential backoff between retries: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// 25 ms doubling to 250 ms, for retries towards the controller: a new controller is elected
    /// within an election timeout or two, and a forwarded request should find it soon after.
    pub const CONTROLLER: Backoff = Backoff {
        initial: Duration::from_millis(25),
        max: Duration::from_millis(250),
    };

    /// The delays of successive retries.
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        let max = self.max.max(self.initial);
        std::iter::successors(Some(self.initial), move |d| {
            Some(d.saturating_mul(2).min(max))
        })
    }
}

/// How the channel reaches the controller.
#[derive(Debug, Clone)]
enum Transport {
    /// The controller service of this process.
    InProcess(ControllerHandle),
    /// Whichever voter leads the quorum: this node's own service, or another's over the network.
    Network(Arc<NetworkTransport>),
}

impl Transport {
    async fn call(&self, request: ControllerRequest) -> Result<ResponseKind, ControllerCallError> {
        match self {
            Transport::InProcess(handle) => handle.call(request).await,
            Transport::Network(network) => network.call(request).await,
        }
    }
}

/// Where the network transport finds the active controller.
pub struct ControllerAddresses {
    /// This node's id.
    pub node_id: u64,
    /// The quorum leader this node knows of now.
    pub leader: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    /// Each voter's controller listener, `host:port` (`controller.quorum.voters`).
    pub voters: BTreeMap<u64, String>,
    /// `socket.request.max.bytes`, the largest answer accepted.
    pub max_frame: usize,
}

/// Calls this node's controller when it leads, and the leader's controller listener otherwise.
struct NetworkTransport {
    local: Option<ControllerHandle>,
    addresses: ControllerAddresses,
    /// The connection to the leader last called, by its node id.
    connection: tokio::sync::Mutex<Option<(u64, ControllerConnection)>>,
    correlation: AtomicI32,
}

impl std::fmt::Debug for NetworkTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkTransport")
            .field("node_id", &self.addresses.node_id)
            .field("voters", &self.addresses.voters)
            .finish_non_exhaustive()
    }
}

impl NetworkTransport {
    async fn call(&self, request: ControllerRequest) -> Result<ResponseKind, ControllerCallError> {
        let leader = (self.addresses.leader)();
        let not_controller = ControllerCallError::NotController { leader };
        let Some(leader) = leader else {
            return Err(not_controller);
        };
        if leader == self.addresses.node_id {
            return match &self.local {
                Some(handle) => handle.call(request).await,
                None => Err(not_controller),
            };
        }
        let Some(connection) = self.connection_to(leader).await else {
            return Err(not_controller);
        };
        let correlation_id = self.next_correlation_id();
        match connection.call(&request, correlation_id).await {
            Ok(answer) => controller_connection::response(answer).ok_or(not_controller),
            Err(e) => {
                tracing::debug!(leader, error = %e, "a request to the active controller failed; retrying");
                Err(not_controller)
            }
        }
    }

    /// Sends `body` as itself to the quorum leader's controller listener. `Ok(None)` when this
    /// node leads; `Err` (NOT_CONTROLLER, retried) when no leader is known or it cannot be
    /// reached.
    async fn call_quorum_leader(
        &self,
        api: ApiKey,
        version: i16,
        body: &RequestKind,
    ) -> Result<Option<ResponseKind>, ControllerCallError> {
        let leader = (self.addresses.leader)();
        let not_controller = ControllerCallError::NotController { leader };
        let Some(leader) = leader else {
            return Err(not_controller);
        };
        if leader == self.addresses.node_id {
            return Ok(None);
        }
        let Some(connection) = self.connection_to(leader).await else {
            return Err(not_controller);
        };
        let correlation_id = self.next_correlation_id();
        match connection
            .call_direct(api, version, body, correlation_id)
            .await
        {
            Ok(response) => Ok(Some(response)),
            Err(e) => {
                tracing::debug!(leader, ?api, error = %e, "a request to the quorum leader failed; retrying");
                Err(not_controller)
            }
        }
    }

    fn next_correlation_id(&self) -> i32 {
        self.correlation.fetch_add(1, Ordering::Relaxed) & i32::MAX
    }

    /// The connection to `leader`'s controller listener: the open one, or a new one.
    async fn connection_to(&self, leader: u64) -> Option<ControllerConnection> {
        let Some(address) = self.addresses.voters.get(&leader) else {
            tracing::warn!(
                leader,
                "the quorum leader is not in controller.quorum.voters"
            );
            return None;
        };
        let mut current = self.connection.lock().await;
        match &*current {
            Some((id, c)) if *id == leader && !c.is_closed() => Some(c.clone()),
            _ => {
                let client_id = format!("caudal-broker-{}", self.addresses.node_id);
                match ControllerConnection::connect(address, client_id, self.addresses.max_frame)
                    .await
                {
                    Ok(c) => {
                        *current = Some((leader, c.clone()));
                        Some(c)
                    }
                    Err(e) => {
                        tracing::debug!(leader, error = %e, "cannot reach the active controller; retrying");
                        *current = None;
                        None
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    in_flight: Semaphore,
    max_in_flight: usize,
    backoff: Backoff,
    /// Attempts answered NOT_CONTROLLER and retried, since the channel was made.
    retries: AtomicU64,
}

/// The broker's way to the active controller. Cloneable; clones share the in-flight bound.
#[derive(Debug, Clone)]
pub struct ControllerChannel {
    inner: Arc<Inner>,
}

impl ControllerChannel {
    /// A channel to the controller service running in this process.
    pub fn in_process(handle: ControllerHandle) -> ControllerChannel {
        ControllerChannel::with_limits(handle, MAX_FORWARDED_REQUESTS, Backoff::CONTROLLER)
    }

    /// A channel to the quorum leader's controller: `local` (this node's service, if it is a
    /// voter) while this node leads, the leader's controller listener otherwise.
    pub fn network(
        local: Option<ControllerHandle>,
        addresses: ControllerAddresses,
    ) -> ControllerChannel {
        ControllerChannel::with_transport(
            Transport::Network(Arc::new(NetworkTransport {
                local,
                addresses,
                connection: tokio::sync::Mutex::new(None),
                correlation: AtomicI32::new(0),
            })),
            MAX_FORWARDED_REQUESTS,
            Backoff::CONTROLLER,
        )
    }

    /// As [`in_process`](Self::in_process), with another in-flight bound and backoff.
    pub fn with_limits(
        handle: ControllerHandle,
        max_in_flight: usize,
        backoff: Backoff,
    ) -> ControllerChannel {
        ControllerChannel::with_transport(Transport::InProcess(handle), max_in_flight, backoff)
    }

    fn with_transport(
        transport: Transport,
        max_in_flight: usize,
        backoff: Backoff,
    ) -> ControllerChannel {
        ControllerChannel {
            inner: Arc::new(Inner {
                transport,
                in_flight: Semaphore::new(max_in_flight.max(1)),
                max_in_flight: max_in_flight.max(1),
                backoff,
                retries: AtomicU64::new(0),
            }),
        }
    }

    /// Has the active controller decide `request`, retrying while there is none, for at most
    /// `timeout` (waiting for an in-flight slot included). A call that times out may still be
    /// decided: the controller does not learn that the caller gave up.
    pub async fn call(
        &self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> Result<ResponseKind, ChannelError> {
        self.with_retries(timeout, || self.inner.transport.call(request.clone()))
            .await
    }

    /// Sends a request the quorum answers (DescribeQuorum) as itself to the quorum leader's
    /// controller listener, retrying while no leader is known or reachable, for at most
    /// `timeout`. `Ok(None)` when this node leads (or runs the only controller): it answers
    /// itself. The leader's answer is returned as it is, errors included.
    pub async fn call_quorum_leader(
        &self,
        api: ApiKey,
        version: i16,
        body: RequestKind,
        timeout: Duration,
    ) -> Result<Option<ResponseKind>, ChannelError> {
        let Transport::Network(network) = &self.inner.transport else {
            return Ok(None);
        };
        self.with_retries(timeout, || network.call_quorum_leader(api, version, &body))
            .await
    }

    /// Runs `attempt` in an in-flight slot until it is answered, retrying with backoff while
    /// it finds no active controller, for at most `timeout` (waiting for the slot included).
    async fn with_retries<T, A>(
        &self,
        timeout: Duration,
        mut attempt: impl FnMut() -> A,
    ) -> Result<T, ChannelError>
    where
        A: Future<Output = Result<T, ControllerCallError>>,
    {
        let deadline = Instant::now() + timeout;
        let mut leader = None;
        let attempts = async {
            let _slot = self
                .inner
                .in_flight
                .acquire()
                .await
                .map_err(|_| ChannelError::Stopped)?;
            let mut delays = self.inner.backoff.delays();
            loop {
                match attempt().await {
                    Ok(answer) => return Ok(answer),
                    Err(ControllerCallError::Stopped) => return Err(ChannelError::Stopped),
                    Err(ControllerCallError::NotController { leader: known }) => {
                        leader = known;
                        self.inner.retries.fetch_add(1, Ordering::Relaxed);
                        let delay = delays.next().unwrap_or(self.inner.backoff.max);
                        tracing::debug!(leader = ?known, ?delay, "no active controller yet; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline, attempts).await;
        outcome.unwrap_or(Err(ChannelError::TimedOut { timeout, leader }))
    }

    /// Attempts answered NOT_CONTROLLER and retried so far, for logs and tests.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner
            .max_in_flight
            .saturating_sub(self.inner.in_flight.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{AllocateProducerIdsRequest, BrokerId};

    use super::*;
    use crate::controller_testing::{bounded, TestController};

    /// A request any controller answers without writing: broker 7 is not registered.
    fn probe() -> ControllerRequest {
        ControllerRequest::AllocateProducerIds(
            AllocateProducerIdsRequest::default()
                .with_broker_id(BrokerId(7))
                .with_broker_epoch(1),
            0,
        )
    }

    fn assert_decided(response: ResponseKind) {
        match response {
            ResponseKind::AllocateProducerIds(r) => assert_eq!(
                r.error_code,
                ResponseError::BrokerIdNotRegistered.code(),
                "{r:?}"
            ),
            other => panic!("not an AllocateProducerIds answer: {other:?}"),
        }
    }

    /// Returns once `check` holds, polling: what it watches has no change notification.
    async fn until(what: &str, check: impl Fn() -> bool) {
        bounded(what, async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let delays: Vec<u64> = Backoff::CONTROLLER
            .delays()
            .take(7)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![25, 50, 100, 200, 250, 250, 250]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_not_controller_until_a_controller_is_active() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestController::start(dir.path(), false).await;
        // No quorum yet: the service itself refuses at once.
        let direct = node.handle().call(probe()).await;
        assert!(
            matches!(direct, Err(ControllerCallError::NotController { .. })),
            "{direct:?}"
        );
        let channel = ControllerChannel::in_process(node.handle());
        let call = tokio::spawn({
            let channel = channel.clone();
            async move { channel.call(probe(), Duration::from_secs(30)).await }
        });
        until("two NOT_CONTROLLER retries", || channel.retries() >= 2).await;
        assert!(!call.is_finished());
        node.initialize().await;
        let answer = bounded("the retried call", call).await.unwrap();
        assert_decided(answer.unwrap());
        assert_eq!(channel.in_flight(), 0);
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gives_up_with_request_timed_out_when_no_controller_is_active() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestController::start(dir.path(), false).await;
        let channel = ControllerChannel::in_process(node.handle());
        let started = Instant::now();
        let timeout = Duration::from_millis(300);
        let error = bounded("the timed-out call", channel.call(probe(), timeout))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= timeout);
        assert!(matches!(error, ChannelError::TimedOut { .. }), "{error:?}");
        assert_eq!(error.kafka_error(), ResponseError::RequestTimedOut);
        assert!(channel.retries() >= 1);

        // A stopped controller is not waited for.
        node.stop().await;
        let error = bounded("the call to a stopped controller", async {
            channel.call(probe(), Duration::from_secs(30)).await
        })
        .await
        .unwrap_err();
        assert_eq!(error, ChannelError::Stopped);
        assert_eq!(error.kafka_error(), ResponseError::NotController);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_beyond_the_in_flight_bound_wait_for_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestController::start(dir.path(), false).await;
        let channel = ControllerChannel::with_limits(node.handle(), 1, Backoff::CONTROLLER);
        let first = tokio::spawn({
            let channel = channel.clone();
            async move { channel.call(probe(), Duration::from_secs(30)).await }
        });
        until("the first call in flight", || channel.in_flight() == 1).await;
        let second = channel.call(probe(), Duration::from_millis(200)).await;
        assert!(matches!(second, Err(ChannelError::TimedOut { .. })));
        node.initialize().await;
        assert_decided(bounded("the first call", first).await.unwrap().unwrap());
        assert_decided(channel.call(probe(), Duration::from_secs(5)).await.unwrap());
        node.stop().await;
    }
}
