//! One client connection: frames in, responses out in request order.
//!
//! Requests are read and started in order (so appends from one connection keep their order);
//! what they then wait for (an fsync for acks=all, data for a long-polling fetch) runs
//! concurrently, and a writer sends the answers in the order the requests came.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Buf;
use bytes::{Bytes, BytesMut};
use caudal_protocol::{decode_request, encode_response, RequestError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::connection_warnings::{ConnectionWarnings, Reason};
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
    listener: usize,
    warnings: Arc<ConnectionWarnings>,
    mut stop: watch::Receiver<bool>,
) {
    let (rd, mut wr) = stream.into_split();
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
    let mut frames = FrameReader::new(rd, broker.config.socket_request_max_bytes());
    let mut client_gone = false;
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            _ = stop.changed() => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                client_gone = true;
                break;
            }
            Err(FrameError::TooLarge(len)) => {
                if warnings.admit(Reason::FrameTooLarge) {
                    tracing::warn!(%peer, len, max = frames.max, "closing connection: request frame larger than socket.request.max.bytes");
                }
                break;
            }
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "connection closed mid-request");
                client_gone = true;
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
                        if warnings.admit(Reason::UnsupportedRequest) {
                            tracing::warn!(%peer, error = %e, "closing connection: request the broker does not serve");
                        }
                    }
                    _ => {
                        if warnings.admit(Reason::MalformedRequest) {
                            tracing::warn!(%peer, error = %e, frame_start = %hex_prefix(&frame), "closing connection: malformed request");
                        }
                    }
                }
                break;
            }
        };
        let api_key = request.api_key;
        let version = request.version();
        let correlation_id = request.header.correlation_id;
        let reply =
            handlers::handle(&broker, request, handlers::Connection { peer, listener }).await;
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
    if client_gone {
        // Nobody is left to read the answers still pending (a long-polling fetch, say): stop
        // waiting for them. Work already done (appends) stands.
        writer.abort();
    }
    let _ = writer.await;
}

#[derive(Debug)]
enum FrameError {
    TooLarge(i64),
    Io(std::io::Error),
}

/// Most bytes reserved ahead of what a peer has actually sent: a peer announcing a huge frame
/// and sending nothing makes the buffer grow no further than this.
const READ_AHEAD_BYTES: usize = 1 << 20;
/// An idle connection keeps at most this much buffer.
const IDLE_BUFFER_BYTES: usize = 4 << 20;

/// Splits length-prefixed frames off one reusable buffer. A frame is a view into the buffer;
/// once the request is handled and the frame dropped, the buffer reuses that space, so a busy
/// connection settles on one allocation instead of one per request. One read can bring in
/// several pipelined requests.
struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    max: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    fn new(rd: R, max: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
            max,
        }
    }

    /// The next frame, without its length prefix. `Ok(None)` is a clean close between requests.
    async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let raw = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                let len = match usize::try_from(raw) {
                    Ok(n) if n <= self.max => n,
                    _ => return Err(FrameError::TooLarge(i64::from(raw))),
                };
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                let missing = 4 + len - self.buf.len();
                self.buf.reserve(missing.min(READ_AHEAD_BYTES));
            } else {
                if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER_BYTES {
                    self.buf = BytesMut::with_capacity(64 * 1024);
                }
                self.buf.reserve(64 * 1024);
            }
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(FrameError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
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
