//! One connection from a broker to a voter's controller listener: requests written as they come,
//! answers matched to them in order (Kafka answers a connection's requests in the order sent).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use caudal_metadata::ControllerRequest;
use kafka_protocol::messages::ResponseKind;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::connection::FrameReader;
use crate::controller_wire::{self, Answer, WireError};

/// The longest a connection attempt to a controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests queued on one connection before callers wait.
const QUEUE: usize = 64;

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

struct Sent {
    frame: bytes::BytesMut,
    answer: oneshot::Sender<Result<Bytes, ConnectionError>>,
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
        let (answer, answered) = oneshot::channel();
        self.requests
            .send(Sent { frame, answer })
            .await
            .map_err(|_| ConnectionError::Lost)?;
        let frame = answered.await.map_err(|_| ConnectionError::Lost)??;
        Ok(controller_wire::read_answer(frame, shape, correlation_id)?)
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
async fn run(stream: TcpStream, mut queue: mpsc::Receiver<Sent>, max_frame: usize) {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FrameReader::new(rd, max_frame);
    let mut waiting: VecDeque<oneshot::Sender<Result<Bytes, ConnectionError>>> = VecDeque::new();
    loop {
        tokio::select! {
            sent = queue.recv() => {
                let Some(Sent { frame, answer }) = sent else { break };
                if wr.write_all(&frame).await.is_err() {
                    let _ = answer.send(Err(ConnectionError::Lost));
                    break;
                }
                waiting.push_back(answer);
            }
            frame = frames.next(), if !waiting.is_empty() => {
                let Ok(Some(frame)) = frame else { break };
                if let Some(answer) = waiting.pop_front() {
                    let _ = answer.send(Ok(frame));
                }
            }
        }
    }
    // Closing the queue marks the connection closed for its owner; waiting callers learn it too.
    queue.close();
    for answer in waiting {
        let _ = answer.send(Err(ConnectionError::Lost));
    }
}
