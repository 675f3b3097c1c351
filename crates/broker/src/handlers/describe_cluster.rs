use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, ResponseKind,
};

use super::{listener_name, reachable_brokers, str_bytes};
use crate::Broker;

/// The cluster id, the controller and every live broker a client of this listener can reach;
/// from v2, with `include_fenced_brokers`, the fenced ones too, each marked (KIP-1073), as
/// `kafka-cluster list-endpoints --include-fenced-brokers` and `caudal cluster status` show.
pub fn handle(
    broker: &Arc<Broker>,
    request: DescribeClusterRequest,
    version: i16,
    listener: usize,
) -> ResponseKind {
    let image = broker.topics.image();
    let name = listener_name(broker, listener);
    let entry = |b: &caudal_metadata::BrokerRegistration, endpoint: &caudal_metadata::Endpoint| {
        let entry = DescribeClusterBroker::default()
            .with_broker_id(BrokerId(b.id))
            .with_host(str_bytes(endpoint.host.clone()))
            .with_port(i32::from(endpoint.port))
            .with_rack(b.rack.clone().map(str_bytes));
        // `is_fenced` exists from v2 on; an older version cannot carry it.
        if version >= 2 {
            entry.with_is_fenced(b.fenced)
        } else {
            entry
        }
    };
    let brokers = if version >= 2 && request.include_fenced_brokers {
        image
            .brokers()
            .values()
            .filter_map(|b| Some(entry(b, image.endpoint(b.id, name)?)))
            .collect()
    } else {
        reachable_brokers(&image, name)
            .map(|(b, endpoint)| entry(b, endpoint))
            .collect()
    };
    ResponseKind::DescribeCluster(
        DescribeClusterResponse::default()
            .with_endpoint_type(request.endpoint_type)
            .with_cluster_id(str_bytes(broker.topics.cluster_id()))
            .with_controller_id(BrokerId(broker.topics.controller_id(&image)))
            .with_brokers(brokers)
            .with_cluster_authorized_operations(i32::MIN),
    )
}
