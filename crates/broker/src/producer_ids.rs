//! Producer ids for idempotent producers (InitProducerId). Ids are handed out in order from
//! blocks the controller carves from the cluster-wide counter in the metadata log
//! (AllocateProducerIds), so no two brokers, and no two incarnations of one, share an id. The
//! next block is fetched in the background once 90% of the current one is used, so
//! InitProducerId rarely waits; when the block runs out before the next arrives, callers wait
//! for it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use caudal_metadata::ControllerRequest;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{AllocateProducerIdsRequest, BrokerId, ResponseKind};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::controller_channel::{Backoff, ControllerChannel};
use crate::lifecycle::LifecycleStatus;

const ALLOCATE_VERSION: i16 = 0;

/// Why no producer id could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    /// No block came from the controller in time.
    #[error("no producer id block from the controller: {0}")]
    Unavailable(String),
}

impl ProducerIdError {
    /// What InitProducerId answers for a block that has not arrived: COORDINATOR_LOAD_IN_PROGRESS,
    /// which producers retry, as Kafka's broker does.
    pub fn kafka_error(&self) -> ResponseError {
        match self {
            ProducerIdError::Unavailable(_) => ResponseError::CoordinatorLoadInProgress,
        }
    }
}

/// The ids in hand: the current block and at most one more, used in order.
#[derive(Debug, Default)]
struct Blocks {
    next: i64,
    end: i64,
    /// The current block's size, for the 90% mark.
    size: i64,
    queued: Option<(i64, i64)>,
}

impl Blocks {
    /// The next id, moving to the queued block when the current one is used up.
    fn take(&mut self) -> Option<i64> {
        if self.next >= self.end {
            let (start, end) = self.queued.take()?;
            self.next = start;
            self.end = end;
            self.size = end - start;
        }
        let id = self.next;
        self.next += 1;
        Some(id)
    }

    /// Adds the block `[start, end)` after the ids in hand.
    fn add(&mut self, start: i64, end: i64) {
        if self.next >= self.end && self.queued.is_none() {
            self.next = start;
            self.end = end;
            self.size = end - start;
        } else {
            self.queued = Some((start, end));
        }
    }

    /// Whether the next block should be asked for: none is queued and 90% of this one is used.
    fn wants_next(&self) -> bool {
        self.queued.is_none() && (self.end - self.next) * 10 <= self.size
    }
}

/// Where blocks come from.
#[derive(Debug)]
struct ControllerSource {
    channel: ControllerChannel,
    node_id: i32,
    /// The lifecycle's status, for the broker epoch the request needs.
    registration: watch::Receiver<LifecycleStatus>,
    /// How long one caller waits for a block.
    timeout: Duration,
}

#[derive(Debug, Default)]
struct State {
    blocks: Blocks,
    /// A request for the next block is in flight.
    fetching: bool,
    /// Why the last request failed, for the callers it leaves waiting.
    last_failure: Option<String>,
}

#[derive(Debug)]
struct Inner {
    source: ControllerSource,
    state: Mutex<State>,
    /// Woken when a request for a block ends, whichever way.
    fetched: Notify,
}

/// Hands out producer ids never given before. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProducerIds {
    inner: Arc<Inner>,
}

impl ProducerIds {
    fn with_source(source: ControllerSource) -> ProducerIds {
        ProducerIds {
            inner: Arc::new(Inner {
                source,
                state: Mutex::new(State::default()),
                fetched: Notify::new(),
            }),
        }
    }

    /// Ids in blocks from the controller, asked for as broker `node_id` at the epoch
    /// `registration` shows. A caller waits at most `timeout` for a block.
    pub fn from_controller(
        channel: ControllerChannel,
        node_id: i32,
        registration: watch::Receiver<LifecycleStatus>,
        timeout: Duration,
    ) -> ProducerIds {
        ProducerIds::with_source(ControllerSource {
            channel,
            node_id,
            registration,
            timeout,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A producer id never given before.
    pub async fn next_id(&self) -> Result<i64, ProducerIdError> {
        let source = &self.inner.source;
        let deadline = Instant::now() + source.timeout;
        loop {
            // Registered before looking, so a fetch ending in between still wakes this caller.
            let fetched = self.inner.fetched.notified();
            {
                let mut state = self.lock();
                let id = state.blocks.take();
                if id.is_none() {
                    // The request this caller waited on failed: report it rather than ask again
                    // at once (the next caller asks again).
                    if let Some(failure) = state.last_failure.take() {
                        return Err(ProducerIdError::Unavailable(failure));
                    }
                }
                if state.blocks.wants_next() && !state.fetching {
                    state.fetching = true;
                    state.last_failure = None;
                    tokio::spawn(self.clone().fetch());
                }
                if let Some(id) = id {
                    return Ok(id);
                }
            }
            if tokio::time::timeout_at(deadline, fetched).await.is_err() {
                return Err(ProducerIdError::Unavailable(format!(
                    "none arrived within {:?}",
                    source.timeout
                )));
            }
        }
    }

    /// Asks the controller for the next block and queues it; wakes the callers waiting.
    async fn fetch(self) {
        let outcome = self.inner.source.allocate().await;
        {
            let mut state = self.lock();
            state.fetching = false;
            match outcome {
                Ok((start, end)) => state.blocks.add(start, end),
                Err(failure) => {
                    tracing::warn!(%failure, "no producer id block from the controller");
                    state.last_failure = Some(failure);
                }
            }
        }
        self.inner.fetched.notify_waiters();
    }
}

impl ControllerSource {
    /// One block `[start, end)`, retrying refusals (the broker re-registering, say) until the
    /// timeout.
    async fn allocate(&self) -> Result<(i64, i64), String> {
        let deadline = Instant::now() + self.timeout;
        let mut registration = self.registration.clone();
        let mut delays = Backoff::CONTROLLER.delays();
        loop {
            let epoch =
                tokio::time::timeout_at(deadline, registration.wait_for(|s| s.broker_epoch >= 0))
                    .await
                    .map_err(|_| "the broker is not registered".to_string())?
                    .map_err(|_| "the broker lifecycle has stopped".to_string())?
                    .broker_epoch;
            let request = AllocateProducerIdsRequest::default()
                .with_broker_id(BrokerId(self.node_id))
                .with_broker_epoch(epoch);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .channel
                .call(
                    ControllerRequest::AllocateProducerIds(request, ALLOCATE_VERSION),
                    remaining,
                )
                .await
                .map_err(|e| e.to_string())?;
            let ResponseKind::AllocateProducerIds(r) = answer else {
                return Err(format!("not an AllocateProducerIds answer: {answer:?}"));
            };
            let start = r.producer_id_start.0;
            let end = start.checked_add(i64::from(r.producer_id_len));
            match end {
                Some(end) if r.error_code == 0 && start >= 0 && end > start => {
                    tracing::debug!(start, end, "producer id block from the controller");
                    return Ok((start, end));
                }
                _ => {
                    let error = ResponseError::try_from_code(r.error_code);
                    tracing::info!(?error, start, "the controller refused a producer id block");
                    let delay = delays.next().unwrap_or(Backoff::CONTROLLER.max);
                    if Instant::now() + delay >= deadline {
                        return Err(format!("refused: {error:?}"));
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_used_in_order_and_the_next_is_wanted_at_ninety_percent() {
        let mut blocks = Blocks::default();
        assert!(blocks.wants_next());
        assert_eq!(blocks.take(), None);
        blocks.add(100, 110);
        assert!(!blocks.wants_next());
        let ids: Vec<i64> = (0..9).map(|_| blocks.take().unwrap()).collect();
        assert_eq!(ids, (100..109).collect::<Vec<_>>());
        assert!(blocks.wants_next());
        blocks.add(500, 510);
        assert!(!blocks.wants_next());
        assert_eq!(blocks.take(), Some(109));
        assert_eq!(blocks.take(), Some(500));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocks_from_the_controller_give_unique_ids_that_survive_a_restart() {
        use crate::controller_testing::{TestController, WAIT};
        use crate::lifecycle::tests::running;

        let dir = tempfile::tempdir().unwrap();
        let node = TestController::start(dir.path(), true).await;
        assert_eq!(node.client().image().next_producer_id(), 0);
        let lifecycle = running(&node, 1).await;
        let channel = ControllerChannel::in_process(node.handle());
        let ids = ProducerIds::from_controller(channel, 1, lifecycle.statuses(), WAIT);
        let mut given = Vec::new();
        for _ in 0..2500 {
            given.push(ids.next_id().await.unwrap());
        }
        assert!(given.windows(2).all(|w| w[0] < w[1]), "not increasing");
        assert_eq!(given.first(), Some(&0));
        // Three blocks of 1000 were carved from the cluster's counter, and no fourth: 2500 is
        // not 90% of the third.
        let image = node
            .image_where("three blocks allocated", |i| i.next_producer_id() >= 3000)
            .await;
        assert_eq!(image.next_producer_id(), 3000);
        let last = *given.last().unwrap();
        assert!(last < 3000);
        assert!(
            matches!(
                std::future::Future::poll(
                    std::pin::pin!(ids.next_id()),
                    &mut std::task::Context::from_waker(std::task::Waker::noop())
                ),
                std::task::Poll::Ready(Ok(_))
            ),
            "an id in hand is handed out without waiting"
        );

        assert_eq!(
            lifecycle.shutdown(WAIT).await,
            crate::lifecycle::ShutdownOutcome::Completed
        );
        drop(ids);
        node.stop().await;

        let node = TestController::start(dir.path(), false).await;
        node.initialize().await;
        let lifecycle = running(&node, 1).await;
        let channel = ControllerChannel::in_process(node.handle());
        let ids = ProducerIds::from_controller(channel, 1, lifecycle.statuses(), WAIT);
        let after = ids.next_id().await.unwrap();
        assert!(
            after >= 3000,
            "id {after} may have been given before the restart"
        );
        drop(lifecycle);
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_gets_a_retriable_error_when_no_block_arrives() {
        let (_status, registration) = watch::channel(LifecycleStatus {
            state: crate::lifecycle::BrokerState::Registering,
            broker_epoch: -1,
            is_caught_up: false,
        });
        let dir = tempfile::tempdir().unwrap();
        let node = crate::controller_testing::TestController::start(dir.path(), true).await;
        let channel = ControllerChannel::in_process(node.handle());
        let ids =
            ProducerIds::from_controller(channel, 1, registration, Duration::from_millis(200));
        let error = ids.next_id().await.unwrap_err();
        assert_eq!(
            error.kafka_error(),
            ResponseError::CoordinatorLoadInProgress
        );
        node.stop().await;
    }
}
