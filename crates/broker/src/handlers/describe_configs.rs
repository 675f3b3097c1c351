//! DescribeConfigs for topics and the broker: every value with its source (topic override,
//! broker setting, default), synonyms and documentation when asked.

use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse, ResponseKind};

use super::str_bytes;
use crate::config::SETTINGS;
use crate::Broker;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// ConfigSource codes.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

pub fn handle(broker: &Arc<Broker>, request: DescribeConfigsRequest, version: i16) -> ResponseKind {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.as_str();
            // No key list, or an empty one, asks for every config.
            let wanted = |key: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.is_empty() || keys.iter().any(|k| k.as_str() == key))
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                TOPIC => {
                    if broker.topics.get(name).is_none() {
                        return result
                            .with_error_code(E::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(format!(
                                "topic '{name}' does not exist"
                            ))));
                    }
                    let overrides = broker.topics.configs(name);
                    let configs = SETTINGS
                        .iter()
                        .filter_map(|s| s.topic_key.map(|k| (k, s)))
                        .filter(|(k, _)| wanted(k))
                        .filter_map(|(key, setting)| {
                            let (value, source) = broker.config.topic_value(&overrides, key)?;
                            let mut entry = entry(
                                key,
                                value,
                                source,
                                setting,
                                request.include_documentation && version >= 3,
                            );
                            if request.include_synonyms {
                                let mut synonyms = Vec::new();
                                if source == DYNAMIC_TOPIC_CONFIG {
                                    synonyms.push(synonym(key, value, DYNAMIC_TOPIC_CONFIG));
                                }
                                if let Some((v, explicit)) = broker.config.get(setting.key) {
                                    if explicit {
                                        synonyms.push(synonym(
                                            setting.key,
                                            v,
                                            STATIC_BROKER_CONFIG,
                                        ));
                                    }
                                }
                                synonyms.push(synonym(
                                    setting.key,
                                    setting.default,
                                    DEFAULT_CONFIG,
                                ));
                                entry = entry.with_synonyms(synonyms);
                            }
                            Some(entry)
                        })
                        .collect();
                    result.with_configs(configs)
                }
                BROKER => {
                    if !name.is_empty() && name != broker.config.node_id.to_string() {
                        return result
                            .with_error_code(E::InvalidRequest.code())
                            .with_error_message(Some(str_bytes(format!(
                                "this is broker {}, not {name}",
                                broker.config.node_id
                            ))));
                    }
                    let configs = SETTINGS
                        .iter()
                        .filter(|s| wanted(s.key))
                        .filter_map(|s| {
                            let (value, explicit) = broker.config.get(s.key)?;
                            let source = if explicit {
                                STATIC_BROKER_CONFIG
                            } else {
                                DEFAULT_CONFIG
                            };
                            let mut e = entry(
                                s.key,
                                value,
                                source,
                                s,
                                request.include_documentation && version >= 3,
                            )
                            .with_read_only(true);
                            if request.include_synonyms {
                                e = e.with_synonyms(vec![synonym(s.key, value, source)]);
                            }
                            Some(e)
                        })
                        .collect();
                    result.with_configs(configs)
                }
                other => result
                    .with_error_code(E::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(format!(
                        "resource type {other} has no configs here"
                    )))),
            }
        })
        .collect();
    ResponseKind::DescribeConfigs(DescribeConfigsResponse::default().with_results(results))
}

fn entry(
    key: &str,
    value: &str,
    source: i8,
    setting: &crate::config::Setting,
    documentation: bool,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(key))
        .with_value(Some(str_bytes(value)))
        .with_config_source(source)
        .with_config_type(setting.kind.describe_code())
        .with_documentation(documentation.then(|| str_bytes(setting.doc)))
}

fn synonym(key: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(str_bytes(key))
        .with_value(Some(str_bytes(value)))
        .with_source(source)
}
