//! LeaveGroup: one member (v0-v2) or a batch of members by id or instance id (v3+, KIP-345).

use std::sync::Arc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse, ResponseKind};

use crate::{now_ms, Broker};

const BATCHED_SINCE: i16 = 3;

pub fn handle(broker: &Arc<Broker>, request: LeaveGroupRequest, version: i16) -> ResponseKind {
    let group_id = request.group_id.0.as_str().to_string();
    let leaving: Vec<(String, Option<String>)> = if version >= BATCHED_SINCE {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.as_str().to_string(),
                    m.group_instance_id.as_ref().map(|i| i.as_str().to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.as_str().to_string(), None)]
    };
    let now = now_ms();
    let errors = match broker
        .groups
        .run(&group_id, now, |c| c.leave(&group_id, &leaving, now))
    {
        Ok((errors, _)) => errors,
        // Kafka answers the whole request with the error, no member results.
        Err(e) => {
            return ResponseKind::LeaveGroup(
                LeaveGroupResponse::default().with_error_code(e.code()),
            )
        }
    };
    let response = if version >= BATCHED_SINCE {
        let members = request
            .members
            .into_iter()
            .zip(errors)
            .map(|(m, error)| {
                MemberResponse::default()
                    .with_member_id(m.member_id)
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(error)
            })
            .collect();
        LeaveGroupResponse::default().with_members(members)
    } else {
        LeaveGroupResponse::default().with_error_code(errors.first().copied().unwrap_or(0))
    };
    ResponseKind::LeaveGroup(response)
}
