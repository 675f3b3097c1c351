//! JoinGroup: waits until the group's join phase completes, then answers with the generation
//! (and, to the leader, every member's subscription).

use std::net::SocketAddr;
use std::sync::Arc;

use caudal_coordinator::{JoinRequest, JoinResponse};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse, ResponseKind};
use tokio::sync::oneshot;

use super::{ready, str_bytes, Reply};
use crate::coordinator_runtime::Answer;
use crate::{now_ms, Broker};

/// JoinGroup v4 and later hand a new member its id first (KIP-394).
const KNOWN_MEMBER_ID_SINCE: i16 = 4;
/// v5 and later carry static members' instance ids.
const INSTANCE_ID_SINCE: i16 = 5;
/// v7 and later name the protocol type in the answer.
const PROTOCOL_TYPE_SINCE: i16 = 7;

pub fn handle(
    broker: &Arc<Broker>,
    request: JoinGroupRequest,
    version: i16,
    peer: SocketAddr,
    client_id: String,
) -> Reply {
    let req = JoinRequest {
        group_id: request.group_id.0.as_str().to_string(),
        member_id: request.member_id.as_str().to_string(),
        group_instance_id: request.group_instance_id.map(|i| i.as_str().to_string()),
        client_id,
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.as_str().to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= KNOWN_MEMBER_ID_SINCE,
    };
    let (tx, rx) = oneshot::channel();
    let now = now_ms();
    let group_id = request.group_id.0.as_str();
    if let Err(e) = broker
        .groups
        .run(group_id, now, |c| ((), c.join(req, tx, now)))
    {
        // Kafka answers with the member id the request carried.
        let answer = JoinResponse {
            error: e.code(),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: request.member_id.as_str().to_string(),
            members: Vec::new(),
        };
        return ready(respond(answer, version));
    }
    Box::pin(async move {
        let answer = match rx.await {
            Ok(Answer::Join(j)) => j,
            _ => {
                return Some(ResponseKind::JoinGroup(
                    JoinGroupResponse::default()
                        .with_error_code(E::UnknownServerError.code())
                        .with_generation_id(-1),
                ))
            }
        };
        Some(respond(answer, version))
    })
}

fn respond(answer: JoinResponse, version: i16) -> ResponseKind {
    let members = answer
        .members
        .into_iter()
        .map(|m| {
            let r = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id))
                .with_metadata(m.metadata);
            if version >= INSTANCE_ID_SINCE {
                r.with_group_instance_id(m.group_instance_id.map(str_bytes))
            } else {
                r
            }
        })
        .collect();
    let mut r = JoinGroupResponse::default()
        .with_error_code(answer.error)
        .with_generation_id(answer.generation_id)
        .with_protocol_name(answer.protocol_name.map(str_bytes))
        .with_leader(str_bytes(answer.leader))
        .with_member_id(str_bytes(answer.member_id))
        .with_members(members);
    if version >= PROTOCOL_TYPE_SINCE {
        r = r.with_protocol_type(answer.protocol_type.map(str_bytes));
    } else if r.protocol_name.is_none() {
        // Before v7 the protocol name is not nullable.
        r = r.with_protocol_name(Some(str_bytes("")));
    }
    ResponseKind::JoinGroup(r)
}
