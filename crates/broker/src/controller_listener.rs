//! The controller listener (`controller.listener.names`): where the quorum's voters reach each
//! other and brokers reach the active controller.
//!
//! It serves from the moment the quorum starts, before the broker exists: voters must answer
//! each other's votes to elect the leader the broker then registers with. A frame with one of
//! the quorum's private API keys goes to the Raft RPC server; ApiVersions is answered with this
//! listener's APIs and DescribeQuorum from this node's quorum; registration, heartbeats,
//! unregistration, producer-id blocks and forwarded admin requests (in an Envelope) go to this
//! node's controller service, which answers NOT_CONTROLLER when this node does not lead. Anything else closes the connection with a log
//! line, as Kafka does for an API a listener does not serve.
//!
//! Requests of one connection are decided concurrently and answered in the order they came.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use caudal_metadata::controller::{ControllerCallError, ControllerHandle};
use caudal_protocol::{decode_request, encode_response};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::Decodable;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::connection::{FrameError, FrameReader};
use crate::controller_wire::{self, Refusal};
use crate::handlers::describe_quorum::QuorumDescriber;
use crate::routes::ListenerKind;

/// The Raft RPCs of the metadata quorum, as the controller listener hands them on.
pub(crate) trait RaftRpc: Send + Sync {
    /// Whether `api_key` is one of the quorum's private keys.
    fn is_raft_key(&self, api_key: i16) -> bool;
    /// Handles one RPC body; the answer is the response body (the caller adds the header).
    fn handle(
        &self,
        api_key: i16,
        version: i16,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + '_>>;
}

/// What the controller listener serves.
#[derive(Clone)]
pub(crate) struct ControllerEndpoint {
    /// The quorum's RPCs.
    pub raft: Arc<dyn RaftRpc>,
    /// This node's controller service, once it runs; until then requests get NOT_CONTROLLER.
    pub controller: watch::Receiver<Option<ControllerHandle>>,
    /// `socket.request.max.bytes`.
    pub max_frame: usize,
    /// Requests of one connection in flight at once (`queued.max.requests`).
    pub queued: usize,
    /// What DescribeQuorum is answered from.
    pub quorum: QuorumDescriber,
}

/// A frame's answer on its way: the bytes of a response frame, or nothing (close).
type Pending = oneshot::Receiver<Option<BytesMut>>;

/// Accepts on `listeners` until `stop` fires; each connection is served until it closes or
/// `stop` fires.
pub(crate) fn spawn(
    listeners: Vec<TcpListener>,
    endpoint: ControllerEndpoint,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut accepting = JoinSet::new();
        for listener in listeners {
            let endpoint = endpoint.clone();
            let mut stop = stop.clone();
            accepting.spawn(async move {
                let mut connections = JoinSet::new();
                loop {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        _ = stop.changed() => break,
                    };
                    match accepted {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            connections.spawn(serve(endpoint.clone(), stream, peer, stop.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "controller listener: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                    // Reap finished connections so a long-lived listener does not grow.
                    while connections.try_join_next().is_some() {}
                }
                connections.shutdown().await;
            });
        }
        while accepting.join_next().await.is_some() {}
    })
}

async fn serve(
    endpoint: ControllerEndpoint,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Pending>(endpoint.queued.max(1));
    let writer = tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            let Ok(Some(frame)) = pending.await else {
                break;
            };
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut frames = FrameReader::new(rd, endpoint.max_frame);
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            _ = stop.changed() => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::TooLarge(len)) => {
                tracing::warn!(%peer, len, "controller listener: closing a connection whose frame is larger than socket.request.max.bytes");
                break;
            }
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "controller listener: connection lost");
                break;
            }
        };
        let (answer, pending) = oneshot::channel();
        if tx.send(pending).await.is_err() {
            break;
        }
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _ = answer.send(answer_frame(&endpoint, frame, peer).await);
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// The response frame for one request frame, or `None` to close the connection.
async fn answer_frame(
    endpoint: &ControllerEndpoint,
    frame: Bytes,
    peer: SocketAddr,
) -> Option<BytesMut> {
    if frame.len() < 2 {
        tracing::warn!(%peer, "controller listener: closing a connection that sent a frame too short for a request");
        return None;
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    if endpoint.raft.is_raft_key(api_key) {
        return raft_frame(endpoint, frame, peer).await;
    }
    let request = match decode_request(frame) {
        Ok(request) => request,
        Err(e) => {
            if let Some(answer) =
                e.answer_listing(|| crate::routes::api_versions(ListenerKind::Controller))
            {
                return Some(answer);
            }
            tracing::warn!(%peer, error = %e, "controller listener: closing a connection whose request did not decode");
            return None;
        }
    };
    let (api, version, correlation_id) = (
        request.api_key,
        request.header.request_api_version,
        request.header.correlation_id,
    );
    let body = match request.body {
        RequestKind::ApiVersions(r) => {
            crate::handlers::api_versions::handle(r, version, ListenerKind::Controller)
        }
        RequestKind::DescribeQuorum(r) => {
            ResponseKind::DescribeQuorum(endpoint.quorum.answer(&r, version).await)
        }
        body => match controller_wire::served(api, body, version) {
            Ok(served) => match decide(endpoint, served).await {
                Some(body) => body,
                None => return None,
            },
            Err(Refusal::NotAControllerApi(api)) => {
                tracing::warn!(%peer, ?api, "controller listener: closing a connection that sent an API this listener does not serve");
                return None;
            }
            Err(refusal) => {
                tracing::warn!(%peer, error = %refusal, "controller listener: refusing a forwarded request");
                controller_wire::envelope_answer(Err(ResponseError::InvalidRequest.code())).ok()?
            }
        },
    };
    let mut out = BytesMut::with_capacity(256);
    match encode_response(&mut out, api, version, correlation_id, &body) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::error!(%peer, error = %e, "controller listener: an answer could not be encoded");
            None
        }
    }
}

/// Has the controller decide a request; `None` when this node is stopping.
async fn decide(
    endpoint: &ControllerEndpoint,
    served: controller_wire::Served,
) -> Option<ResponseKind> {
    let handle = endpoint.controller.borrow().clone();
    let decided = match handle {
        Some(handle) => handle.call(served.request.clone()).await,
        None => Err(ControllerCallError::NotController { leader: None }),
    };
    let (api, version) = controller_wire::response_api(&served.request);
    match (decided, served.enveloped) {
        (Ok(response), Some(correlation_id)) => {
            controller_wire::envelope_answer(Ok((api, version, correlation_id, &response))).ok()
        }
        (Ok(response), None) => Some(response),
        (Err(ControllerCallError::Stopped), _) => None,
        (Err(ControllerCallError::NotController { .. }), Some(_)) => {
            controller_wire::envelope_answer(Err(ResponseError::NotController.code())).ok()
        }
        (Err(ControllerCallError::NotController { .. }), None) => {
            controller_wire::not_controller(&served.request)
        }
    }
}

/// A quorum RPC: header v2, then the body the Raft RPC server reads; answered with header v0.
async fn raft_frame(
    endpoint: &ControllerEndpoint,
    mut frame: Bytes,
    peer: SocketAddr,
) -> Option<BytesMut> {
    let header = match RequestHeader::decode(&mut frame, 2) {
        Ok(header) => header,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "controller listener: closing a connection whose quorum request header did not decode");
            return None;
        }
    };
    match endpoint
        .raft
        .handle(header.request_api_key, header.request_api_version, frame)
        .await
    {
        Ok(body) => {
            let mut out = BytesMut::with_capacity(8 + body.len());
            let len = i32::try_from(4 + body.len()).ok()?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&header.correlation_id.to_be_bytes());
            out.extend_from_slice(&body);
            Some(out)
        }
        Err(e) => {
            tracing::warn!(%peer, api_key = header.request_api_key, error = %e, "controller listener: closing a connection whose quorum request was refused");
            None
        }
    }
}
