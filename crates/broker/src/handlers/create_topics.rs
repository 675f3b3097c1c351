//! CreateTopics, with validate-only, Kafka's name rules and topic config checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, ResponseKind};

use super::{str_bytes, topic_error_code};
use crate::config::check_topic_config;
use crate::Broker;

/// CreateTopics v5 and later echo the created topic's configs.
const CONFIGS_SINCE: i16 = 5;

pub async fn handle(
    broker: &Arc<Broker>,
    request: CreateTopicsRequest,
    version: i16,
) -> ResponseKind {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let fail = |code: i16, message: String| {
            result
                .clone()
                .with_error_code(code)
                .with_error_message(Some(str_bytes(message)))
        };
        let mut replication = if topic.replication_factor == -1 {
            broker.config.default_replication_factor()
        } else {
            topic.replication_factor
        };
        let mut partitions = if topic.num_partitions == -1 {
            broker.config.num_partitions()
        } else {
            topic.num_partitions
        };
        if !topic.assignments.is_empty() {
            if topic.num_partitions != -1 || topic.replication_factor != -1 {
                results.push(fail(
                    E::InvalidRequest.code(),
                    "give either partitions and replication factor, or a replica assignment".into(),
                ));
                continue;
            }
            // Which brokers exist is the controller's to check; the shape is ours.
            let factor = topic.assignments.first().map_or(0, |a| a.broker_ids.len());
            let valid =
                factor > 0
                    && topic.assignments.iter().enumerate().all(|(i, a)| {
                        a.partition_index == i as i32 && a.broker_ids.len() == factor
                    });
            if !valid {
                results.push(fail(
                    E::InvalidReplicaAssignment.code(),
                    "partitions must be numbered from 0 and each placed on the same number of \
                     brokers"
                        .into(),
                ));
                continue;
            }
            replication = i16::try_from(factor).unwrap_or(i16::MAX);
            partitions = topic.assignments.len() as i32;
        }
        let mut configs = BTreeMap::new();
        let mut config_error = None;
        for c in &topic.configs {
            let key = c.name.as_str();
            let Some(value) = c.value.as_ref() else {
                continue;
            };
            match check_topic_config(key, value.as_str()) {
                Ok(v) => {
                    configs.insert(key.to_string(), v);
                }
                Err(e) => {
                    config_error = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(message) = config_error {
            results.push(fail(E::InvalidConfig.code(), message));
            continue;
        }
        let created = broker
            .topics
            .create_placed(
                &name,
                partitions,
                if topic.assignments.is_empty() {
                    replication
                } else {
                    -1
                },
                topic.assignments.clone(),
                configs.clone(),
                request.validate_only,
            )
            .await;
        match created {
            Ok(topic) => {
                let mut ok = result
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication);
                if let Some(t) = &topic {
                    ok = ok.with_topic_id(t.id);
                }
                if version >= CONFIGS_SINCE {
                    ok = ok.with_configs(Some(effective_configs(broker, &configs)));
                }
                results.push(ok);
            }
            Err(e) => results.push(fail(topic_error_code(&e), e.to_string())),
        }
    }
    ResponseKind::CreateTopics(CreateTopicsResponse::default().with_topics(results))
}

fn effective_configs(
    broker: &Broker,
    overrides: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    crate::config::SETTINGS
        .iter()
        .filter_map(|s| s.topic_key)
        .filter_map(|key| {
            broker
                .config
                .topic_value(overrides, key)
                .map(|(value, source)| {
                    CreatableTopicConfigs::default()
                        .with_name(str_bytes(key))
                        .with_value(Some(str_bytes(value)))
                        .with_config_source(source)
                })
        })
        .collect()
}
