//! CreatePartitions: raise a topic's partition count.

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, ResponseKind};

use super::{str_bytes, topic_error_code};
use crate::Broker;

pub async fn handle(broker: &Arc<Broker>, request: CreatePartitionsRequest) -> ResponseKind {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let name = t.name.0.as_str().to_string();
        let result = CreatePartitionsTopicResult::default().with_name(t.name);
        results.push(
            match broker
                .topics
                .add_partitions(&name, t.count, request.validate_only)
                .await
            {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(topic_error_code(&e))
                    .with_error_message(Some(str_bytes(e.to_string()))),
            },
        );
    }
    ResponseKind::CreatePartitions(CreatePartitionsResponse::default().with_results(results))
}
