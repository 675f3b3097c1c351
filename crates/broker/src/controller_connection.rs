//! One connection from a broker to a voter's controller listener: requests written as they come,
//! answers matched to them in order (Kafka answers a connection's requests in the order sent).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use caudal_metadata::ControllerRequest;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connection::FrameReader;
use crate::controller_wire::{self, Answer, WireError};

/// The longest a connection attempt to a controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests queued on one connection, and sent without an answer yet, before callers wait.
const QUEUE: usize = 64;
/// The longest a request may take to write before the connection is taken for stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an answer may be missing before the connection is taken for stuck: longer
/// than any call through the channel waits (its callers' timeouts are at most 30 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(35);

/// Why a request over a connection got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot connect to the controller at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("the connection to the controller was lost")]
    Lost,
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Where an answer frame (or the connection's loss) goes.
type Answered = oneshot::Sender<Result<Bytes, ConnectionError>>;

struct Sent {
    frame: bytes::BytesMut,
    answer: Answered,
}

/// A connection to one controller listener. Cheap to clone; the connection closes when the last
/// clone is dropped or the peer closes it ([`is_closed`](Self::is_closed)).
#[derive(Clone)]
pub struct ControllerConnection {
    requests: mpsc::Sender<Sent>,
    client_id: String,
}

impl ControllerConnection {
    /// Connects to `address` (`host:port`).
    pub async fn connect(
        address: &str,
        client_id: String,
        max_frame: usize,
    ) -> Result<ControllerConnection, ConnectionError> {
        let connect_error = |reason: String| ConnectionError::Connect {
            address: address.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| connect_error(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (requests, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(stream, queue, max_frame));
        Ok(ControllerConnection {
            requests,
            client_id,
        })
    }

    /// Whether the connection has closed; a closed one is replaced.
    pub fn is_closed(&self) -> bool {
        self.requests.is_closed()
    }

    /// Sends `request` and waits for its answer.
    pub async fn call(
        &self,
        request: &ControllerRequest,
        correlation_id: i32,
    ) -> Result<Answer, ConnectionError> {
        let (shape, frame) =
            controller_wire::request_frame(request, correlation_id, &self.client_id)?;
        let frame = self.exchange(frame).await?;
        Ok(controller_wire::read_answer(frame, shape, correlation_id)?)
    }

    /// Sends a request the controller listener answers as itself, not through the controller
    /// (DescribeQuorum), and waits for its answer.
    pub async fn call_direct(
        &self,
        api: ApiKey,
        version: i16,
        body: &RequestKind,
        correlation_id: i32,
    ) -> Result<ResponseKind, ConnectionError> {
        let frame = controller_wire::direct_request_frame(
            api,
            version,
            body,
            correlation_id,
            &self.client_id,
        )?;
        let frame = self.exchange(frame).await?;
        Ok(controller_wire::read_direct_answer(
            frame,
            api,
            version,
            correlation_id,
        )?)
    }

    /// Writes `frame` and waits for the answer frame.
    async fn exchange(&self, frame: bytes::BytesMut) -> Result<Bytes, ConnectionError> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .send(Sent { frame, answer })
            .await
            .map_err(|_| ConnectionError::Lost)?;
        answered.await.map_err(|_| ConnectionError::Lost)?
    }
}

/// What the controller answered, as a caller of the channel sees it.
pub fn response(answer: Answer) -> Option<ResponseKind> {
    match answer {
        Answer::Response(response) => Some(response),
        Answer::NotController => None,
    }
}

/// Writes requests as they come and hands each answer frame to the oldest waiting request.
///
/// A controller that stops reading or answering but keeps the socket open must not wedge the
/// channel or make `waiting` grow for ever (callers give up at their timeout, but their
/// requests stay queued here): a write that does not finish within [`WRITE_TIMEOUT`], more than
/// [`QUEUE`] requests without an answer, or an answer missing for [`ANSWER_TIMEOUT`] closes the
/// connection, and the next call connects afresh.
async fn run(stream: TcpStream, mut queue: mpsc::Receiver<Sent>, max_frame: usize) {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FrameReader::new(rd, max_frame);
    let mut waiting: VecDeque<(Instant, Answered)> = VecDeque::new();
    loop {
        let oldest = waiting.front().map(|(sent, _)| *sent + ANSWER_TIMEOUT);
        tokio::select! {
            sent = queue.recv(), if waiting.len() < QUEUE => {
                let Some(Sent { frame, answer }) = sent else { break };
                let written = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&frame)).await;
                if !matches!(written, Ok(Ok(()))) {
                    let _ = answer.send(Err(ConnectionError::Lost));
                    break;
                }
                waiting.push_back((Instant::now(), answer));
            }
            frame = frames.next(), if !waiting.is_empty() => {
                let Ok(Some(frame)) = frame else { break };
                if let Some((_, answer)) = waiting.pop_front() {
                    let _ = answer.send(Ok(frame));
                }
            }
            _ = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now)), if oldest.is_some() => {
                tracing::debug!("the controller left a request unanswered; closing the connection");
                break;
            }
        }
    }
    // Closing the queue marks the connection closed for its owner; waiting callers learn it too.
    queue.close();
    for (_, answer) in waiting {
        let _ = answer.send(Err(ConnectionError::Lost));
    }
}

#[cfg(test)]
mod tests {
    use caudal_metadata::ControllerRequest;
    use kafka_protocol::messages::{BrokerHeartbeatRequest, BrokerId};
    use tokio::net::TcpListener;

    use super::*;

    fn heartbeat() -> ControllerRequest {
        ControllerRequest::Heartbeat(
            BrokerHeartbeatRequest::default()
                .with_broker_id(BrokerId(2))
                .with_broker_epoch(1),
            1,
        )
    }

    /// A controller that accepts and then never answers: the request fails once its answer is
    /// overdue, and the connection is closed so the next call makes a new one.
    #[tokio::test(start_paused = true)]
    async fn a_controller_that_never_answers_closes_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            // Kept open, never read from or answered.
            std::future::pending::<()>().await;
            drop(stream);
        });
        let connection = ControllerConnection::connect(&address, "t".into(), 1 << 20)
            .await
            .expect("connects");
        let started = Instant::now();
        let outcome = connection.call(&heartbeat(), 1).await;
        assert!(matches!(outcome, Err(ConnectionError::Lost)), "{outcome:?}");
        assert!(started.elapsed() >= ANSWER_TIMEOUT);
        assert!(connection.is_closed());
        held.abort();
    }
}
