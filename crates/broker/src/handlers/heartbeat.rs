use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse, ResponseKind};

use crate::{now_ms, Broker};

pub fn handle(broker: &Arc<Broker>, request: HeartbeatRequest) -> ResponseKind {
    let now = now_ms();
    let instance = request.group_instance_id.as_ref().map(|i| i.as_str());
    let (error, _) = broker.groups.run(now, |c| {
        (
            c.heartbeat(
                request.group_id.0.as_str(),
                request.generation_id,
                request.member_id.as_str(),
                instance,
                now,
            ),
            Vec::new(),
        )
    });
    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(error))
}
