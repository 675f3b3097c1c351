//! InitProducerId for idempotent producers (KIP-98), including the epoch bump a producer asks
//! for after a delivery timeout (KIP-360). Transactional producers need the transaction
//! coordinator, which Caudal does not have yet.

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};

use crate::Broker;

pub async fn handle(broker: &Arc<Broker>, request: InitProducerIdRequest) -> ResponseKind {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if let Some(id) = request.transactional_id {
        tracing::warn!(transactional_id = %id.0.as_str(), "refused a transactional producer: transactions are not available yet");
        return ResponseKind::InitProducerId(
            response.with_error_code(E::TransactionalIdAuthorizationFailed.code()),
        );
    }
    let (id, epoch) = if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        (Ok(request.producer_id.0), request.producer_epoch + 1)
    } else {
        (broker.producer_ids.next_id().await, 0)
    };
    ResponseKind::InitProducerId(match id {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(e) => {
            tracing::warn!(error = %e, "no producer id to give");
            response.with_error_code(e.kafka_error().code())
        }
    })
}
