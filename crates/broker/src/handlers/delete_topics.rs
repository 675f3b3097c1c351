//! DeleteTopics, by name (v1-v5) or by name or id (v6+).

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind, TopicName,
};

use super::{str_bytes, topic_error_code};
use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    request: DeleteTopicsRequest,
    version: i16,
) -> ResponseKind {
    let targets: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let resolved = match &name {
            Some(n) => Ok(n.0.as_str().to_string()),
            None => broker
                .topics
                .get_by_id(id)
                .map(|t| t.name.clone())
                .ok_or(E::UnknownTopicId.code()),
        };
        let result = DeletableTopicResult::default()
            .with_name(name.clone())
            .with_topic_id(id);
        responses.push(match resolved {
            Ok(n) => match broker.topics.delete(&n).await {
                Ok(topic) => result
                    .with_name(Some(TopicName(str_bytes(n))))
                    .with_topic_id(topic.id),
                Err(e) => result
                    .with_error_code(topic_error_code(&e))
                    .with_error_message(Some(str_bytes(e.to_string()))),
            },
            Err(code) => result.with_error_code(code),
        });
    }
    ResponseKind::DeleteTopics(DeleteTopicsResponse::default().with_responses(responses))
}
