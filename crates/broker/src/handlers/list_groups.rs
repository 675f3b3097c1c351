use std::sync::Arc;

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse, ResponseKind};

use super::str_bytes;
use crate::Broker;

/// Groups of the JoinGroup/SyncGroup protocol.
const CLASSIC: &str = "classic";
/// Groups of the ConsumerGroupHeartbeat protocol (KIP-848).
const CONSUMER: &str = "consumer";

pub fn handle(broker: &Arc<Broker>, request: ListGroupsRequest) -> ResponseKind {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    let wanted = |state: &str, group_type: &str| {
        (states.is_empty() || states.contains(&state.to_ascii_lowercase()))
            && (types.is_empty() || types.iter().any(|t| t == group_type))
    };
    // This broker's shards only: admin clients ask every broker.
    let shards = broker.groups.read_all(|c| {
        let consumer = c.consumer_groups_list();
        // A consumer group's committed offsets sit in a classic entry: list the group once.
        let classic: Vec<_> = c
            .list()
            .into_iter()
            .filter(|g| !c.is_consumer_group(&g.group_id))
            .collect();
        (classic, consumer)
    });
    let shards = match shards {
        Ok(shards) => shards,
        // A shard still loading: Kafka answers the error and no groups.
        Err(e) => {
            return ResponseKind::ListGroups(
                ListGroupsResponse::default().with_error_code(e.code()),
            )
        }
    };
    let (classic, consumer): (Vec<_>, Vec<_>) = shards.into_iter().unzip();
    let classic = classic.into_iter().flatten();
    let consumer = consumer.into_iter().flatten();
    let mut groups: Vec<ListedGroup> = classic
        .filter(|g| wanted(g.state.as_str(), CLASSIC))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type))
                .with_group_state(str_bytes(g.state.as_str()))
                .with_group_type(str_bytes(CLASSIC))
        })
        .collect();
    groups.extend(
        consumer
            .filter(|g| wanted(g.state.as_str(), CONSUMER))
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(g.group_id)))
                    .with_protocol_type(str_bytes(CONSUMER))
                    .with_group_state(str_bytes(g.state.as_str()))
                    .with_group_type(str_bytes(CONSUMER))
            }),
    );
    ResponseKind::ListGroups(ListGroupsResponse::default().with_groups(groups))
}
