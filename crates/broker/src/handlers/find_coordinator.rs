//! FindCoordinator: this broker coordinates every group (one node). Transactions have no
//! coordinator yet.

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, ResponseKind,
};

use super::str_bytes;
use crate::Broker;

const GROUP: i8 = 0;
/// v4 and later look up a batch of keys.
const BATCHED_SINCE: i16 = 4;

pub fn handle(
    broker: &Arc<Broker>,
    request: FindCoordinatorRequest,
    version: i16,
    listener: usize,
) -> ResponseKind {
    let node = broker.config.node_id;
    let (host, port) = &broker.config.advertise(listener);
    let answer = |key: &str| -> (i16, Option<String>) {
        if request.key_type != GROUP {
            (
                E::CoordinatorNotAvailable.code(),
                Some("transactions are not available on this broker yet".to_string()),
            )
        } else if key.is_empty() {
            (
                E::InvalidRequest.code(),
                Some("the group id is empty".to_string()),
            )
        } else {
            (0, None)
        }
    };
    let response = if version >= BATCHED_SINCE {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (error, message) = answer(key.as_str());
                let c = Coordinator::default()
                    .with_key(key.clone())
                    .with_error_code(error)
                    .with_error_message(message.map(str_bytes));
                if error == 0 {
                    c.with_node_id(BrokerId(node))
                        .with_host(str_bytes(host.clone()))
                        .with_port(i32::from(*port))
                } else {
                    c.with_node_id(BrokerId(-1)).with_port(-1)
                }
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let (error, message) = answer(request.key.as_str());
        let r = FindCoordinatorResponse::default().with_error_code(error);
        let r = if version >= 1 {
            r.with_error_message(message.map(str_bytes))
        } else {
            r
        };
        if error == 0 {
            r.with_node_id(BrokerId(node))
                .with_host(str_bytes(host.clone()))
                .with_port(i32::from(*port))
        } else {
            r.with_node_id(BrokerId(-1)).with_port(-1)
        }
    };
    ResponseKind::FindCoordinator(response)
}
