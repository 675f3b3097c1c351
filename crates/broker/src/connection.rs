//! One client connection: frames in, responses out in request order.
//!
//! Requests are read and started in order (so appends from one connection keep their order);
//! what they then wait for (an fsync for acks=all, data for a long-polling fetch) runs
//! concurrently, and a writer sends the answers in the order the requests came.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use caudal_protocol::{decode_request, encode_response, RequestError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::handlers::{self, Reply};
use crate::Broker;

/// A request whose answer is on its way.
enum InFlight {
    Reply {
        api_key: kafka_protocol::messages::ApiKey,
        version: i16,
        correlation_id: i32,
        reply: Reply,
    },
    /// A response frame already encoded (the ApiVersions fallback).
    Encoded(Bytes),
}

pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let (tx, mut rx) = mpsc::channel::<InFlight>(broker.config.queued_max_requests());
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(64 * 1024);
        while let Some(flight) = rx.recv().await {
            out.clear();
            match flight {
                InFlight::Reply {
                    api_key,
                    version,
                    correlation_id,
                    reply,
                } => {
                    let Some(body) = reply.await else { continue };
                    if let Err(e) =
                        encode_response(&mut out, api_key, version, correlation_id, &body)
                    {
                        tracing::error!(%peer, error = %e, "closing connection: response could not be encoded");
                        return;
                    }
                }
                InFlight::Encoded(frame) => out.extend_from_slice(&frame),
            }
            if let Err(e) = wr.write_all(&out).await {
                tracing::debug!(%peer, error = %e, "client went away");
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let max = broker.config.socket_request_max_bytes();
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut rd, max) => frame,
            _ = stop.changed() => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::TooLarge(len)) => {
                tracing::warn!(%peer, len, max, "closing connection: request frame larger than socket.request.max.bytes");
                break;
            }
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "connection closed mid-request");
                break;
            }
        };
        let request = match decode_request(frame.clone()) {
            Ok(r) => r,
            Err(e) => {
                if let Some(answer) = e.answer() {
                    tracing::debug!(%peer, error = %e, "answering with the versions the broker serves");
                    if tx.send(InFlight::Encoded(answer.freeze())).await.is_err() {
                        break;
                    }
                    continue;
                }
                match &e {
                    RequestError::UnknownApi { .. } | RequestError::UnsupportedVersion { .. } => {
                        tracing::warn!(%peer, error = %e, "closing connection: request the broker does not serve")
                    }
                    _ => {
                        tracing::warn!(%peer, error = %e, frame_start = %hex_prefix(&frame), "closing connection: malformed request")
                    }
                }
                break;
            }
        };
        let api_key = request.api_key;
        let version = request.version();
        let correlation_id = request.header.correlation_id;
        let reply = handlers::handle(&broker, request, peer).await;
        if tx
            .send(InFlight::Reply {
                api_key,
                version,
                correlation_id,
                reply,
            })
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[derive(Debug)]
enum FrameError {
    TooLarge(i64),
    Io(std::io::Error),
}

/// Reads one length-prefixed frame. `Ok(None)` is a clean close between requests. The buffer
/// grows as bytes arrive, so a peer announcing a large frame and sending nothing costs nothing.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut len_buf = [0u8; 4];
    match rd.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = i32::from_be_bytes(len_buf);
    let len = match usize::try_from(len) {
        Ok(n) if n <= max => n,
        _ => return Err(FrameError::TooLarge(i64::from(len))),
    };
    let mut frame = Vec::with_capacity(len.min(64 * 1024));
    let read = rd
        .take(len as u64)
        .read_to_end(&mut frame)
        .await
        .map_err(FrameError::Io)?;
    if read < len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(Bytes::from(frame)))
}

/// The first bytes of a frame in hex, for the log line about a request that did not decode.
fn hex_prefix(frame: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 * 64 + 3);
    for b in frame.iter().take(64) {
        let _ = write!(out, "{b:02x}");
    }
    if frame.len() > 64 {
        out.push_str("...");
    }
    out
}
