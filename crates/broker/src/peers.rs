//! Connections from this broker to the other brokers' inter-broker listeners for one purpose
//! (transaction markers, transaction verification): one per address, made on first use and
//! replaced once closed. Purposes keep their own connections, so a slow request of one (markers
//! wait for replication) does not hold up another's behind it.

use std::collections::HashMap;
use std::sync::Mutex;

use caudal_metadata::MetadataImage;

use crate::controller_connection::ControllerConnection;

const MAX_FRAME: usize = 1 << 20;

pub struct Peers {
    /// Names the connections to their peers: `caudal-{purpose}-{node id}`.
    purpose: &'static str,
    connections: Mutex<HashMap<String, ControllerConnection>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

impl Peers {
    pub fn new(purpose: &'static str) -> Peers {
        Peers {
            purpose,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// The open connection to `address`, or a new one.
    pub async fn connection(
        &self,
        address: &str,
        node_id: i32,
    ) -> Result<ControllerConnection, String> {
        let known = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
            .filter(|c| !c.is_closed())
            .cloned();
        if let Some(c) = known {
            return Ok(c);
        }
        let c = ControllerConnection::connect(
            address,
            format!("caudal-{}-{node_id}", self.purpose),
            MAX_FRAME,
        )
        .await
        .map_err(|e| e.to_string())?;
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// Drops the connection to `address` after a failed call: the next call makes a new one.
    pub fn forget(&self, address: &str) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
    }
}

/// Where broker `id` listens on `listener`, as `host:port`.
pub fn address(image: &MetadataImage, id: i32, listener: &str) -> Option<String> {
    image
        .broker(id)
        .and_then(|b| b.endpoints.iter().find(|e| e.name == listener))
        .map(|e| format!("{}:{}", e.host, e.port))
}
