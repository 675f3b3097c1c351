//! The broker's life as the controller sees it: registration, heartbeats, fencing and
//! controlled shutdown.
//!
//! At start the broker registers with a fresh incarnation id, its listeners, rack and feature
//! range, retrying with bounded backoff until the controller accepts. It then heartbeats every
//! `broker.heartbeat.interval.ms` with the offset of the metadata it has applied; the controller
//! unfences it once that offset covers its registration. An answer saying its epoch is stale or
//! that it is not registered (another incarnation took the id, or it was unregistered) makes it
//! register again. To stop, it heartbeats with `want_shut_down` until the controller says
//! `should_shut_down` (its leaderships have moved and it has seen the moves) or a bounded wait
//! runs out: a controller that cannot be reached must not hold a shutdown forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caudal_metadata::{
    ControllerRequest, Endpoint, METADATA_VERSION_FEATURE, METADATA_VERSION_LEVEL,
};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::broker_registration_request::{Feature, Listener};
use kafka_protocol::messages::{
    BrokerHeartbeatRequest, BrokerHeartbeatResponse, BrokerId, BrokerRegistrationRequest,
    ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::controller_channel::{Backoff, ChannelError, ControllerChannel};
use crate::routes::ListenerKind;

/// API versions of the requests the broker sends its controller.
const REGISTRATION_VERSION: i16 = 4;
const HEARTBEAT_VERSION: i16 = 1;
/// Kafka's security protocol id of PLAINTEXT, the only one Caudal serves.
const PLAINTEXT: i16 = 0;
/// After the first answer in controlled shutdown, the next heartbeat goes this soon (as
/// Kafka's broker does): the controller usually lets the broker go at the second one.
const FIRST_SHUTDOWN_FOLLOW_UP: Duration = Duration::from_millis(10);
/// While the controller keeps it fenced (it has not caught up with the metadata log yet), the
/// broker heartbeats this often, as Kafka's does, so a start is not held a whole interval.
const CATCH_UP_INTERVAL: Duration = Duration::from_millis(10);

/// The metadata offset this broker has applied (its image's last entry).
pub type MetadataOffset = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Where the broker stands with the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Not registered yet, or registering again.
    Registering,
    /// Registered, but fenced: it may not lead.
    Fenced,
    /// Registered and unfenced.
    Running,
    /// Heartbeating with `want_shut_down` until the controller lets it go.
    ShuttingDown,
    /// Heartbeats have stopped.
    Stopped,
}

/// The broker's state with the epoch of its registration and whether it has caught up with
/// the metadata log (from the last heartbeat answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleStatus {
    pub state: BrokerState,
    /// -1 until registered.
    pub broker_epoch: i64,
    pub is_caught_up: bool,
}

impl LifecycleStatus {
    const REGISTERING: LifecycleStatus = LifecycleStatus {
        state: BrokerState::Registering,
        broker_epoch: -1,
        is_caught_up: false,
    };
}

/// How a controlled shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The controller said `should_shut_down` (or the broker had never registered).
    Completed,
    /// The bounded wait ran out first.
    TimedOut,
    /// The controller stopped before it confirmed: the broker stops unconfirmed.
    ControllerStopped,
}

/// What the broker tells the controller about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    pub node_id: i32,
    /// Empty for a broker that has never joined: it adopts the cluster's.
    pub cluster_id: String,
    /// The client listeners, with their advertised addresses.
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval: Duration,
    /// How long one registration or heartbeat waits for the controller.
    pub call_timeout: Duration,
    /// Between refused registrations.
    pub registration_backoff: Backoff,
    /// The epoch this node stopped at cleanly, if known (-1 otherwise): it lets the new
    /// incarnation register while the controller still thinks the old one is alive.
    pub previous_broker_epoch: i64,
}

impl LifecycleConfig {
    /// Registration backoff: 100 ms doubling to 5 s.
    pub const REGISTRATION_BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    /// The broker's identity and client listeners as configured.
    pub fn from_broker(config: &BrokerConfig) -> LifecycleConfig {
        let heartbeat_interval = Duration::from_millis(config.broker_heartbeat_interval_ms());
        LifecycleConfig {
            node_id: config.node_id,
            cluster_id: config.cluster_id.clone(),
            endpoints: config
                .listeners
                .iter()
                .filter(|l| l.kind == ListenerKind::Client)
                .map(|l| Endpoint {
                    name: l.name.clone(),
                    host: l.advertise.0.clone(),
                    port: l.advertise.1,
                    security_protocol: PLAINTEXT,
                })
                .collect(),
            rack: config.broker_rack().map(str::to_string),
            heartbeat_interval,
            call_timeout: heartbeat_interval.max(Duration::from_secs(1)),
            registration_backoff: Self::REGISTRATION_BACKOFF,
            previous_broker_epoch: -1,
        }
    }

    /// The BrokerRegistration request of incarnation `incarnation_id`.
    pub fn registration(
        &self,
        incarnation_id: Uuid,
        previous_broker_epoch: i64,
    ) -> BrokerRegistrationRequest {
        let text = |s: &str| StrBytes::from_string(s.to_string());
        BrokerRegistrationRequest::default()
            .with_broker_id(BrokerId(self.node_id))
            .with_cluster_id(text(&self.cluster_id))
            .with_incarnation_id(incarnation_id)
            .with_listeners(
                self.endpoints
                    .iter()
                    .map(|e| {
                        Listener::default()
                            .with_name(text(&e.name))
                            .with_host(text(&e.host))
                            .with_port(e.port)
                            .with_security_protocol(e.security_protocol)
                    })
                    .collect(),
            )
            .with_features(vec![Feature::default()
                .with_name(text(METADATA_VERSION_FEATURE))
                .with_min_supported_version(1)
                .with_max_supported_version(METADATA_VERSION_LEVEL)])
            .with_rack(self.rack.as_deref().map(text))
            .with_previous_broker_epoch(previous_broker_epoch)
    }
}

/// The running registration and heartbeat task.
pub struct BrokerLifecycle {
    incarnation_id: Uuid,
    /// Set by the task when its heartbeats ended because the controller had stopped.
    controller_stopped: Arc<AtomicBool>,
    status: Arc<watch::Sender<LifecycleStatus>>,
    want_shut_down: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl BrokerLifecycle {
    /// Starts registering (a fresh incarnation) and heartbeating on the current tokio runtime.
    pub fn start(
        config: LifecycleConfig,
        channel: ControllerChannel,
        metadata_offset: MetadataOffset,
    ) -> BrokerLifecycle {
        let incarnation_id = Uuid::new_v4();
        let status = Arc::new(watch::Sender::new(LifecycleStatus::REGISTERING));
        let (want_shut_down, shutdown_requested) = watch::channel(false);
        let controller_stopped = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(
            Task {
                controller_stopped: controller_stopped.clone(),
                config,
                channel,
                metadata_offset,
                incarnation_id,
                status: status.clone(),
                shutdown_requested,
            }
            .run(),
        );
        BrokerLifecycle {
            incarnation_id,
            controller_stopped,
            status,
            want_shut_down,
            task,
        }
    }

    pub fn incarnation_id(&self) -> Uuid {
        self.incarnation_id
    }

    pub fn status(&self) -> LifecycleStatus {
        *self.status.borrow()
    }

    /// A watch of the status, e.g. to wait until caught up or unfenced.
    pub fn statuses(&self) -> watch::Receiver<LifecycleStatus> {
        self.status.subscribe()
    }

    /// Controlled shutdown: heartbeats with `want_shut_down` until the controller says
    /// `should_shut_down` or `timeout` runs out, then stops heartbeating.
    pub async fn shutdown(mut self, timeout: Duration) -> ShutdownOutcome {
        self.want_shut_down.send_replace(true);
        let mut statuses = self.status.subscribe();
        // The watch's guard is dropped within this statement: holding it while the status is
        // written below would deadlock.
        let stopped = tokio::time::timeout(
            timeout,
            statuses.wait_for(|s| s.state == BrokerState::Stopped),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        let outcome = if stopped && self.controller_stopped.load(Ordering::Acquire) {
            ShutdownOutcome::ControllerStopped
        } else if stopped {
            ShutdownOutcome::Completed
        } else {
            ShutdownOutcome::TimedOut
        };
        if outcome == ShutdownOutcome::TimedOut {
            tracing::warn!(
                ?timeout,
                "the controller did not confirm the controlled shutdown in time; stopping anyway"
            );
        }
        self.task.abort();
        let _ = (&mut self.task).await;
        self.status.send_modify(|s| s.state = BrokerState::Stopped);
        outcome
    }
}

impl Drop for BrokerLifecycle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one heartbeat led to.
enum Beat {
    Answered(BrokerHeartbeatResponse),
    /// The controller does not know this registration any more.
    RegisterAgain,
    /// No usable answer (why, for the log); try again at the next interval.
    Failed(String),
    /// The controller this broker reaches has stopped for good (in-process: the node is
    /// stopping, or its metadata quorum failed). Heartbeats end.
    ControllerStopped,
}

/// Logs failed heartbeats without repeating itself: the first failure of a run at warn, then a
/// summary every [`HeartbeatFailures::SUMMARY_EVERY`] while they go on, and one line when the
/// controller answers again. A controller election or a partition of the network would
/// otherwise write a warning at every heartbeat.
#[derive(Debug, Default)]
struct HeartbeatFailures {
    /// When the current run of failures began, and when it was last reported.
    run: Option<(tokio::time::Instant, tokio::time::Instant)>,
    /// Failures in the current run.
    count: u64,
}

/// What [`HeartbeatFailures::failed`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    /// The first failure of a run, at warn.
    First,
    /// A summary of the run so far, at warn.
    Summary,
    /// Nothing above debug.
    Quiet,
}

impl HeartbeatFailures {
    const SUMMARY_EVERY: Duration = Duration::from_secs(30);

    fn failed(&mut self, node_id: i32, why: &str) -> Reported {
        let now = tokio::time::Instant::now();
        self.count += 1;
        match &mut self.run {
            None => {
                self.run = Some((now, now));
                tracing::warn!(
                    node_id,
                    error = why,
                    "heartbeat to the controller failed; retrying (further failures are summarised)"
                );
                Reported::First
            }
            Some((since, reported)) if now.duration_since(*reported) >= Self::SUMMARY_EVERY => {
                *reported = now;
                tracing::warn!(
                    node_id,
                    failed = self.count,
                    for_s = now.duration_since(*since).as_secs(),
                    last_error = why,
                    "heartbeats to the controller still fail"
                );
                Reported::Summary
            }
            Some(_) => {
                tracing::debug!(node_id, error = why, "heartbeat to the controller failed");
                Reported::Quiet
            }
        }
    }

    fn answered(&mut self, node_id: i32) {
        if let Some((since, _)) = self.run.take() {
            tracing::info!(
                node_id,
                failed = self.count,
                after_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "the controller answers heartbeats again"
            );
        }
        self.count = 0;
    }
}

struct Task {
    controller_stopped: Arc<AtomicBool>,
    config: LifecycleConfig,
    channel: ControllerChannel,
    metadata_offset: MetadataOffset,
    incarnation_id: Uuid,
    status: Arc<watch::Sender<LifecycleStatus>>,
    shutdown_requested: watch::Receiver<bool>,
}

impl Task {
    async fn run(mut self) {
        let mut previous_epoch = self.config.previous_broker_epoch;
        while let Some(epoch) = self.register(previous_epoch).await {
            previous_epoch = epoch;
            self.status.send_replace(LifecycleStatus {
                state: BrokerState::Fenced,
                broker_epoch: epoch,
                is_caught_up: false,
            });
            if self.heartbeat_loop(epoch).await {
                break;
            }
            self.status.send_replace(LifecycleStatus::REGISTERING);
        }
        self.status.send_modify(|s| s.state = BrokerState::Stopped);
    }

    fn shutdown_requested(&self) -> bool {
        *self.shutdown_requested.borrow()
    }

    /// Registers until the controller accepts; `None` if shutdown was asked for first.
    async fn register(&mut self, previous_epoch: i64) -> Option<i64> {
        let mut delays = self.config.registration_backoff.delays();
        loop {
            if self.shutdown_requested() {
                return None;
            }
            let request = self
                .config
                .registration(self.incarnation_id, previous_epoch);
            let answer = self
                .channel
                .call(
                    ControllerRequest::RegisterBroker(request, REGISTRATION_VERSION),
                    self.config.call_timeout,
                )
                .await;
            let delay = delays
                .next()
                .unwrap_or(self.config.registration_backoff.max);
            match answer {
                Ok(ResponseKind::BrokerRegistration(r)) if r.error_code == 0 => {
                    tracing::info!(
                        node_id = self.config.node_id,
                        broker_epoch = r.broker_epoch,
                        incarnation = %self.incarnation_id,
                        "registered with the controller"
                    );
                    return Some(r.broker_epoch);
                }
                Ok(ResponseKind::BrokerRegistration(r)) => tracing::warn!(
                    node_id = self.config.node_id,
                    error = ?ResponseError::try_from_code(r.error_code),
                    retry_in = ?delay,
                    "the controller refused this broker's registration"
                ),
                Ok(other) => tracing::error!(
                    response = ?other,
                    "the controller answered a registration with another response"
                ),
                Err(ChannelError::Stopped) => {
                    self.controller_stopped.store(true, Ordering::Release);
                    tracing::warn!(
                        node_id = self.config.node_id,
                        "the controller has stopped; not registering"
                    );
                    return None;
                }
                Err(e) => tracing::warn!(
                    node_id = self.config.node_id,
                    error = %e,
                    retry_in = ?delay,
                    "could not register with the controller"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown_requested.wait_for(|wanted| *wanted) => {}
            }
        }
    }

    /// Heartbeats registration `epoch`. True once the broker may stop; false when it must
    /// register again.
    async fn heartbeat_loop(&mut self, epoch: i64) -> bool {
        let mut shutdown_answers = 0u32;
        let mut fenced = true;
        let mut failures = HeartbeatFailures::default();
        loop {
            let want_shut_down = self.shutdown_requested();
            if want_shut_down {
                self.status
                    .send_modify(|s| s.state = BrokerState::ShuttingDown);
            }
            match self.heartbeat(epoch, want_shut_down).await {
                Beat::RegisterAgain => return false,
                Beat::ControllerStopped => {
                    self.controller_stopped.store(true, Ordering::Release);
                    tracing::warn!(
                        node_id = self.config.node_id,
                        "the controller has stopped; heartbeats end"
                    );
                    return true;
                }
                Beat::Failed(why) => {
                    failures.failed(self.config.node_id, &why);
                }
                Beat::Answered(r) if want_shut_down && r.should_shut_down => {
                    tracing::info!(
                        node_id = self.config.node_id,
                        "the controller confirmed the controlled shutdown"
                    );
                    return true;
                }
                Beat::Answered(r) => {
                    failures.answered(self.config.node_id);
                    let state = if want_shut_down {
                        shutdown_answers += 1;
                        BrokerState::ShuttingDown
                    } else if r.is_fenced {
                        fenced = true;
                        BrokerState::Fenced
                    } else {
                        fenced = false;
                        BrokerState::Running
                    };
                    self.status.send_replace(LifecycleStatus {
                        state,
                        broker_epoch: epoch,
                        is_caught_up: r.is_caught_up,
                    });
                }
            }
            let delay = if want_shut_down && shutdown_answers == 1 {
                FIRST_SHUTDOWN_FOLLOW_UP
            } else if fenced && !want_shut_down {
                CATCH_UP_INTERVAL
            } else {
                self.config.heartbeat_interval
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown_requested.wait_for(|wanted| *wanted), if !want_shut_down => {}
            }
        }
    }

    async fn heartbeat(&self, epoch: i64, want_shut_down: bool) -> Beat {
        let request = BrokerHeartbeatRequest::default()
            .with_broker_id(BrokerId(self.config.node_id))
            .with_broker_epoch(epoch)
            .with_current_metadata_offset((self.metadata_offset)())
            .with_want_shut_down(want_shut_down);
        let answer = self
            .channel
            .call(
                ControllerRequest::Heartbeat(request, HEARTBEAT_VERSION),
                self.config.call_timeout,
            )
            .await;
        match answer {
            Ok(ResponseKind::BrokerHeartbeat(r)) if r.error_code == 0 => Beat::Answered(r),
            Ok(ResponseKind::BrokerHeartbeat(r)) => {
                let error = ResponseError::try_from_code(r.error_code);
                match error {
                    Some(
                        ResponseError::StaleBrokerEpoch | ResponseError::BrokerIdNotRegistered,
                    ) => {
                        tracing::warn!(
                            node_id = self.config.node_id,
                            broker_epoch = epoch,
                            ?error,
                            "the controller no longer knows this registration; registering again"
                        );
                        Beat::RegisterAgain
                    }
                    _ => Beat::Failed(format!(
                        "the controller refused it with error code {} ({error:?})",
                        r.error_code
                    )),
                }
            }
            Ok(other) => Beat::Failed(format!(
                "the controller answered with another response: {other:?}"
            )),
            Err(ChannelError::Stopped) => Beat::ControllerStopped,
            Err(e) => Beat::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, TopicName};

    use super::*;
    use crate::controller_testing::{bounded, TestController, CLUSTER_ID, WAIT};
    use caudal_metadata::quorum::QuorumClient;

    fn config(node_id: i32) -> LifecycleConfig {
        let mut broker = BrokerConfig::new(
            format!("127.0.0.1:{}", 9090 + node_id).parse().unwrap(),
            "unused".into(),
        );
        broker.node_id = node_id;
        broker.cluster_id = CLUSTER_ID.to_string();
        broker
            .set("broker.rack", &format!("rack-{node_id}"))
            .unwrap();
        broker.set("broker.heartbeat.interval.ms", "50").unwrap();
        LifecycleConfig::from_broker(&broker)
    }

    /// The applied offset of the in-process image, as the broker will read it.
    fn applied(client: QuorumClient) -> MetadataOffset {
        Arc::new(move || i64::try_from(client.image().provenance().index).unwrap())
    }

    async fn until_status(
        lifecycle: &BrokerLifecycle,
        what: &str,
        check: impl Fn(&LifecycleStatus) -> bool,
    ) -> LifecycleStatus {
        let mut statuses = lifecycle.statuses();
        let status = *bounded(what, statuses.wait_for(|s| check(s)))
            .await
            .unwrap();
        status
    }

    /// Broker `node_id` registered, caught up and unfenced.
    pub(crate) async fn running(node: &TestController, node_id: i32) -> BrokerLifecycle {
        let lifecycle = BrokerLifecycle::start(
            config(node_id),
            ControllerChannel::in_process(node.handle()),
            applied(node.client()),
        );
        until_status(&lifecycle, "the broker running", |s| {
            s.state == BrokerState::Running && s.is_caught_up
        })
        .await;
        lifecycle
    }

    async fn register(
        channel: &ControllerChannel,
        request: BrokerRegistrationRequest,
    ) -> (i16, i64) {
        match channel
            .call(
                ControllerRequest::RegisterBroker(request, REGISTRATION_VERSION),
                WAIT,
            )
            .await
            .unwrap()
        {
            ResponseKind::BrokerRegistration(r) => (r.error_code, r.broker_epoch),
            other => panic!("not a registration answer: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_heartbeats_are_reported_once_then_summarised_until_answered() {
        let mut failures = HeartbeatFailures::default();
        assert_eq!(failures.failed(1, "down"), Reported::First);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(failures.failed(1, "down"), Reported::Quiet);
        }
        tokio::time::advance(HeartbeatFailures::SUMMARY_EVERY).await;
        assert_eq!(failures.failed(1, "down"), Reported::Summary);
        assert_eq!(failures.failed(1, "down"), Reported::Quiet);
        assert_eq!(failures.count, 23);
        failures.answered(1);
        assert_eq!(failures.count, 0);
        assert_eq!(failures.failed(1, "down again"), Reported::First);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registers_heartbeats_and_is_unfenced_and_a_second_incarnation_needs_the_old_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestController::start(dir.path(), true).await;
        let lifecycle = running(&node, 1).await;
        let epoch = lifecycle.status().broker_epoch;
        let image = node
            .image_where("broker 1 unfenced", |i| {
                i.broker(1).is_some_and(|b| !b.fenced)
            })
            .await;
        let registered = image.broker(1).unwrap();
        assert_eq!(registered.epoch, epoch);
        assert_eq!(registered.incarnation_id, lifecycle.incarnation_id());
        assert_eq!(registered.rack.as_deref(), Some("rack-1"));
        assert_eq!(
            registered.endpoints,
            vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9091,
                security_protocol: PLAINTEXT,
            }]
        );

        // Another process with the same id, while this one is alive.
        let channel = ControllerChannel::in_process(node.handle());
        let other = config(1).registration(Uuid::new_v4(), -1);
        let (error, _) = register(&channel, other.clone()).await;
        assert_eq!(error, ResponseError::DuplicateBrokerRegistration.code());
        let (error, other_epoch) =
            register(&channel, other.with_previous_broker_epoch(epoch)).await;
        assert_eq!(error, 0);
        assert!(other_epoch > epoch);

        // The first process's epoch is now stale: it registers again, and the image holds it.
        let again = until_status(&lifecycle, "registering again", |s| {
            s.broker_epoch > other_epoch && s.state == BrokerState::Running
        })
        .await;
        let image = node
            .image_where("the first incarnation back", |i| {
                i.broker(1).is_some_and(|b| b.epoch == again.broker_epoch)
            })
            .await;
        assert_eq!(
            image.broker(1).unwrap().incarnation_id,
            lifecycle.incarnation_id()
        );
        assert_eq!(lifecycle.shutdown(WAIT).await, ShutdownOutcome::Completed);
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn controlled_shutdown_moves_leaders_before_the_broker_may_stop() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestController::start(dir.path(), true).await;
        let first = running(&node, 1).await;
        let second = running(&node, 2).await;
        let channel = ControllerChannel::in_process(node.handle());
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_num_partitions(4)
            .with_replication_factor(2);
        let request = CreateTopicsRequest::default().with_topics(vec![topic]);
        match channel
            .call(ControllerRequest::CreateTopics(request, 7), WAIT)
            .await
            .unwrap()
        {
            ResponseKind::CreateTopics(r) => assert_eq!(r.topics[0].error_code, 0, "{r:?}"),
            other => panic!("not a CreateTopics answer: {other:?}"),
        }
        let leaders = |image: &caudal_metadata::MetadataImage| -> Vec<i32> {
            let topic = image.topic_by_name("orders").unwrap();
            (0..4)
                .map(|p| image.partition(topic.id, p).unwrap().leader)
                .collect()
        };
        let before = leaders(&node.client().image());
        assert!(before.contains(&1), "broker 1 leads nothing: {before:?}");

        assert_eq!(first.shutdown(WAIT).await, ShutdownOutcome::Completed);
        let image = node.client().image();
        let registration = image.broker(1).unwrap();
        assert!(registration.fenced && registration.in_controlled_shutdown);
        assert_eq!(leaders(&image), vec![2; 4]);
        assert_eq!(second.status().state, BrokerState::Running);
        assert_eq!(second.shutdown(WAIT).await, ShutdownOutcome::Completed);
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_does_not_wait_for_a_stopped_controller() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestController::start(dir.path(), true).await;
        let lifecycle = running(&node, 1).await;
        node.stop().await;
        // Far longer than the test's bound: only noticing the stopped controller ends it.
        let outcome = bounded(
            "the shutdown with a stopped controller",
            lifecycle.shutdown(WAIT * 4),
        )
        .await;
        assert_eq!(outcome, ShutdownOutcome::ControllerStopped);
    }
}
