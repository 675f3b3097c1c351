use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, ResponseKind,
};

use super::str_bytes;
use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeClusterRequest,
    listener: usize,
) -> ResponseKind {
    let node = broker.config.node_id;
    let (host, port) = &broker.config.advertise(listener);
    ResponseKind::DescribeCluster(
        DescribeClusterResponse::default()
            .with_endpoint_type(request.endpoint_type)
            .with_cluster_id(str_bytes(broker.topics.cluster_id()))
            .with_controller_id(BrokerId(node))
            .with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(node))
                .with_host(str_bytes(host.clone()))
                .with_port(i32::from(*port))])
            .with_cluster_authorized_operations(i32::MIN),
    )
}
