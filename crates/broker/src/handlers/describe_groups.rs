use std::sync::Arc;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, ResponseKind};

use super::str_bytes;
use crate::Broker;

/// v4 and later carry static members' instance ids.
const INSTANCE_ID_SINCE: i16 = 4;
/// v6 and later answer GROUP_ID_NOT_FOUND for an unknown group (KIP-1043); before, a Dead group.
const NOT_FOUND_SINCE: i16 = 6;

pub fn handle(broker: &Arc<Broker>, request: DescribeGroupsRequest, version: i16) -> ResponseKind {
    let groups = request
        .groups
        .into_iter()
        .map(|id| {
            // A consumer-protocol group is not a classic group (Kafka answers the same way);
            // ConsumerGroupDescribe describes it.
            let found = broker.groups.read(id.0.as_str(), |c| {
                (!c.is_consumer_group(id.0.as_str()))
                    .then(|| c.describe(id.0.as_str()))
                    .flatten()
            });
            let found = match found {
                Ok(found) => found,
                // Not the coordinator (or loading): this group alone answers the error.
                Err(e) => {
                    return DescribedGroup::default()
                        .with_group_id(id)
                        .with_error_code(e.code())
                        .with_authorized_operations(i32::MIN)
                }
            };
            let Some(g) = found else {
                let dead = DescribedGroup::default()
                    .with_group_id(id)
                    .with_group_state(str_bytes("Dead"))
                    .with_authorized_operations(i32::MIN);
                return if version >= NOT_FOUND_SINCE {
                    dead.with_error_code(E::GroupIdNotFound.code())
                        .with_error_message(Some(str_bytes("the group does not exist")))
                } else {
                    dead
                };
            };
            let members = g
                .members
                .into_iter()
                .map(|m| {
                    let d = DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment);
                    if version >= INSTANCE_ID_SINCE {
                        d.with_group_instance_id(m.group_instance_id.map(str_bytes))
                    } else {
                        d
                    }
                })
                .collect();
            DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(str_bytes(g.state.as_str()))
                .with_protocol_type(str_bytes(g.protocol_type))
                .with_protocol_data(str_bytes(g.protocol_name))
                .with_members(members)
                .with_authorized_operations(i32::MIN)
        })
        .collect();
    ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
}
