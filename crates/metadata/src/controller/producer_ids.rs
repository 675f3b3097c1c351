//! AllocateProducerIds: blocks of producer ids for brokers, from the cluster-wide counter in the
//! image. Blocks never overlap because each decision sees the previous one applied, and the
//! counter only moves forward (replay refuses a step back).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    AllocateProducerIdsRequest, AllocateProducerIdsResponse, ProducerId, ResponseKind,
};

use super::Decision;
use crate::image::MetadataImage;
use crate::records::{MetadataRecord, RECORD_VERSION};

/// Producer ids handed out per request, as Kafka's controller does.
pub const PRODUCER_ID_BLOCK_SIZE: i32 = 1000;

pub(super) fn allocate(image: &MetadataImage, request: AllocateProducerIdsRequest) -> Decision {
    let broker_id = request.broker_id.0;
    let refused = |error: E| {
        Decision::now(
            Vec::new(),
            ResponseKind::AllocateProducerIds(
                AllocateProducerIdsResponse::default()
                    .with_error_code(error.code())
                    .with_producer_id_start(ProducerId(-1)),
            ),
        )
    };
    let Some(registration) = image.broker(broker_id) else {
        return refused(E::BrokerIdNotRegistered);
    };
    if registration.epoch != request.broker_epoch {
        return refused(E::StaleBrokerEpoch);
    }
    let start = image.next_producer_id().max(0);
    let Some(next) = start.checked_add(i64::from(PRODUCER_ID_BLOCK_SIZE)) else {
        tracing::error!(start, "producer ids are exhausted");
        return refused(E::UnknownServerError);
    };
    Decision::now(
        vec![MetadataRecord::ProducerIds {
            v: RECORD_VERSION,
            broker_id,
            broker_epoch: registration.epoch,
            next_producer_id: next,
        }],
        ResponseKind::AllocateProducerIds(
            AllocateProducerIdsResponse::default()
                .with_producer_id_start(ProducerId(start))
                .with_producer_id_len(PRODUCER_ID_BLOCK_SIZE),
        ),
    )
}
