//! One client connection: frames in, responses out in request order.
//!
//! Requests are read and started in order (so appends from one connection keep their order);
//! what they then wait for (an fsync for acks=all, data for a long-polling fetch) runs
//! concurrently, and a writer sends the answers in the order the requests came.
//!
//! Memory: a connection allocates its read and write buffers only when it has bytes to read or
//! a response to write, grows them to the largest request (bounded by socket.request.max.bytes)
//! or response it meets, keeps them while it is busy (up to [`KEPT_BUFFER_BYTES`] each; a larger
//! one goes back once its frame is done), and gives them back after [`IDLE_RELEASE`] without
//! traffic. An idle connection holds its two tasks and its response queue, no buffer (see the
//! README).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use bytes::{Bytes, BytesMut};
use caudal_protocol::{decode_request, encode_response, RequestError};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::connection_warnings::{ConnectionWarnings, Reason};
use crate::handlers::{Connection, Reply};
use crate::routes::{self, ListenerKind};
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

/// How long a connection may go without traffic before it gives its buffers back. Busy
/// connections (a request or response at least this often) keep theirs and allocate nothing
/// per request.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// The largest buffer a busy connection keeps between requests. Without a cap, one large request
/// or response would pin its buffer (up to socket.request.max.bytes) for as long as the
/// connection stays busy; the allocator keeps freed blocks warm, so a rare large frame costs
/// little to allocate again.
const KEPT_BUFFER_BYTES: usize = 16 << 20;

/// The first read of a request: enough for the header and a small request whole, or several
/// small pipelined ones. Larger frames grow the buffer once their length is known.
const FIRST_READ_BYTES: usize = 4 * 1024;

/// Most bytes reserved ahead of what a peer has actually sent: a peer announcing a huge frame
/// and sending nothing makes the buffer grow no further than this.
const READ_AHEAD_BYTES: usize = 1 << 20;

pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    warnings: Arc<ConnectionWarnings>,
    mut stop: watch::Receiver<bool>,
) {
    // What this listener serves, looked up once per connection.
    let (listener_name, kind) = broker
        .config
        .listeners
        .get(listener)
        .map_or(("?", ListenerKind::Client), |l| (l.name.as_str(), l.kind));
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<InFlight>(broker.config.queued_max_requests());
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::new();
        loop {
            let flight = if out.capacity() == 0 {
                rx.recv().await
            } else {
                match tokio::time::timeout(IDLE_RELEASE, rx.recv()).await {
                    Ok(flight) => flight,
                    Err(_) => {
                        // Nothing to send for a while: give the buffer back.
                        out = BytesMut::new();
                        continue;
                    }
                }
            };
            let Some(flight) = flight else { break };
            let written = match flight {
                InFlight::Reply {
                    api_key,
                    version,
                    correlation_id,
                    reply,
                } => {
                    let Some(body) = reply.await else { continue };
                    out.clear();
                    if let Err(e) =
                        encode_response(&mut out, api_key, version, correlation_id, &body)
                    {
                        tracing::error!(%peer, error = %e, "closing connection: response could not be encoded");
                        return;
                    }
                    wr.write_all(&out).await
                }
                InFlight::Encoded(frame) => wr.write_all(&frame).await,
            };
            if out.capacity() > KEPT_BUFFER_BYTES {
                out = BytesMut::new();
            }
            if let Err(e) = written {
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
                if let Some(answer) = e.answer_listing(|| routes::api_versions(kind)) {
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
        // Boxed: the handler's future is large, and held inline it would make every
        // connection, idle ones included, that much larger for its whole life.
        let reply = match Box::pin(routes::dispatch(
            &broker,
            request,
            Connection {
                peer,
                listener,
                kind,
            },
        ))
        .await
        {
            Ok(reply) => reply,
            Err(refused) => {
                // As Kafka does with an API its listener does not serve: close, no answer.
                if warnings.admit(Reason::UnsupportedRequest) {
                    tracing::warn!(%peer, listener = listener_name, version, error = %refused, "closing connection: request the listener does not serve");
                }
                break;
            }
        };
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
pub(crate) enum FrameError {
    TooLarge(i64),
    Io(std::io::Error),
}

/// Splits length-prefixed frames off one reusable buffer. A frame is a view into the buffer;
/// once the request is handled and the frame dropped, the buffer reuses that space, so a busy
/// connection settles on one allocation instead of one per request. One read can bring in
/// several pipelined requests. Between frames the reader waits for the socket to be readable
/// before it takes a buffer, and an idle connection gives its buffer back.
pub(crate) struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    max: usize,
    /// Largest capacity the buffer had since it was taken; 0 when none is held. (After a frame
    /// is split off, `buf.capacity()` only shows what is left past it.)
    held_bytes: usize,
}

impl FrameReader {
    pub(crate) fn new(rd: OwnedReadHalf, max: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::new(),
            max,
            held_bytes: 0,
        }
    }

    /// The next frame, without its length prefix. `Ok(None)` is a clean close between requests.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            let want = if self.buf.len() >= 4 {
                let raw = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                let len = match usize::try_from(raw) {
                    Ok(n) if n <= self.max => n,
                    _ => return Err(FrameError::TooLarge(i64::from(raw))),
                };
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                (4 + len - self.buf.len()).min(READ_AHEAD_BYTES)
            } else {
                FIRST_READ_BYTES
            };
            if self.buf.is_empty() {
                self.wait_between_frames().await?;
            } else {
                self.rd.readable().await.map_err(FrameError::Io)?;
            }
            self.buf.reserve(want);
            // What the allocator gave, not what was asked: growth may round up (or double), and
            // one read may then fill more than `want`.
            self.held_bytes = self.held_bytes.max(self.buf.capacity());
            match self.rd.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                    };
                }
                Ok(_) => {}
                // Readiness can be spurious: wait again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }

    /// Waits for the next frame's first bytes. The buffer is kept while requests come often
    /// (reused, not reallocated: a producer's large batches would otherwise allocate and fault
    /// in megabytes per request) and given back when the connection goes idle, or at once if it
    /// grew past [`KEPT_BUFFER_BYTES`].
    async fn wait_between_frames(&mut self) -> Result<(), FrameError> {
        if self.held_bytes > KEPT_BUFFER_BYTES {
            self.release();
        }
        if self.held_bytes > 0 {
            match tokio::time::timeout(IDLE_RELEASE, self.rd.readable()).await {
                Ok(ready) => return ready.map_err(FrameError::Io),
                Err(_) => self.release(),
            }
        }
        self.rd.readable().await.map_err(FrameError::Io)
    }

    /// Drops the buffer (its memory goes once the last frame cut from it is dropped too).
    fn release(&mut self) {
        self.buf = BytesMut::new();
        self.held_bytes = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A reader over the server half of a loopback connection, and the client half.
    async fn pair(max: usize) -> (FrameReader, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (rd, _wr) = server.into_split();
        (FrameReader::new(rd, max), client)
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn frames_split_across_writes_and_pipelined_frames_come_out_whole() {
        let (mut frames, mut client) = pair(1 << 20).await;
        assert_eq!(frames.held_bytes, 0, "no buffer before the first byte");
        let big = vec![7u8; 100_000];
        let mut bytes = framed(b"first");
        bytes.extend(framed(&big));
        bytes.extend(framed(b"third"));
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(3_001) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        assert_eq!(frames.next().await.unwrap().unwrap(), &b"first"[..]);
        assert_eq!(frames.next().await.unwrap().unwrap(), &big[..]);
        assert_eq!(frames.next().await.unwrap().unwrap(), &b"third"[..]);
        drop(writer.await.unwrap());
        assert!(matches!(frames.next().await, Ok(None)), "clean close");
    }

    /// Counts allocations of at least 64 KiB made on the current thread (a `current_thread`
    /// test runtime runs the reader and the client there), to see buffers being taken.
    mod large_allocations {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        const LARGE: usize = 64 * 1024;

        thread_local! {
            static COUNT: Cell<usize> = const { Cell::new(0) };
        }

        pub fn count() -> usize {
            COUNT.with(Cell::get)
        }

        fn note(size: usize) {
            if size >= LARGE {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            }
        }

        struct Counting;

        // SAFETY: forwards to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                System.alloc(layout)
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                System.dealloc(ptr, layout)
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size);
                System.realloc(ptr, layout, new_size)
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;
    }

    #[tokio::test]
    async fn a_busy_connection_reuses_its_buffer() {
        let (mut frames, mut client) = pair(1 << 20).await;
        let body = vec![1u8; 200_000];
        let request = framed(&body);
        client.write_all(&request).await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap().len(), body.len());
        // Each request is handled and dropped before the next arrives, as on a busy
        // connection: the next ones land in the same buffer.
        let before = large_allocations::count();
        for _ in 0..5 {
            client.write_all(&request).await.unwrap();
            assert_eq!(frames.next().await.unwrap().unwrap().len(), body.len());
        }
        assert_eq!(
            large_allocations::count() - before,
            0,
            "a busy connection allocated a buffer per request"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_gives_its_buffer_back() {
        let (mut frames, mut client) = pair(1 << 20).await;
        client.write_all(&framed(&[2u8; 50_000])).await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap().len(), 50_000);
        assert!(frames.held_bytes >= 50_000);
        // Time is paused: it jumps past IDLE_RELEASE while the reader waits.
        let next = tokio::time::timeout(IDLE_RELEASE * 3, frames.next()).await;
        assert!(next.is_err(), "no frame was sent");
        assert_eq!(frames.held_bytes, 0, "the idle reader kept its buffer");
        assert_eq!(frames.buf.capacity(), 0);
        // It reads again as before.
        client.write_all(&framed(b"again")).await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), &b"again"[..]);
    }

    #[tokio::test]
    async fn a_busy_connection_does_not_keep_a_buffer_past_the_cap() {
        let (mut frames, mut client) = pair(64 << 20).await;
        let big = framed(&vec![3u8; KEPT_BUFFER_BYTES + 1]);
        let writer = tokio::spawn(async move {
            client.write_all(&big).await.unwrap();
            client
        });
        assert_eq!(
            frames.next().await.unwrap().unwrap().len(),
            KEPT_BUFFER_BYTES + 1
        );
        let mut client = writer.await.unwrap();
        assert!(frames.held_bytes > KEPT_BUFFER_BYTES);
        // The next request comes at once (a busy connection): the big buffer goes anyway.
        client.write_all(&framed(b"small")).await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), &b"small"[..]);
        assert!(
            frames.held_bytes <= FIRST_READ_BYTES,
            "kept {} bytes after a large frame",
            frames.held_bytes
        );
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_its_bytes_arrive() {
        let (mut frames, mut client) = pair(1000).await;
        client.write_all(&5000i32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            frames.next().await,
            Err(FrameError::TooLarge(5000))
        ));
        assert!(frames.held_bytes <= FIRST_READ_BYTES);
        let (mut frames, mut client) = pair(1000).await;
        client.write_all(&(-1i32).to_be_bytes()).await.unwrap();
        assert!(matches!(frames.next().await, Err(FrameError::TooLarge(-1))));
    }
}
