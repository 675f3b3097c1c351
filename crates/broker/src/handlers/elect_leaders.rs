//! ElectLeaders (API 43): preferred or unclean leader elections, decided by the active
//! controller (`caudal_metadata::controller::elect_leaders`); this broker forwards the request
//! and returns the answer.

use std::sync::Arc;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, ResponseKind};

use super::str_bytes;
use crate::Broker;

/// ElectLeaders v1 and later carry a top-level error code.
const TOP_LEVEL_ERROR_SINCE: i16 = 1;

pub async fn handle(
    broker: &Arc<Broker>,
    request: ElectLeadersRequest,
    version: i16,
) -> ResponseKind {
    let asked = request.topic_partitions.clone();
    let response = match broker.topics.elect_leaders(request, version).await {
        Ok(response) => response,
        Err(e) => {
            // Every partition asked about gets the error (v0 has nowhere else to put it).
            let code = e.code();
            let message = Some(str_bytes(e.to_string()));
            let results = asked
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    ReplicaElectionResult::default()
                        .with_partition_result(
                            t.partitions
                                .iter()
                                .map(|&p| {
                                    PartitionResult::default()
                                        .with_partition_id(p)
                                        .with_error_code(code)
                                        .with_error_message(message.clone())
                                })
                                .collect(),
                        )
                        .with_topic(t.topic)
                })
                .collect();
            let response = ElectLeadersResponse::default().with_replica_election_results(results);
            if version >= TOP_LEVEL_ERROR_SINCE {
                response.with_error_code(code)
            } else {
                response
            }
        }
    };
    ResponseKind::ElectLeaders(response)
}
