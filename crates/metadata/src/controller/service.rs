//! The controller runtime: one task per node with the controller role, active while this node
//! leads the metadata quorum.
//!
//! It follows the quorum's status. When this node becomes leader it waits until the image holds
//! every entry its log had at that moment, then activates the [`Controller`] on that image: it
//! then holds everything committed before the term. For a new leader that wait ends with its
//! blank entry applied; a lone voter restarting on its own committed vote leads again in the same
//! term without a blank entry (openraft restores it as leader), and the wait covers the tail of
//! its log that commits then. Requests come through a bounded
//! queue, one reply each; they are decided one at a time against the latest image, their records
//! proposed as one entry, and answered once it is applied. A timer runs [`Controller::tick`] at
//! [`Controller::next_deadline`] and proposes the fencing it decides.
//!
//! Proposals are serial: each decision sees every earlier one applied, so two CreateTopics of
//! one name cannot both pass. A node that does not lead, or stops leading while a proposal is in
//! flight, answers [`ControllerCallError::NotController`] (Kafka's NOT_CONTROLLER) and
//! deactivates; requests that arrive while it is still becoming active wait in the queue.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ResponseKind;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{Controller, ControllerRequest, Reply};
use crate::image::MetadataImage;
use crate::quorum::{QuorumClient, QuorumError, StatusWatch};
use crate::records::{EntryRecords, MetadataRecord};

/// Why a request to the controller was not decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerCallError {
    /// This node is not the active controller, or stopped being it before the request's
    /// records committed (they may still commit under the next leader). `leader` is the quorum
    /// leader this node knows of, if any.
    #[error("this node is not the active controller (quorum leader: {leader:?})")]
    NotController { leader: Option<u64> },
    /// The controller service, or the quorum under it, has stopped.
    #[error("the controller has stopped")]
    Stopped,
}

impl ControllerCallError {
    /// The Kafka error a broker answers with: NOT_CONTROLLER (41) either way, which makes
    /// clients and forwarding brokers look for the active controller again.
    pub fn kafka_error(&self) -> ResponseError {
        ResponseError::NotController
    }
}

/// Where the controller service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerState {
    /// This node does not lead the quorum; requests are answered NOT_CONTROLLER.
    Inactive,
    /// This node leads at `term` and waits for the entries its log had then to be applied;
    /// requests wait.
    Activating { term: u64 },
    /// This node is the active controller for `term`.
    Active { term: u64 },
    /// The service has stopped.
    Stopped,
}

/// The controller's clock, in milliseconds. Sessions are measured on it, so it must not jump:
/// the default is monotonic (tokio's clock, so a test on paused tokio time drives it too). A
/// manual clock moves only when told, for tests that fence brokers by time.
#[derive(Debug, Clone)]
pub struct ControllerClock {
    source: ClockSource,
}

#[derive(Debug, Clone)]
enum ClockSource {
    Monotonic(tokio::time::Instant),
    Manual(Arc<watch::Sender<i64>>),
}

impl ControllerClock {
    /// Milliseconds since this clock was made, on tokio's monotonic clock.
    pub fn monotonic() -> ControllerClock {
        ControllerClock {
            source: ClockSource::Monotonic(tokio::time::Instant::now()),
        }
    }

    /// A clock that reads `start_ms` until [`set_ms`](Self::set_ms) moves it.
    pub fn manual(start_ms: i64) -> ControllerClock {
        ControllerClock {
            source: ClockSource::Manual(Arc::new(watch::Sender::new(start_ms))),
        }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.source {
            ClockSource::Monotonic(origin) => {
                i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
            }
            ClockSource::Manual(time) => *time.borrow(),
        }
    }

    /// Moves a manual clock forward to `now_ms` (never back). Does nothing to a monotonic one.
    pub fn set_ms(&self, now_ms: i64) {
        if let ClockSource::Manual(time) = &self.source {
            time.send_if_modified(|t| {
                let later = now_ms > *t;
                if later {
                    *t = now_ms;
                }
                later
            });
        }
    }

    /// Returns once the clock reads `deadline_ms` or later.
    async fn sleep_until(&self, deadline_ms: i64) {
        match &self.source {
            ClockSource::Monotonic(origin) => {
                // `now_ms` is whole milliseconds since `origin`, so at `origin + deadline` it
                // reads the deadline: a tick never runs a millisecond early.
                let at = u64::try_from(deadline_ms)
                    .ok()
                    .and_then(|ms| origin.checked_add(Duration::from_millis(ms)));
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None if deadline_ms <= 0 => {}
                    None => std::future::pending::<()>().await,
                }
            }
            ClockSource::Manual(time) => {
                let mut time = time.subscribe();
                // The sender lives as long as this clock does, so this cannot fail.
                let _ = time.wait_for(|t| *t >= deadline_ms).await;
            }
        }
    }
}

/// Sizes of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerServiceConfig {
    /// Requests queued before callers wait to enqueue.
    pub queue_capacity: usize,
}

impl Default for ControllerServiceConfig {
    fn default() -> ControllerServiceConfig {
        ControllerServiceConfig {
            queue_capacity: 1024,
        }
    }
}

type ReplySender = oneshot::Sender<Result<ResponseKind, ControllerCallError>>;

struct Call {
    request: ControllerRequest,
    reply: ReplySender,
}

/// Sends requests to the controller service. Cloneable; every clone feeds the same queue.
#[derive(Debug, Clone)]
pub struct ControllerHandle {
    requests: mpsc::Sender<Call>,
    state: watch::Receiver<ControllerState>,
}

impl ControllerHandle {
    /// Has the controller decide `request` and returns its answer, once the records it wrote (if
    /// any) are committed and applied here. Waits while the queue is full and while this node
    /// is becoming the active controller; callers bound the wait with their request timeout.
    pub async fn call(
        &self,
        request: ControllerRequest,
    ) -> Result<ResponseKind, ControllerCallError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Call { request, reply })
            .await
            .map_err(|_| ControllerCallError::Stopped)?;
        answer.await.unwrap_or(Err(ControllerCallError::Stopped))
    }

    /// The service's state now.
    pub fn state(&self) -> ControllerState {
        *self.state.borrow()
    }

    /// A watch of the service's state, for callers that wait for it to become active.
    pub fn states(&self) -> watch::Receiver<ControllerState> {
        self.state.clone()
    }
}

/// The running controller service. Dropping it stops the task too; [`shutdown`](Self::shutdown)
/// also waits for it.
pub struct ControllerService {
    handle: ControllerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ControllerService {
    /// Starts the task on the current tokio runtime.
    pub fn start(
        controller: Controller,
        quorum: QuorumClient,
        clock: ControllerClock,
        config: ControllerServiceConfig,
    ) -> ControllerService {
        let (requests_tx, requests) = mpsc::channel(config.queue_capacity.max(1));
        let (state, state_rx) = watch::channel(ControllerState::Inactive);
        let (stop, stopped) = oneshot::channel();
        let runtime = Runtime {
            controller,
            statuses: quorum.statuses(),
            images: quorum.images(),
            quorum,
            clock,
            state,
            requests,
            leader_hint: None,
            activation_index: 0,
        };
        let task = tokio::spawn(runtime.run(stopped));
        ControllerService {
            handle: ControllerHandle {
                requests: requests_tx,
                state: state_rx,
            },
            stop: Some(stop),
            task,
        }
    }

    pub fn handle(&self) -> ControllerHandle {
        self.handle.clone()
    }

    /// Stops the task and waits for it. A request in flight is answered
    /// [`ControllerCallError::Stopped`]; its records may still commit.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "controller task failed");
        }
    }
}

impl Drop for ControllerService {
    fn drop(&mut self) {
        // The dropped stop sender ends the loop; abort in case it is inside a proposal.
        self.task.abort();
    }
}

/// How a proposal ended.
enum Proposed {
    Applied(u64),
    Failed(ControllerCallError),
    /// The service is stopping.
    Stopping,
}

struct Runtime {
    controller: Controller,
    quorum: QuorumClient,
    statuses: StatusWatch,
    images: watch::Receiver<Arc<MetadataImage>>,
    clock: ControllerClock,
    state: watch::Sender<ControllerState>,
    requests: mpsc::Receiver<Call>,
    /// The leader this node last knew of, for NOT_CONTROLLER answers.
    leader_hint: Option<u64>,
    /// While activating: the last entry in this node's log when it became leader. Once it is
    /// applied, the image holds everything committed before this term.
    activation_index: u64,
}

/// Returns once `images` holds the entry at `index`.
async fn image_at(images: &mut watch::Receiver<Arc<MetadataImage>>, index: u64) {
    if images
        .wait_for(|image| image.provenance().index >= index)
        .await
        .is_err()
    {
        // The quorum stopped; the status watch ends the loop.
        std::future::pending::<()>().await;
    }
}

impl Runtime {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        self.follow();
        loop {
            let state = *self.state.borrow();
            let activating = match state {
                ControllerState::Activating { term } => Some(term),
                _ => None,
            };
            let deadline = match state {
                ControllerState::Active { .. } => self.controller.next_deadline(),
                _ => None,
            };
            tokio::select! {
                biased;
                _ = &mut stop => break,
                changed = self.statuses.changed() => {
                    if let Err(e) = changed {
                        tracing::info!(error = %e, "controller stops with the quorum");
                        break;
                    }
                    self.follow();
                }
                _ = image_at(&mut self.images, self.activation_index),
                    if activating.is_some() => self.activate(),
                _ = self.clock.sleep_until(deadline.unwrap_or(i64::MAX)), if deadline.is_some() => {
                    if self.tick(&mut stop).await {
                        break;
                    }
                }
                call = self.requests.recv(), if activating.is_none() => {
                    let Some(call) = call else { break };
                    if self.serve(call, &mut stop).await {
                        break;
                    }
                }
            }
        }
        self.state.send_replace(ControllerState::Stopped);
        // Queued requests are dropped with their replies: callers see `Stopped`.
        self.requests.close();
    }

    /// Follows the quorum's status: leading starts activation, not leading deactivates.
    fn follow(&mut self) {
        let status = self.statuses.current();
        self.leader_hint = status.leader;
        let current = *self.state.borrow();
        let next = if status.is_leader {
            match current {
                ControllerState::Active { term } | ControllerState::Activating { term }
                    if term == status.term =>
                {
                    current
                }
                _ => {
                    self.activation_index = status.last_log_index.unwrap_or(0);
                    ControllerState::Activating { term: status.term }
                }
            }
        } else {
            ControllerState::Inactive
        };
        if next != current {
            if matches!(current, ControllerState::Active { .. }) {
                tracing::info!(
                    node_id = status.node_id,
                    term = status.term,
                    leader = ?status.leader,
                    "controller inactive: this node no longer leads the metadata quorum"
                );
            }
            self.state.send_replace(next);
        }
    }

    /// The image holds every entry this node's log had when it became leader: everything
    /// committed before its term is in it.
    fn activate(&mut self) {
        let ControllerState::Activating { term } = *self.state.borrow() else {
            return;
        };
        let image = self.quorum.image();
        if image.provenance().index < self.activation_index {
            return;
        }
        self.controller.activate(&image, self.clock.now_ms());
        self.state.send_replace(ControllerState::Active { term });
    }

    fn active_term(&self) -> Option<u64> {
        match *self.state.borrow() {
            ControllerState::Active { term } => Some(term),
            _ => None,
        }
    }

    fn not_controller(&self) -> ControllerCallError {
        ControllerCallError::NotController {
            leader: self.leader_hint,
        }
    }

    /// Decides one request and answers it. True if the service is stopping.
    async fn serve(&mut self, call: Call, stop: &mut oneshot::Receiver<()>) -> bool {
        if self.active_term().is_none() {
            let _ = call.reply.send(Err(self.not_controller()));
            return false;
        }
        let image = self.quorum.image();
        let decision = self
            .controller
            .handle(&image, call.request, self.clock.now_ms());
        let (index, image) = if decision.records.is_empty() {
            (image.provenance().index, image)
        } else {
            match self.propose(decision.records, stop).await {
                Proposed::Applied(index) => (index, self.quorum.image()),
                Proposed::Failed(e) => {
                    let _ = call.reply.send(Err(e));
                    return false;
                }
                Proposed::Stopping => {
                    let _ = call.reply.send(Err(ControllerCallError::Stopped));
                    return true;
                }
            }
        };
        let response = match decision.reply {
            Reply::Now(response) => response,
            Reply::AtCommit(reply) => reply.resolve(index, &image),
        };
        // A caller that gave up has dropped its receiver; the decision stands.
        let _ = call.reply.send(Ok(response));
        false
    }

    /// Fences the brokers whose sessions expired. True if the service is stopping.
    async fn tick(&mut self, stop: &mut oneshot::Receiver<()>) -> bool {
        let image = self.quorum.image();
        let records = self.controller.tick(&image, self.clock.now_ms());
        if records.is_empty() {
            return false;
        }
        match self.propose(records, stop).await {
            Proposed::Applied(_) => false,
            Proposed::Failed(e) => {
                tracing::warn!(error = %e, "fencing expired broker sessions was not committed");
                false
            }
            Proposed::Stopping => true,
        }
    }

    /// Proposes `records` as one entry and waits until it is applied here, this node stops
    /// leading, or the service stops. Any failure deactivates the controller: its sessions
    /// assumed the records would commit, and a later activation starts them afresh.
    async fn propose(
        &mut self,
        records: Vec<MetadataRecord>,
        stop: &mut oneshot::Receiver<()>,
    ) -> Proposed {
        let Some(term) = self.active_term() else {
            return Proposed::Failed(self.not_controller());
        };
        let outcome = {
            let proposal = self.quorum.propose(EntryRecords(records));
            tokio::pin!(proposal);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut *stop => return Proposed::Stopping,
                    result = &mut proposal => break result,
                    changed = self.statuses.changed() => {
                        if changed.is_err() {
                            break Err(QuorumError::Stopped("the quorum has shut down".to_string()));
                        }
                        let status = self.statuses.current();
                        self.leader_hint = status.leader;
                        if !status.is_leader || status.term != term {
                            // Leadership lost or moved: this entry may commit under the next
                            // leader or be dropped; either way it is no longer ours to answer for.
                            break Err(QuorumError::NotLeader { leader: status.leader });
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(applied) => {
                // The entry was applied before the proposal returned; wait for the image that
                // includes it all the same, so the answer is resolved against it.
                let index = applied.index;
                let _ = self
                    .images
                    .wait_for(|image| image.provenance().index >= index)
                    .await;
                Proposed::Applied(index)
            }
            Err(e) => {
                self.leader_hint = match &e {
                    QuorumError::NotLeader { leader } => *leader,
                    _ => self.leader_hint,
                };
                tracing::info!(error = %e, term, "controller proposal failed; deactivating");
                // Back to waiting for this node's status: if it still leads, activation
                // follows at once with fresh sessions.
                self.state.send_replace(ControllerState::Inactive);
                self.follow();
                match e {
                    QuorumError::Stopped(_) => Proposed::Failed(ControllerCallError::Stopped),
                    _ => Proposed::Failed(self.not_controller()),
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
