//! Broker registration, heartbeats, session fencing, controlled shutdown and unregistration.
//!
//! A broker's life as the controller writes it: it registers (fenced), heartbeats until it has
//! caught up with the metadata log up to its own registration, is unfenced, and may lead. A
//! broker silent for the session timeout is fenced and its leaderships move. A broker that wants
//! to stop enters controlled shutdown, its leaderships move, and once it has seen those moves it
//! is told to shut down and is fenced.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    BrokerHeartbeatRequest, BrokerHeartbeatResponse, BrokerRegistrationRequest,
    BrokerRegistrationResponse, ResponseKind, UnregisterBrokerRequest, UnregisterBrokerResponse,
};
use uuid::Uuid;

use super::partition_change::{BrokerEvent, ClusterChanges};
use super::{str_bytes, CommitReply, Controller, Decision, Reply};
use crate::image::{BrokerRegistration, MetadataImage};
use crate::records::{Endpoint, FeatureRange, MetadataRecord, RECORD_VERSION};

/// One broker incarnation's session, in the active controller's memory only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    incarnation_id: Uuid,
    last_contact_ms: i64,
    /// The session timed out and `tick` has dealt with it; it waits for the next heartbeat.
    expired: bool,
    /// In controlled shutdown: the metadata offset the broker must reach before it may stop,
    /// set once it leads nothing (so the offset covers the entry that moved its last
    /// leadership).
    shutdown_offset: Option<i64>,
}

/// Sessions of the registered brokers, by broker id.
#[derive(Debug, Clone, Default)]
pub struct BrokerSessions {
    by_broker: BTreeMap<i32, Session>,
}

impl BrokerSessions {
    /// Records contact from an incarnation; a new incarnation starts a new session.
    pub(super) fn touch(&mut self, broker_id: i32, incarnation_id: Uuid, now_ms: i64) {
        let fresh = Session {
            incarnation_id,
            last_contact_ms: now_ms,
            expired: false,
            shutdown_offset: None,
        };
        let session = self
            .by_broker
            .entry(broker_id)
            .or_insert_with(|| fresh.clone());
        if session.incarnation_id == incarnation_id {
            session.last_contact_ms = now_ms;
            session.expired = false;
        } else {
            *session = fresh;
        }
    }

    /// When the first unexpired session times out.
    pub(super) fn next_deadline(&self, timeout_ms: i64) -> Option<i64> {
        self.by_broker
            .values()
            .filter(|s| !s.expired)
            .map(|s| s.last_contact_ms.saturating_add(timeout_ms))
            .min()
    }

    /// Whether `broker_id`'s incarnation has been heard from within the timeout.
    fn is_live(&self, broker_id: i32, incarnation_id: Uuid, now_ms: i64, timeout_ms: i64) -> bool {
        self.by_broker.get(&broker_id).is_some_and(|s| {
            s.incarnation_id == incarnation_id
                && !s.expired
                && now_ms < s.last_contact_ms.saturating_add(timeout_ms)
        })
    }

    /// The last contact of a broker's current session, for tests and status.
    pub fn last_contact_ms(&self, broker_id: i32) -> Option<i64> {
        self.by_broker.get(&broker_id).map(|s| s.last_contact_ms)
    }
}

fn registration_reply(error: E, message: &str) -> Decision {
    tracing::info!(error = ?error, message, "broker registration refused");
    Decision::now(
        Vec::new(),
        ResponseKind::BrokerRegistration(
            BrokerRegistrationResponse::default()
                .with_error_code(error.code())
                .with_broker_epoch(-1),
        ),
    )
}

/// The feature range a broker reports for `name`; a feature it does not list it supports at
/// level 0 only, as in Kafka.
fn supports(request: &BrokerRegistrationRequest, name: &str, level: i16) -> bool {
    let (min, max) = request
        .features
        .iter()
        .find(|f| f.name.as_str() == name)
        .map_or((0, 0), |f| {
            (f.min_supported_version, f.max_supported_version)
        });
    min <= level && level <= max
}

pub(super) fn register(
    controller: &mut Controller,
    image: &MetadataImage,
    request: BrokerRegistrationRequest,
    _version: i16,
    now_ms: i64,
) -> Decision {
    let broker_id = request.broker_id.0;
    if broker_id < 0 {
        return registration_reply(E::InvalidRequest, "a broker id is never negative");
    }
    if controller
        .config
        .controller_only_node_ids
        .contains(&broker_id)
    {
        return registration_reply(
            E::InvalidRegistration,
            "the id belongs to a controller-only voter",
        );
    }
    let cluster_id = request.cluster_id.as_str();
    // An empty id is a broker that has never joined: it adopts the cluster's.
    if !cluster_id.is_empty() && image.cluster_id().is_some_and(|c| c != cluster_id) {
        return registration_reply(
            E::InconsistentClusterId,
            "the broker belongs to another cluster",
        );
    }
    if let Some((name, level)) = image
        .features()
        .iter()
        .find(|(name, level)| !supports(&request, name, **level))
    {
        tracing::info!(broker_id, feature = %name, level, "broker cannot run the cluster's feature level");
        return registration_reply(
            E::UnsupportedVersion,
            "the broker does not support the cluster's feature levels",
        );
    }
    let timeout_ms = controller.config.broker_session_timeout_ms;
    let existing = image.broker(broker_id);
    if let Some(existing) = existing {
        if existing.incarnation_id == request.incarnation_id {
            // A retry of a registration that already committed: same answer, nothing new.
            controller
                .sessions
                .touch(broker_id, existing.incarnation_id, now_ms);
            return Decision::now(
                Vec::new(),
                ResponseKind::BrokerRegistration(
                    BrokerRegistrationResponse::default().with_broker_epoch(existing.epoch),
                ),
            );
        }
        // Two live processes with one id would fight over its partitions. A clean restart
        // names the epoch it stopped at; anything else waits for the old session to lapse.
        let old_session_live = !existing.fenced
            && controller
                .sessions
                .is_live(broker_id, existing.incarnation_id, now_ms, timeout_ms);
        if old_session_live && request.previous_broker_epoch != existing.epoch {
            return registration_reply(
                E::DuplicateBrokerRegistration,
                "another incarnation of this broker id still has a live session",
            );
        }
    }
    let mut changes = ClusterChanges::new(image, controller.config.default_min_insync_replicas);
    changes.records.push(MetadataRecord::RegisterBroker {
        v: RECORD_VERSION,
        broker_id,
        incarnation_id: request.incarnation_id,
        endpoints: request
            .listeners
            .iter()
            .map(|l| Endpoint {
                name: l.name.to_string(),
                host: l.host.to_string(),
                port: l.port,
                security_protocol: l.security_protocol,
            })
            .collect(),
        rack: request.rack.as_ref().map(|r| r.to_string()),
        features: request
            .features
            .iter()
            .map(|f| FeatureRange {
                name: f.name.to_string(),
                min: f.min_supported_version,
                max: f.max_supported_version,
            })
            .collect(),
        broker_epoch: None,
    });
    if existing.is_some() {
        // The old process is gone: its leaderships move in the same entry, so no image ever
        // shows the new, fenced incarnation leading.
        changes.apply(BrokerEvent::NewIncarnation(broker_id));
    }
    controller
        .sessions
        .touch(broker_id, request.incarnation_id, now_ms);
    tracing::info!(broker_id, incarnation = %request.incarnation_id, "registering broker");
    Decision {
        records: changes.records,
        reply: Reply::AtCommit(CommitReply::BrokerRegistered { broker_id }),
    }
}

fn heartbeat_reply(records: Vec<MetadataRecord>, response: BrokerHeartbeatResponse) -> Decision {
    Decision::now(records, ResponseKind::BrokerHeartbeat(response))
}

fn registration_change(
    registration: &BrokerRegistration,
    fenced: Option<bool>,
    in_controlled_shutdown: Option<bool>,
) -> MetadataRecord {
    MetadataRecord::BrokerRegistrationChange {
        v: RECORD_VERSION,
        broker_id: registration.id,
        broker_epoch: registration.epoch,
        fenced,
        in_controlled_shutdown,
    }
}

pub(super) fn heartbeat(
    controller: &mut Controller,
    image: &MetadataImage,
    request: BrokerHeartbeatRequest,
    now_ms: i64,
) -> Decision {
    let broker_id = request.broker_id.0;
    let refused = |error: E| {
        heartbeat_reply(
            Vec::new(),
            BrokerHeartbeatResponse::default()
                .with_error_code(error.code())
                .with_is_fenced(true),
        )
    };
    let Some(registration) = image.broker(broker_id) else {
        return refused(E::BrokerIdNotRegistered);
    };
    if registration.epoch != request.broker_epoch {
        return refused(E::StaleBrokerEpoch);
    }
    controller
        .sessions
        .touch(broker_id, registration.incarnation_id, now_ms);
    // Caught up once it has applied its own registration: it has then seen everything the
    // controller wrote before it joined.
    let caught_up = request.current_metadata_offset >= registration.epoch;
    let response = BrokerHeartbeatResponse::default().with_is_caught_up(caught_up);
    let mut changes = ClusterChanges::new(image, controller.config.default_min_insync_replicas);

    if registration.in_controlled_shutdown && !registration.fenced {
        let session = controller.sessions.by_broker.get_mut(&broker_id);
        let shutdown_offset = match session {
            Some(session) if !changes.leads_any(broker_id) => *session
                .shutdown_offset
                .get_or_insert(i64::try_from(image.provenance().index).unwrap_or(i64::MAX)),
            _ => return heartbeat_reply(Vec::new(), response.with_is_fenced(false)),
        };
        if request.current_metadata_offset < shutdown_offset {
            return heartbeat_reply(Vec::new(), response.with_is_fenced(false));
        }
        changes
            .records
            .push(registration_change(registration, Some(true), None));
        changes.apply(BrokerEvent::Fenced(broker_id));
        tracing::info!(broker_id, "controlled shutdown complete");
        return heartbeat_reply(
            changes.records,
            response.with_is_fenced(true).with_should_shut_down(true),
        );
    }
    if registration.fenced {
        if request.want_shut_down || registration.in_controlled_shutdown {
            // Fenced, it leads nothing: it may stop at once.
            return heartbeat_reply(
                Vec::new(),
                response.with_is_fenced(true).with_should_shut_down(true),
            );
        }
        if caught_up && !request.want_fence {
            changes
                .records
                .push(registration_change(registration, Some(false), None));
            changes.apply(BrokerEvent::Unfenced(broker_id));
            tracing::info!(broker_id, "unfencing broker");
            return heartbeat_reply(changes.records, response.with_is_fenced(false));
        }
        return heartbeat_reply(Vec::new(), response.with_is_fenced(true));
    }
    if request.want_shut_down {
        changes
            .records
            .push(registration_change(registration, None, Some(true)));
        changes.apply(BrokerEvent::ControlledShutdown(broker_id));
        tracing::info!(broker_id, "broker entering controlled shutdown");
        return heartbeat_reply(changes.records, response.with_is_fenced(false));
    }
    if request.want_fence {
        changes
            .records
            .push(registration_change(registration, Some(true), None));
        changes.apply(BrokerEvent::Fenced(broker_id));
        tracing::info!(broker_id, "fencing broker at its request");
        return heartbeat_reply(changes.records, response.with_is_fenced(true));
    }
    heartbeat_reply(Vec::new(), response.with_is_fenced(false))
}

pub(super) fn unregister(
    controller: &mut Controller,
    image: &MetadataImage,
    request: UnregisterBrokerRequest,
) -> Decision {
    let broker_id = request.broker_id.0;
    let Some(registration) = image.broker(broker_id) else {
        return Decision::now(
            Vec::new(),
            ResponseKind::UnregisterBroker(
                UnregisterBrokerResponse::default()
                    .with_error_code(E::BrokerIdNotRegistered.code())
                    .with_error_message(Some(str_bytes(format!(
                        "broker {broker_id} is not registered"
                    )))),
            ),
        );
    };
    let mut changes = ClusterChanges::new(image, controller.config.default_min_insync_replicas);
    changes.records.push(MetadataRecord::UnregisterBroker {
        v: RECORD_VERSION,
        broker_id,
        broker_epoch: registration.epoch,
    });
    changes.apply(BrokerEvent::Unregistered(broker_id));
    controller.sessions.by_broker.remove(&broker_id);
    tracing::info!(broker_id, "unregistering broker");
    Decision::now(
        changes.records,
        ResponseKind::UnregisterBroker(UnregisterBrokerResponse::default()),
    )
}

/// Fences every unfenced broker whose session has lasted `broker.session.timeout.ms` without
/// contact, stopping once the decision's bound is reached (the rest stay due).
pub(super) fn fence_expired(
    controller: &mut Controller,
    image: &MetadataImage,
    now_ms: i64,
) -> Vec<MetadataRecord> {
    let Controller {
        config, sessions, ..
    } = controller;
    let timeout_ms = config.broker_session_timeout_ms;
    // Sessions follow the image: gone brokers and old incarnations drop out, and a broker the
    // controller never heard of (cannot happen after `activate`) starts a session now.
    sessions.by_broker.retain(|id, s| {
        image
            .broker(*id)
            .is_some_and(|b| b.incarnation_id == s.incarnation_id)
    });
    for broker in image.brokers().values() {
        if !sessions.by_broker.contains_key(&broker.id) {
            sessions.touch(broker.id, broker.incarnation_id, now_ms);
        }
    }
    let mut changes = ClusterChanges::new(image, config.default_min_insync_replicas);
    for (broker_id, session) in sessions.by_broker.iter_mut() {
        if session.expired || now_ms < session.last_contact_ms.saturating_add(timeout_ms) {
            continue;
        }
        let Some(registration) = image.broker(*broker_id) else {
            continue;
        };
        if registration.fenced {
            session.expired = true;
            continue;
        }
        if changes.records.len() >= config.max_records_per_decision {
            break;
        }
        session.expired = true;
        changes
            .records
            .push(registration_change(registration, Some(true), None));
        let moved = changes.apply(BrokerEvent::Fenced(*broker_id));
        tracing::info!(
            broker_id,
            silent_ms = now_ms - session.last_contact_ms,
            partitions_changed = moved,
            "fencing broker: its session expired"
        );
    }
    changes.records
}
