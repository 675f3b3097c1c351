use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse, ResponseKind};

use crate::{now_ms, Broker};

pub fn handle(broker: &Arc<Broker>, request: HeartbeatRequest) -> ResponseKind {
    let now = now_ms();
    let instance = request.group_instance_id.as_ref().map(|i| i.as_str());
    let group_id = request.group_id.0.as_str();
    let error = broker
        .groups
        .run(group_id, now, |c| {
            (
                c.heartbeat(
                    group_id,
                    request.generation_id,
                    request.member_id.as_str(),
                    instance,
                    now,
                ),
                Vec::new(),
            )
        })
        .map_or_else(|e| e.code(), |(error, _)| error);
    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(error))
}
