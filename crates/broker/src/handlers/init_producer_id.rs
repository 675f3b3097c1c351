//! InitProducerId for idempotent producers (KIP-98), including the epoch bump a producer asks
//! for after a delivery timeout (KIP-360), and for transactional producers, whose id and epoch
//! their transaction coordinator gives (fencing older producers of the same transactional id).

use std::sync::Arc;

use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};

use crate::Broker;

/// KIP-588: clients before v4 know PRODUCER_FENCED as INVALID_PRODUCER_EPOCH.
const FENCED_SINCE: i16 = 4;

pub async fn handle(
    broker: &Arc<Broker>,
    request: InitProducerIdRequest,
    version: i16,
) -> ResponseKind {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if let Some(id) = request.transactional_id {
        // KIP-360: a producer recovering from an error names the id and epoch it has.
        let expected = (request.producer_id.0 >= 0 || request.producer_epoch >= 0)
            .then_some((request.producer_id.0, request.producer_epoch));
        let given = broker
            .txns
            .init_producer_id(
                id.0.as_str(),
                request.transaction_timeout_ms,
                expected,
                super::transactions::fresh_id(broker),
            )
            .await;
        return ResponseKind::InitProducerId(match given {
            Ok((id, epoch)) => response
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch),
            Err(code) => response.with_error_code(super::transactions::for_version(
                code,
                version,
                FENCED_SINCE,
            )),
        });
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
