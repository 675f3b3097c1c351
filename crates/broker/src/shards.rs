//! Coordinator shards, in the shape of Kafka's coordinator runtime (`CoordinatorRuntime.java`):
//! one shard per partition of an internal topic (`__consumer_offsets`, `__transaction_state`)
//! that this broker leads, each with its own coordinator state machine. A shard is made
//! `Loading` when this broker becomes leader of its partition, replayed from that partition on
//! a blocking thread, then `Active`; when the leadership goes, the shard is unloaded (its
//! coordinator answers whoever waits on it) and dropped. Each shard keeps its next clock
//! deadline for the one clock task that ticks its runtime's shards.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use caudal_coordinator::errors::{
    COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR,
};
use caudal_coordinator::{partition_for, Ms};
use tokio::sync::{watch, Notify};

use crate::partition::Partition;

/// A coordinator state machine that lives in the partitions of an internal topic.
pub trait ShardCoordinator: Sized + Send + std::fmt::Debug + 'static {
    /// What every shard's coordinator is made with.
    type Config: Send + Sync + std::fmt::Debug + 'static;
    /// The internal topic, for log lines.
    const TOPIC: &'static str;
    /// What the coordinator holds, for log lines ("groups", "transactional ids").
    const KEYS: &'static str;

    /// Replays `partition` into a new coordinator. Blocking.
    fn load(config: &Self::Config, partition: &Partition, now: Ms) -> io::Result<(Self, Loaded)>;

    /// The shard is given up: whoever waits on the coordinator is answered.
    fn unload(self);
}

/// Why this broker cannot serve a key: Kafka's answers, both of which send the client back to
/// FindCoordinator or to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// No shard for the key's partition here: this broker does not lead it.
    #[error("this broker is not the coordinator")]
    NotCoordinator,
    /// The key's shard is still replaying its partition.
    #[error("the coordinator is loading")]
    LoadInProgress,
    /// The coordinator's records could not be appended to its partition.
    #[error("the coordinator could not write its records")]
    WriteFailed,
}

impl CoordinatorError {
    /// Kafka's error code.
    pub fn code(self) -> i16 {
        match self {
            CoordinatorError::NotCoordinator => NOT_COORDINATOR,
            CoordinatorError::LoadInProgress => COORDINATOR_LOAD_IN_PROGRESS,
            CoordinatorError::WriteFailed => COORDINATOR_NOT_AVAILABLE,
        }
    }
}

/// A shard's partition could not be replayed.
#[derive(Debug, thiserror::Error)]
#[error("loading {topic}-{partition}: {reason}")]
pub struct LoadError {
    pub topic: &'static str,
    pub partition: i32,
    pub reason: String,
}

/// What loading shards found, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    pub shards: usize,
    /// Groups, or transactional ids.
    pub keys: usize,
    pub records: usize,
}

/// The leadership of an internal topic this broker gained and lost in one metadata change,
/// losses first (a partition can be lost by a deleted topic and gained by its successor at
/// once).
#[derive(Debug, Default)]
pub struct ShardChanges {
    /// The topic's partition count, when the topic exists.
    pub partition_count: Option<i32>,
    pub lost: Vec<i32>,
    pub gained: Vec<(i32, Arc<Partition>)>,
}

#[derive(Debug)]
pub enum ShardState<C> {
    Loading,
    Active {
        coordinator: C,
        loaded: Loaded,
    },
    /// The partition could not be replayed: NOT_COORDINATOR, as Kafka answers for a failed load.
    Failed(String),
    /// The leadership went while a request held the shard.
    Unloaded,
}

/// One partition this broker leads, and the keys that map to it.
#[derive(Debug)]
pub struct Shard<C> {
    pub index: i32,
    pub partition: Arc<Partition>,
    state: Mutex<ShardState<C>>,
    /// When this shard's clock ticks next, in ms since the epoch: never while loading, at once
    /// when loaded. Set by the clock after each tick; lowered (under the state's lock) by a
    /// request that set an earlier deadline.
    pub next_tick: AtomicI64,
}

impl<C: ShardCoordinator> Shard<C> {
    pub fn lock(&self) -> MutexGuard<'_, ShardState<C>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the active coordinator, under the shard's lock.
    pub fn with<T>(&self, f: impl FnOnce(&mut C) -> T) -> Result<T, CoordinatorError> {
        match &mut *self.lock() {
            ShardState::Active { coordinator, .. } => Ok(f(coordinator)),
            ShardState::Loading => Err(CoordinatorError::LoadInProgress),
            ShardState::Failed(_) | ShardState::Unloaded => Err(CoordinatorError::NotCoordinator),
        }
    }

    /// Gives the shard up, answering whoever waits on its coordinator.
    fn unload(&self) {
        let state = std::mem::replace(&mut *self.lock(), ShardState::Unloaded);
        self.next_tick.store(Ms::MAX, Ordering::SeqCst);
        if let ShardState::Active { coordinator, .. } = state {
            coordinator.unload();
        }
    }
}

/// The shards of one internal topic on this broker.
#[derive(Debug)]
pub struct Shards<C: ShardCoordinator> {
    config: C::Config,
    /// The partition count of the topic, by which keys map to partitions.
    partition_count: AtomicI32,
    shards: RwLock<HashMap<i32, Arc<Shard<C>>>>,
    /// Wakes the clock after a shard's next tick was lowered, or a shard loaded.
    clock: Notify,
    /// Counts shards that finished loading or went, for [`wait_loaded`](Self::wait_loaded).
    loads: watch::Sender<u64>,
}

impl<C: ShardCoordinator> Shards<C> {
    pub fn new(config: C::Config) -> Self {
        Shards {
            config,
            partition_count: AtomicI32::new(0),
            shards: RwLock::new(HashMap::new()),
            clock: Notify::new(),
            loads: watch::Sender::new(0),
        }
    }

    pub fn config(&self) -> &C::Config {
        &self.config
    }

    pub fn all(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i32, Arc<Shard<C>>>> {
        self.shards.read().unwrap_or_else(|p| p.into_inner())
    }

    fn all_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<i32, Arc<Shard<C>>>> {
        self.shards.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The partition `key` maps to.
    pub fn partition_of(&self, key: &str) -> i32 {
        partition_for(key, self.partition_count.load(Ordering::Relaxed))
    }

    /// The shard `key` maps to, if this broker has one.
    pub fn shard_of(&self, key: &str) -> Result<Arc<Shard<C>>, CoordinatorError> {
        self.all()
            .get(&self.partition_of(key))
            .cloned()
            .ok_or(CoordinatorError::NotCoordinator)
    }

    /// Every shard, in partition order.
    pub fn sorted(&self) -> Vec<Arc<Shard<C>>> {
        let mut shards: Vec<Arc<Shard<C>>> = self.all().values().cloned().collect();
        shards.sort_by_key(|s| s.index);
        shards
    }

    /// Applies the leadership changes of one metadata change: shards lost are given up, shards
    /// gained start loading.
    pub fn apply(self: &Arc<Self>, changes: ShardChanges) {
        if let Some(n) = changes.partition_count {
            self.partition_count.store(n, Ordering::Relaxed);
        }
        if !(changes.lost.is_empty() && changes.gained.is_empty()) {
            tracing::info!(
                topic = C::TOPIC,
                gained = changes.gained.len(),
                lost = changes.lost.len(),
                "coordinator shards changed"
            );
        }
        for index in changes.lost {
            self.resign(index);
        }
        for (index, partition) in changes.gained {
            self.elect(index, partition);
        }
    }

    /// This broker now leads partition `index`: makes its shard and loads it on a blocking
    /// thread. A shard already loading or loaded from the same replica stays, as Kafka keeps it
    /// across a new leader epoch.
    pub fn elect(self: &Arc<Self>, index: i32, partition: Arc<Partition>) {
        let shard = Arc::new(Shard {
            index,
            partition,
            state: Mutex::new(ShardState::Loading),
            next_tick: AtomicI64::new(Ms::MAX),
        });
        let replaced = {
            let mut shards = self.all_mut();
            if let Some(current) = shards.get(&index) {
                let failed = matches!(*current.lock(), ShardState::Failed(_));
                if Arc::ptr_eq(&current.partition, &shard.partition) && !failed {
                    return;
                }
            }
            shards.insert(index, shard.clone())
        };
        if let Some(old) = replaced {
            old.unload();
        }
        let shards = self.clone();
        tokio::task::spawn_blocking(move || {
            // A replay that panics must still end the shard's loading: a shard left Loading
            // would answer COORDINATOR_LOAD_IN_PROGRESS for ever and hold up the start.
            let loaded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shards.load(&shard)));
            if loaded.is_err() {
                {
                    let mut state = shard.lock();
                    if matches!(*state, ShardState::Loading) {
                        *state = ShardState::Failed("its replay panicked".to_string());
                    }
                }
                tracing::error!(topic = C::TOPIC, partition = shard.index, "replaying a coordinator partition panicked; this broker does not coordinate what it holds");
                shards.loads.send_modify(|n| *n += 1);
            }
        });
    }

    /// This broker no longer leads partition `index`: drops its shard.
    pub fn resign(&self, index: i32) {
        let removed = self.all_mut().remove(&index);
        if let Some(shard) = removed {
            shard.unload();
            self.loads.send_modify(|n| *n += 1);
        }
    }

    /// Replays the shard's partition into a fresh coordinator and makes the shard active,
    /// unless it was given up meanwhile. Blocking.
    fn load(&self, shard: &Shard<C>) {
        let replayed = C::load(&self.config, &shard.partition, crate::now_ms());
        {
            let mut state = shard.lock();
            if matches!(*state, ShardState::Loading) {
                *state = match replayed {
                    Ok((coordinator, loaded)) => {
                        tracing::debug!(
                            topic = C::TOPIC,
                            partition = shard.index,
                            keys = loaded.keys,
                            holds = C::KEYS,
                            records = loaded.records,
                            "coordinator shard loaded"
                        );
                        // Due at once: the clock learns its deadlines.
                        shard.next_tick.store(0, Ordering::SeqCst);
                        ShardState::Active {
                            coordinator,
                            loaded,
                        }
                    }
                    Err(e) => {
                        tracing::error!(topic = C::TOPIC, partition = shard.index, error = %e, "could not load a coordinator partition; this broker does not coordinate what it holds");
                        ShardState::Failed(e.to_string())
                    }
                };
            }
        }
        self.clock.notify_one();
        self.loads.send_modify(|n| *n += 1);
    }

    /// Waits until no shard is loading; returns what the shards hold. Fails if a shard could
    /// not be loaded.
    pub async fn wait_loaded(&self) -> Result<Loaded, LoadError> {
        let mut loads = self.loads.subscribe();
        loop {
            loads.borrow_and_update();
            let mut total = Loaded::default();
            let mut loading = false;
            for shard in self.all().values() {
                match &*shard.lock() {
                    ShardState::Loading => loading = true,
                    ShardState::Active { loaded, .. } => {
                        total.shards += loaded.shards;
                        total.keys += loaded.keys;
                        total.records += loaded.records;
                    }
                    ShardState::Failed(reason) => {
                        return Err(LoadError {
                            topic: C::TOPIC,
                            partition: shard.index,
                            reason: reason.clone(),
                        })
                    }
                    ShardState::Unloaded => {}
                }
            }
            if !loading {
                return Ok(total);
            }
            // The sender lives as long as `self`.
            let _ = loads.changed().await;
        }
    }

    /// The shards whose clock is due at `now`.
    pub fn due(&self, now: Ms) -> Vec<Arc<Shard<C>>> {
        self.all()
            .values()
            .filter(|s| s.next_tick.load(Ordering::SeqCst) <= now)
            .cloned()
            .collect()
    }

    /// Lowers `shard`'s next tick to `at` (call under the shard's lock, so the clock's own
    /// store after a tick cannot hide it), waking the clock if that is earlier than it knew.
    pub fn tick_by(&self, shard: &Shard<C>, at: Ms) {
        if shard.next_tick.fetch_min(at, Ordering::SeqCst) > at {
            self.clock.notify_one();
        }
    }

    /// When the clock must tick next: the earliest shard deadline, as last computed or lowered
    /// by a request.
    pub fn next_tick(&self) -> Ms {
        self.all()
            .values()
            .map(|s| s.next_tick.load(Ordering::SeqCst))
            .min()
            .unwrap_or(Ms::MAX)
    }

    /// Resolves once a request has set a deadline earlier than its shard's next tick, or a
    /// shard finished loading (at once if that happened since the last call).
    pub async fn clock_lowered(&self) {
        self.clock.notified().await
    }
}
