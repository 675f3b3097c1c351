use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, ResponseKind,
};

use super::{listener_name, reachable_brokers, str_bytes};
use crate::Broker;

/// The cluster id, the controller and every live broker a client of this listener can reach.
pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeClusterRequest,
    listener: usize,
) -> ResponseKind {
    let image = broker.topics.image();
    let brokers = reachable_brokers(&image, listener_name(broker, listener))
        .map(|(b, endpoint)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str_bytes(endpoint.host.clone()))
                .with_port(i32::from(endpoint.port))
                .with_rack(b.rack.clone().map(str_bytes))
        })
        .collect();
    ResponseKind::DescribeCluster(
        DescribeClusterResponse::default()
            .with_endpoint_type(request.endpoint_type)
            .with_cluster_id(str_bytes(broker.topics.cluster_id()))
            .with_controller_id(BrokerId(broker.topics.controller_id(&image)))
            .with_brokers(brokers)
            .with_cluster_authorized_operations(i32::MIN),
    )
}
