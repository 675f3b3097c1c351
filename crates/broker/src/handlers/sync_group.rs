//! SyncGroup: followers wait for the leader's assignment; everyone gets their own part.

use std::sync::Arc;

use caudal_coordinator::SyncRequest;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{ResponseKind, SyncGroupRequest, SyncGroupResponse};
use tokio::sync::oneshot;

use super::{ready, str_bytes, Reply};
use crate::coordinator_runtime::Answer;
use crate::{now_ms, Broker};

/// v5 and later name the protocol type and name in the answer.
const PROTOCOL_SINCE: i16 = 5;

pub fn handle(broker: &Arc<Broker>, request: SyncGroupRequest, version: i16) -> Reply {
    let req = SyncRequest {
        group_id: request.group_id.0.as_str().to_string(),
        generation_id: request.generation_id,
        member_id: request.member_id.as_str().to_string(),
        group_instance_id: request.group_instance_id.map(|i| i.as_str().to_string()),
        protocol_type: request.protocol_type.map(|p| p.as_str().to_string()),
        protocol_name: request.protocol_name.map(|p| p.as_str().to_string()),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.as_str().to_string(), a.assignment))
            .collect(),
    };
    let (tx, rx) = oneshot::channel();
    let now = now_ms();
    let group_id = request.group_id.0.as_str();
    if let Err(e) = broker
        .groups
        .run(group_id, now, |c| ((), c.sync(req, tx, now)))
    {
        return ready(ResponseKind::SyncGroup(
            SyncGroupResponse::default().with_error_code(e.code()),
        ));
    }
    Box::pin(async move {
        let answer = match rx.await {
            Ok(Answer::Sync(s)) => s,
            _ => {
                return Some(ResponseKind::SyncGroup(
                    SyncGroupResponse::default().with_error_code(E::UnknownServerError.code()),
                ))
            }
        };
        let mut r = SyncGroupResponse::default()
            .with_error_code(answer.error)
            .with_assignment(answer.assignment);
        if version >= PROTOCOL_SINCE {
            r = r
                .with_protocol_type(answer.protocol_type.map(str_bytes))
                .with_protocol_name(answer.protocol_name.map(str_bytes));
        }
        Some(ResponseKind::SyncGroup(r))
    })
}
