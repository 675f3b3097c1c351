//! KIP-951: a client told NOT_LEADER_OR_FOLLOWER also learns where the leader is now, so it
//! can send there at once instead of refreshing its metadata first.

use std::collections::BTreeSet;
use std::sync::Arc;

use caudal_metadata::MetadataImage;
use uuid::Uuid;

use crate::Broker;

/// One leader hint: the partition's leader and its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leader {
    pub id: i32,
    pub epoch: i32,
}

/// A leader's address for the client's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeAddress {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// Collects the leaders named in one response, for its `node_endpoints`.
pub(crate) struct LeaderHints {
    image: Arc<MetadataImage>,
    listener_name: String,
    named: BTreeSet<i32>,
}

impl LeaderHints {
    pub(crate) fn new(broker: &Broker, listener: usize) -> LeaderHints {
        LeaderHints {
            image: broker.topics.image(),
            listener_name: super::listener_name(broker, listener).to_string(),
            named: BTreeSet::new(),
        }
    }

    /// The leader of `topic_id`'s partition `index` if it is another broker that a client of
    /// this listener can reach; it is then listed by [`endpoints`](Self::endpoints).
    pub(crate) fn leader(&mut self, topic_id: Uuid, index: i32) -> Option<Leader> {
        let reg = self.image.partition(topic_id, index)?;
        if reg.leader < 0 {
            return None;
        }
        self.image.endpoint(reg.leader, &self.listener_name)?;
        self.named.insert(reg.leader);
        Some(Leader {
            id: reg.leader,
            epoch: reg.leader_epoch,
        })
    }

    /// The addresses of every leader named so far.
    pub(crate) fn endpoints(&self) -> Vec<NodeAddress> {
        self.named
            .iter()
            .filter_map(|&id| {
                let endpoint = self.image.endpoint(id, &self.listener_name)?;
                Some(NodeAddress {
                    id,
                    host: endpoint.host.clone(),
                    port: endpoint.port,
                    rack: self.image.broker(id).and_then(|b| b.rack.clone()),
                })
            })
            .collect()
    }
}
