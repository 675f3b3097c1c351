//! The quorum's RPCs on the wire: Kafka frames with four Caudal-private API keys, and JSON
//! bodies of Caudal's own mirrors of openraft's messages (`docs/design/cluster.md`, section 6).
//!
//! A request is a 4-byte size, request header v2 (api key, api version, correlation id, client
//! id, no tagged fields) and the JSON body; a response is a 4-byte size, response header v0
//! (correlation id) and the JSON body. Log ids, votes and memberships have the shapes the log
//! and `quorum-state` store, and an entry carries the kind and JSON value its stored record
//! carries, so an openraft upgrade changes neither the files nor the wire.

use openraft::error::{InstallSnapshotError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Entry, SnapshotMeta, SnapshotSegmentId, StoredMembership};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::entry::{decode_payload, encode_payload, StoredLogId, StoredVote};
use super::{QuorumMembership, QuorumNode, QuorumStoreError, QuorumTypes};

/// A vote request (openraft's `RaftNetwork::vote`).
pub const RAFT_VOTE: i16 = 32000;
/// Log entries or a heartbeat from the leader.
pub const RAFT_APPEND_ENTRIES: i16 = 32001;
/// One chunk of a checkpoint from the leader.
pub const RAFT_INSTALL_SNAPSHOT: i16 = 32002;

/// A broker-only node asking the leader to replicate the log to it as a learner (KRaft's
/// observer), at the address where it answers the other keys.
pub const RAFT_ADD_LEARNER: i16 = 32003;

/// The only version of each private API so far.
pub const RAFT_RPC_VERSION: i16 = 0;

/// Kafka's `socket.request.max.bytes` default: the largest frame either side reads.
/// The largest checkpoint a node takes from its leader. A checkpoint of 10,000 partitions is
/// about 1.5 MB; this leaves room for a hundred times that and more.
pub(crate) const MAX_CHECKPOINT_BYTES: u64 = 256 << 20;

pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// Why a frame or a body could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("an entry: {0}")]
    Entry(#[from] QuorumStoreError),
}

impl WireError {
    fn malformed(what: &'static str, reason: impl Into<String>) -> WireError {
        WireError::Malformed {
            what,
            reason: reason.into(),
        }
    }
}

/// Serialises a body as JSON.
pub(crate) fn to_json<T: Serialize>(what: &'static str, body: &T) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(body).map_err(|source| WireError::Json { what, source })
}

/// Parses a JSON body.
pub(crate) fn from_json<'a, T: Deserialize<'a>>(
    what: &'static str,
    body: &'a [u8],
) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|source| WireError::Json { what, source })
}

// ---------------------------------------------------------------------------------------------
// Frames

/// Request header v2, as Kafka writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// A whole request frame, its size first.
pub(crate) fn encode_request_frame(header: &RequestHeader, body: &[u8]) -> Vec<u8> {
    let client_id = header.client_id.as_deref().map(str::as_bytes);
    let client_id_len = client_id.map_or(0, <[u8]>::len);
    let mut frame = Vec::with_capacity(4 + 11 + client_id_len + body.len());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&header.api_key.to_be_bytes());
    frame.extend_from_slice(&header.api_version.to_be_bytes());
    frame.extend_from_slice(&header.correlation_id.to_be_bytes());
    match client_id {
        // A client id longer than an i16 is cut: it only names the sender in logs.
        Some(id) => {
            let id = &id[..id.len().min(i16::MAX as usize)];
            frame.extend_from_slice(&(id.len() as i16).to_be_bytes());
            frame.extend_from_slice(id);
        }
        None => frame.extend_from_slice(&(-1i16).to_be_bytes()),
    }
    frame.push(0); // no tagged fields
    frame.extend_from_slice(body);
    set_size(&mut frame);
    frame
}

/// The header of a request frame (without its size) and the body after it.
#[cfg(test)]
pub(crate) fn decode_request_header(frame: &[u8]) -> Result<(RequestHeader, &[u8]), WireError> {
    let mut r = Reader(frame);
    let api_key = r.i16("request header")?;
    let api_version = r.i16("request header")?;
    let correlation_id = r.i32("request header")?;
    let client_id = match r.i16("request header")? {
        -1 => None,
        len if len < 0 => {
            return Err(WireError::malformed(
                "request header",
                format!("client id length {len}"),
            ))
        }
        len => {
            let bytes = r.take(len as usize, "client id")?;
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
    };
    // Tagged fields: skipped, as Kafka skips the ones it does not know.
    let count = r.uvarint("tagged fields")?;
    for _ in 0..count {
        r.uvarint("tagged field")?;
        let size = r.uvarint("tagged field")?;
        let size = usize::try_from(size)
            .map_err(|_| WireError::malformed("tagged field", "size too large"))?;
        r.take(size, "tagged field")?;
    }
    Ok((
        RequestHeader {
            api_key,
            api_version,
            correlation_id,
            client_id,
        },
        r.0,
    ))
}

/// A whole response frame, its size first: response header v0, then the body.
#[cfg(test)]
pub(crate) fn encode_response_frame(correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(body);
    set_size(&mut frame);
    frame
}

/// The correlation id of a response frame (without its size) and the body after it.
pub(crate) fn decode_response(frame: &[u8]) -> Result<(i32, &[u8]), WireError> {
    let mut r = Reader(frame);
    let correlation_id = r.i32("response header")?;
    Ok((correlation_id, r.0))
}

fn set_size(frame: &mut [u8]) {
    // Frames are bounded by the max frame size (an i32) before they are written.
    let size = i32::try_from(frame.len() - 4).unwrap_or(i32::MAX);
    frame[..4].copy_from_slice(&size.to_be_bytes());
}

/// Reads one frame's bytes after its size; `None` at a clean end of stream before a frame.
pub(crate) async fn read_frame<R>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Vec<u8>>, FrameReadError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut size = [0u8; 4];
    match reader.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameReadError::Io(e)),
    }
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .map_err(|_| FrameReadError::Wire(WireError::malformed("frame", format!("size {size}"))))?;
    if size > max_frame_bytes {
        return Err(FrameReadError::Wire(WireError::FrameTooLarge {
            size,
            max: max_frame_bytes,
        }));
    }
    // Grown as the bytes arrive, not sized from the peer's length field: a peer announcing a
    // large frame and sending nothing costs no memory.
    let mut frame = Vec::with_capacity(size.min(64 * 1024));
    reader
        .take(size as u64)
        .read_to_end(&mut frame)
        .await
        .map_err(FrameReadError::Io)?;
    if frame.len() < size {
        return Err(FrameReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(frame))
}

/// Why a frame could not be read off a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error("reading a frame: {0}")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Wire(WireError),
}

/// A cursor over a frame's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    #[cfg(test)]
    fn i16(&mut self, what: &'static str) -> Result<i16, WireError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint of at most 5 bytes, as Kafka's compact encodings use.
    #[cfg(test)]
    fn uvarint(&mut self, what: &'static str) -> Result<u32, WireError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.take(1, what)?[0];
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::malformed(what, "varint longer than 5 bytes"))
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// The longest address a learner may ask to be reached at (a host name of 253 bytes, a colon
/// and a port).
pub(crate) const MAX_LEARNER_ADDRESS_BYTES: usize = 260;

/// Who sent a request: checked by the receiver against its membership and cluster id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireOrigin {
    pub node_id: u64,
    /// `None` until the sender has learned the cluster id from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireVoteRequest {
    pub origin: WireOrigin,
    pub vote: StoredVote,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_id: Option<StoredLogId>,
}

impl WireVoteRequest {
    pub fn from_raft(origin: WireOrigin, rpc: &VoteRequest<u64>) -> WireVoteRequest {
        WireVoteRequest {
            origin,
            vote: StoredVote::from(&rpc.vote),
            last_log_id: rpc.last_log_id.as_ref().map(StoredLogId::from),
        }
    }

    pub fn to_raft(&self) -> VoteRequest<u64> {
        VoteRequest::new(
            self.vote.to_raft(),
            self.last_log_id.map(StoredLogId::to_raft),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireVoteResponse {
    pub vote: StoredVote,
    pub vote_granted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_id: Option<StoredLogId>,
}

impl From<&VoteResponse<u64>> for WireVoteResponse {
    fn from(r: &VoteResponse<u64>) -> Self {
        WireVoteResponse {
            vote: StoredVote::from(&r.vote),
            vote_granted: r.vote_granted,
            last_log_id: r.last_log_id.as_ref().map(StoredLogId::from),
        }
    }
}

impl WireVoteResponse {
    pub fn to_raft(&self) -> VoteResponse<u64> {
        VoteResponse::new(
            self.vote.to_raft(),
            self.last_log_id.map(StoredLogId::to_raft),
            self.vote_granted,
        )
    }
}

/// One entry: its log id, and the kind and JSON value its record in the log carries.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireEntry {
    pub term: u64,
    pub index: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<RawValue>>,
}

impl WireEntry {
    pub fn from_raft(entry: &Entry<QuorumTypes>) -> Result<WireEntry, WireError> {
        let id = StoredLogId::from(&entry.log_id);
        let (kind, value) = encode_payload(&entry.payload)?;
        let value = match value {
            Some(json) => {
                let json = String::from_utf8(json)
                    .map_err(|e| WireError::malformed("an entry", e.to_string()))?;
                Some(
                    RawValue::from_string(json).map_err(|source| WireError::Json {
                        what: "an entry",
                        source,
                    })?,
                )
            }
            None => None,
        };
        Ok(WireEntry {
            term: id.term,
            index: id.index,
            kind: String::from_utf8_lossy(kind).into_owned(),
            value,
        })
    }

    pub fn to_raft(&self) -> Result<Entry<QuorumTypes>, WireError> {
        let id = StoredLogId {
            term: self.term,
            index: self.index,
        };
        let value = self.value.as_ref().map(|v| v.get().as_bytes());
        let payload = decode_payload(id, self.kind.as_bytes(), value)?;
        if let openraft::EntryPayload::Membership(m) = &payload {
            validate_membership(&QuorumMembership::from(m))?;
        }
        Ok(Entry {
            log_id: id.to_raft(),
            payload,
        })
    }
}

/// openraft assumes every membership it is handed has at least one non-empty voter set.
fn validate_membership(m: &QuorumMembership) -> Result<(), WireError> {
    if m.configs.is_empty() || m.configs.iter().any(|c| c.is_empty()) {
        return Err(WireError::malformed("a membership", "an empty voter set"));
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireAppendEntriesRequest {
    pub origin: WireOrigin,
    pub vote: StoredVote,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_log_id: Option<StoredLogId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_commit: Option<StoredLogId>,
    #[serde(default)]
    pub entries: Vec<WireEntry>,
}

impl WireAppendEntriesRequest {
    pub fn from_raft(
        origin: WireOrigin,
        rpc: &AppendEntriesRequest<QuorumTypes>,
    ) -> Result<WireAppendEntriesRequest, WireError> {
        Ok(WireAppendEntriesRequest {
            origin,
            vote: StoredVote::from(&rpc.vote),
            prev_log_id: rpc.prev_log_id.as_ref().map(StoredLogId::from),
            leader_commit: rpc.leader_commit.as_ref().map(StoredLogId::from),
            entries: rpc
                .entries
                .iter()
                .map(WireEntry::from_raft)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The request for openraft, refused unless its entries follow `prev_log_id` one index at a
    /// time with terms that never fall and never pass the leader's.
    pub fn to_raft(&self) -> Result<AppendEntriesRequest<QuorumTypes>, WireError> {
        let mut expected_index = self.prev_log_id.map_or(0, |id| id.index.saturating_add(1));
        let mut min_term = self.prev_log_id.map_or(0, |id| id.term);
        for entry in &self.entries {
            if entry.index != expected_index || entry.term < min_term || entry.term > self.vote.term
            {
                return Err(WireError::malformed(
                    "append entries",
                    format!(
                        "entry ({}, {}) does not follow ({min_term}, {})",
                        entry.term,
                        entry.index,
                        expected_index.saturating_sub(1)
                    ),
                ));
            }
            expected_index = entry.index.saturating_add(1);
            min_term = entry.term;
        }
        Ok(AppendEntriesRequest {
            vote: self.vote.to_raft(),
            prev_log_id: self.prev_log_id.map(StoredLogId::to_raft),
            leader_commit: self.leader_commit.map(StoredLogId::to_raft),
            entries: self
                .entries
                .iter()
                .map(WireEntry::to_raft)
                .collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum WireAppendEntriesResponse {
    Success,
    /// The follower took entries up to `matching`, not all of them.
    PartialSuccess {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        matching: Option<StoredLogId>,
    },
    /// The follower's log does not hold `prev_log_id`.
    Conflict,
    HigherVote {
        vote: StoredVote,
    },
}

impl From<&AppendEntriesResponse<u64>> for WireAppendEntriesResponse {
    fn from(r: &AppendEntriesResponse<u64>) -> Self {
        match r {
            AppendEntriesResponse::Success => WireAppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(m) => WireAppendEntriesResponse::PartialSuccess {
                matching: m.as_ref().map(StoredLogId::from),
            },
            AppendEntriesResponse::Conflict => WireAppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(v) => WireAppendEntriesResponse::HigherVote {
                vote: StoredVote::from(v),
            },
        }
    }
}

impl WireAppendEntriesResponse {
    pub fn to_raft(&self) -> AppendEntriesResponse<u64> {
        match self {
            WireAppendEntriesResponse::Success => AppendEntriesResponse::Success,
            WireAppendEntriesResponse::PartialSuccess { matching } => {
                AppendEntriesResponse::PartialSuccess(matching.map(StoredLogId::to_raft))
            }
            WireAppendEntriesResponse::Conflict => AppendEntriesResponse::Conflict,
            WireAppendEntriesResponse::HigherVote { vote } => {
                AppendEntriesResponse::HigherVote(vote.to_raft())
            }
        }
    }
}

/// What a checkpoint covers: its last log id and the membership as of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireSnapshotMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_id: Option<StoredLogId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_log_id: Option<StoredLogId>,
    pub membership: QuorumMembership,
    pub snapshot_id: String,
}

impl From<&SnapshotMeta<u64, QuorumNode>> for WireSnapshotMeta {
    fn from(meta: &SnapshotMeta<u64, QuorumNode>) -> Self {
        WireSnapshotMeta {
            last_log_id: meta.last_log_id.as_ref().map(StoredLogId::from),
            membership_log_id: meta
                .last_membership
                .log_id()
                .as_ref()
                .map(StoredLogId::from),
            membership: QuorumMembership::from(meta.last_membership.membership()),
            snapshot_id: meta.snapshot_id.clone(),
        }
    }
}

impl WireSnapshotMeta {
    pub fn to_raft(&self) -> Result<SnapshotMeta<u64, QuorumNode>, WireError> {
        validate_membership(&self.membership)?;
        Ok(SnapshotMeta {
            last_log_id: self.last_log_id.map(StoredLogId::to_raft),
            last_membership: StoredMembership::new(
                self.membership_log_id.map(StoredLogId::to_raft),
                self.membership.to_raft(),
            ),
            snapshot_id: self.snapshot_id.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireInstallSnapshotRequest {
    pub origin: WireOrigin,
    pub vote: StoredVote,
    pub meta: WireSnapshotMeta,
    /// Where this chunk starts in the checkpoint.
    pub offset: u64,
    /// The chunk, in base64.
    pub data: String,
    pub done: bool,
}

impl WireInstallSnapshotRequest {
    pub fn from_raft(
        origin: WireOrigin,
        rpc: &InstallSnapshotRequest<QuorumTypes>,
    ) -> WireInstallSnapshotRequest {
        WireInstallSnapshotRequest {
            origin,
            vote: StoredVote::from(&rpc.vote),
            meta: WireSnapshotMeta::from(&rpc.meta),
            offset: rpc.offset,
            data: base64::encode(&rpc.data),
            done: rpc.done,
        }
    }

    pub fn to_raft(&self) -> Result<InstallSnapshotRequest<QuorumTypes>, WireError> {
        let data = base64::decode(&self.data)
            .ok_or_else(|| WireError::malformed("a checkpoint chunk", "not base64"))?;
        // openraft writes a chunk at its offset into a buffer in memory: a chunk far out, or
        // chunks without end, would grow it without bound.
        let end = self.offset.saturating_add(data.len() as u64);
        if end > MAX_CHECKPOINT_BYTES {
            return Err(WireError::malformed(
                "a checkpoint chunk",
                format!(
                    "it ends at byte {end}, past the {MAX_CHECKPOINT_BYTES} a checkpoint may have"
                ),
            ));
        }
        Ok(InstallSnapshotRequest {
            vote: self.vote.to_raft(),
            meta: self.meta.to_raft()?,
            offset: self.offset,
            data,
            done: self.done,
        })
    }
}

/// A position in a checkpoint being sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireSegmentId {
    pub snapshot_id: String,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum WireInstallSnapshotResponse {
    Installed {
        vote: StoredVote,
    },
    /// The chunk is not the one the receiver expects; the leader starts the checkpoint over.
    SnapshotMismatch {
        expect: WireSegmentId,
        got: WireSegmentId,
    },
}

impl From<&Result<InstallSnapshotResponse<u64>, InstallSnapshotError>>
    for WireInstallSnapshotResponse
{
    fn from(r: &Result<InstallSnapshotResponse<u64>, InstallSnapshotError>) -> Self {
        let segment = |s: &SnapshotSegmentId| WireSegmentId {
            snapshot_id: s.id.clone(),
            offset: s.offset,
        };
        match r {
            Ok(r) => WireInstallSnapshotResponse::Installed {
                vote: StoredVote::from(&r.vote),
            },
            Err(InstallSnapshotError::SnapshotMismatch(m)) => {
                WireInstallSnapshotResponse::SnapshotMismatch {
                    expect: segment(&m.expect),
                    got: segment(&m.got),
                }
            }
        }
    }
}

impl WireInstallSnapshotResponse {
    pub fn to_raft(&self) -> Result<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let segment = |s: &WireSegmentId| SnapshotSegmentId {
            id: s.snapshot_id.clone(),
            offset: s.offset,
        };
        match self {
            WireInstallSnapshotResponse::Installed { vote } => Ok(InstallSnapshotResponse {
                vote: vote.to_raft(),
            }),
            WireInstallSnapshotResponse::SnapshotMismatch { expect, got } => {
                Err(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                    expect: segment(expect),
                    got: segment(got),
                }))
            }
        }
    }
}

/// Standard base64 with padding, for checkpoint chunks inside JSON (a third larger, where a
/// JSON array of numbers would be three to four times larger).
pub(crate) mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        let quads = text.len() / 4;
        for (q, quad) in text.chunks(4).enumerate() {
            let last = q + 1 == quads;
            let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
            if padding > 2 || (padding > 0 && !last) {
                return None;
            }
            let mut n: u32 = 0;
            for &c in &quad[..4 - padding] {
                n = (n << 6) | u32::from(sextet(c)?);
            }
            n <<= 6 * padding as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - padding]);
        }
        Some(out)
    }

    fn sextet(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
}

/// A node not among the voters asking to receive the log: sent to any voter, acted on by the
/// leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireAddLearnerRequest {
    pub origin: WireOrigin,
    /// `host:port` where the node answers AppendEntries and InstallSnapshot.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum WireAddLearnerResponse {
    /// The node is a learner at that address in a committed membership.
    Added,
    /// Only the leader changes the membership; `leader` is the one the receiver knows of.
    NotLeader {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<u64>,
    },
    /// Another membership change is under way: ask again shortly.
    Retry { reason: String },
    /// The request can never succeed as sent (a voter's id, a bad address).
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{EntryPayload, LogId, Vote};
    use proptest::prelude::*;

    use super::*;
    use crate::records::{EntryRecords, MetadataRecord};

    fn log_id() -> impl Strategy<Value = LogId<u64>> {
        (0u64..1_000, 0u64..1_000_000)
            .prop_map(|(term, index)| StoredLogId { term, index }.to_raft())
    }

    fn vote() -> impl Strategy<Value = Vote<u64>> {
        (0u64..1_000, proptest::option::of(1u64..10), any::<bool>()).prop_map(
            |(term, voted_for, committed)| {
                // Raft never makes a committed vote that names no leader (the wire refuses one).
                StoredVote {
                    term,
                    voted_for,
                    committed: committed && voted_for.is_some(),
                }
                .to_raft()
            },
        )
    }

    fn membership() -> impl Strategy<Value = QuorumMembership> {
        (
            proptest::collection::vec(proptest::collection::btree_set(1u64..6, 1..4), 1..3),
            proptest::collection::btree_map(6u64..10, "[a-z]{1,8}:[0-9]{2,5}", 0..3),
        )
            .prop_map(|(configs, learners)| {
                let mut nodes: BTreeMap<u64, QuorumNode> = configs
                    .iter()
                    .flatten()
                    .map(|&id| (id, QuorumNode::default()))
                    .collect();
                for (id, address) in learners {
                    nodes.insert(
                        id,
                        QuorumNode {
                            address: Some(address),
                        },
                    );
                }
                QuorumMembership { configs, nodes }
            })
    }

    fn payload() -> impl Strategy<Value = EntryPayload<QuorumTypes>> {
        prop_oneof![
            Just(EntryPayload::Blank),
            "[ -~]{0,20}".prop_map(|cluster_id| {
                EntryPayload::Normal(EntryRecords(vec![MetadataRecord::ClusterId {
                    v: 0,
                    cluster_id,
                }]))
            }),
            membership().prop_map(|m| EntryPayload::Membership(m.to_raft())),
        ]
    }

    /// An AppendEntries request whose entries follow its previous log id, as a leader sends.
    fn append_entries() -> impl Strategy<Value = AppendEntriesRequest<QuorumTypes>> {
        (
            vote(),
            proptest::option::of(log_id()),
            proptest::option::of(log_id()),
            proptest::collection::vec(payload(), 0..5),
        )
            .prop_map(|(vote, prev, commit, payloads)| {
                let first = prev.map_or(0, |id| id.index + 1);
                let term = prev
                    .map_or(0, |id| id.leader_id.term)
                    .max(vote.leader_id.term);
                let mut vote = vote;
                vote.leader_id.term = term;
                let entries = payloads
                    .into_iter()
                    .enumerate()
                    .map(|(i, payload)| Entry {
                        log_id: StoredLogId {
                            term,
                            index: first + i as u64,
                        }
                        .to_raft(),
                        payload,
                    })
                    .collect();
                AppendEntriesRequest {
                    vote,
                    prev_log_id: prev,
                    leader_commit: commit,
                    entries,
                }
            })
    }

    fn origin() -> impl Strategy<Value = WireOrigin> {
        (1u64..10, proptest::option::of("[A-Za-z0-9_-]{22}")).prop_map(|(node_id, cluster_id)| {
            WireOrigin {
                node_id,
                cluster_id,
            }
        })
    }

    /// Through JSON bytes and back.
    fn through_json<T: Serialize + serde::de::DeserializeOwned>(body: &T) -> T {
        let bytes = to_json("a test body", body).unwrap();
        from_json("a test body", &bytes).unwrap()
    }

    proptest! {
        #[test]
        fn vote_messages_round_trip(
            origin in origin(),
            vote in vote(),
            last in proptest::option::of(log_id()),
            granted in any::<bool>(),
        ) {
            let request = VoteRequest::new(vote, last);
            let wire = through_json(&WireVoteRequest::from_raft(origin.clone(), &request));
            prop_assert_eq!(&wire.origin, &origin);
            prop_assert_eq!(wire.to_raft(), request);
            let response = VoteResponse::new(vote, last, granted);
            prop_assert_eq!(through_json(&WireVoteResponse::from(&response)).to_raft(), response);
        }

        #[test]
        fn append_entries_round_trips(origin in origin(), request in append_entries()) {
            let wire = WireAppendEntriesRequest::from_raft(origin.clone(), &request).unwrap();
            let wire = through_json(&wire);
            prop_assert_eq!(&wire.origin, &origin);
            let back = wire.to_raft().unwrap();
            prop_assert_eq!(format!("{back:?}"), format!("{request:?}"));
        }

        #[test]
        fn append_entries_answers_round_trip(
            matching in proptest::option::of(log_id()),
            vote in vote(),
        ) {
            for response in [
                AppendEntriesResponse::Success,
                AppendEntriesResponse::PartialSuccess(matching),
                AppendEntriesResponse::Conflict,
                AppendEntriesResponse::HigherVote(vote),
            ] {
                let wire = through_json(&WireAppendEntriesResponse::from(&response));
                prop_assert_eq!(wire.to_raft(), response);
            }
        }

        #[test]
        fn install_snapshot_messages_round_trip(
            origin in origin(),
            vote in vote(),
            last in proptest::option::of(log_id()),
            membership_id in proptest::option::of(log_id()),
            membership in membership(),
            offset in 0..MAX_CHECKPOINT_BYTES - 100,
            data in proptest::collection::vec(any::<u8>(), 0..100),
            done in any::<bool>(),
        ) {
            let request = InstallSnapshotRequest::<QuorumTypes> {
                vote,
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: StoredMembership::new(membership_id, membership.to_raft()),
                    snapshot_id: format!("{offset}-snapshot"),
                },
                offset,
                data,
                done,
            };
            let wire = through_json(&WireInstallSnapshotRequest::from_raft(origin, &request));
            prop_assert_eq!(wire.to_raft().unwrap(), request);

            let installed: Result<_, InstallSnapshotError> = Ok(InstallSnapshotResponse { vote });
            let wire = through_json(&WireInstallSnapshotResponse::from(&installed));
            prop_assert_eq!(wire.to_raft(), installed);
            let mismatch = SnapshotMismatch {
                expect: SnapshotSegmentId { id: "a".into(), offset },
                got: SnapshotSegmentId { id: "b".into(), offset: 0 },
            };
            let wire = through_json(&WireInstallSnapshotResponse::from(&Err(mismatch.clone().into())));
            match wire.to_raft() {
                Err(InstallSnapshotError::SnapshotMismatch(back)) => prop_assert_eq!(back, mismatch),
                other => prop_assert!(false, "a mismatch came back as {:?}", other),
            }
        }

        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = base64::encode(&bytes);
            prop_assert_eq!(text.len(), bytes.len().div_ceil(3) * 4);
            prop_assert_eq!(base64::decode(&text), Some(bytes));
        }

        #[test]
        fn request_headers_round_trip(
            api_key in any::<i16>(),
            api_version in any::<i16>(),
            correlation_id in any::<i32>(),
            client_id in proptest::option::of("[ -~]{0,30}"),
            body in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            let header = RequestHeader { api_key, api_version, correlation_id, client_id };
            let frame = encode_request_frame(&header, &body);
            prop_assert_eq!(i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
            let (back, rest) = decode_request_header(&frame[4..]).unwrap();
            prop_assert_eq!(back, header);
            prop_assert_eq!(rest, &body[..]);
            let response = encode_response_frame(correlation_id, &body);
            prop_assert_eq!(decode_response(&response[4..]).unwrap(), (correlation_id, &body[..]));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_request_header(&bytes);
            let _ = decode_response(&bytes);
            let _ = base64::decode(&String::from_utf8_lossy(&bytes));
            if let Ok(request) = from_json::<WireAppendEntriesRequest>("garbage", &bytes) {
                let _ = request.to_raft();
            }
            if let Ok(request) = from_json::<WireInstallSnapshotRequest>("garbage", &bytes) {
                let _ = request.to_raft();
            }
        }
    }

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64::encode(plain.as_bytes()), encoded);
            assert_eq!(base64::decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "===="] {
            assert_eq!(base64::decode(bad), None, "{bad} is not base64");
        }
    }

    #[test]
    fn an_entry_carries_the_json_its_record_stores() {
        let entry: Entry<QuorumTypes> = Entry {
            log_id: StoredLogId { term: 2, index: 7 }.to_raft(),
            payload: EntryPayload::Normal(EntryRecords(vec![MetadataRecord::ClusterId {
                v: 0,
                cluster_id: "abc".into(),
            }])),
        };
        let wire = WireEntry::from_raft(&entry).unwrap();
        let stored = crate::quorum::entry::decode_batch(
            &crate::quorum::entry::encode_entry(&entry, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(wire.kind.as_bytes(), stored.key.as_slice());
        assert_eq!(
            wire.value.as_ref().map(|v| v.get().as_bytes().to_vec()),
            stored.value
        );
    }

    #[test]
    fn entries_that_do_not_follow_their_previous_log_id_are_refused() {
        let entry = |term, index| WireEntry {
            term,
            index,
            kind: "blank".into(),
            value: None,
        };
        let request = |prev: Option<(u64, u64)>, entries| WireAppendEntriesRequest {
            origin: WireOrigin {
                node_id: 1,
                cluster_id: None,
            },
            vote: StoredVote {
                term: 3,
                voted_for: Some(1),
                committed: true,
            },
            prev_log_id: prev.map(|(term, index)| StoredLogId { term, index }),
            leader_commit: None,
            entries,
        };
        assert!(request(Some((1, 4)), vec![entry(1, 5), entry(3, 6)])
            .to_raft()
            .is_ok());
        for bad in [
            request(Some((1, 4)), vec![entry(1, 6)]),
            request(Some((1, 4)), vec![entry(1, 5), entry(1, 5)]),
            request(Some((2, 4)), vec![entry(1, 5)]),
            request(None, vec![entry(1, 1)]),
            request(None, vec![entry(4, 0)]),
        ] {
            assert!(bad.to_raft().is_err(), "{bad:?} was taken");
        }
        let empty_membership = WireEntry {
            term: 1,
            index: 0,
            kind: "membership".into(),
            value: Some(RawValue::from_string(r#"{"configs":[]}"#.into()).unwrap()),
        };
        assert!(request(None, vec![empty_membership]).to_raft().is_err());
    }

    #[test]
    fn a_committed_vote_that_names_no_leader_is_refused() {
        // openraft unwraps the leader of a committed vote: such a vote must never reach it.
        let vote = r#"{"origin":{"node_id":2},"vote":{"term":9,"committed":true}}"#;
        assert!(from_json::<WireVoteRequest>("a vote", vote.as_bytes()).is_err());
        let named = r#"{"origin":{"node_id":2},"vote":{"term":9,"voted_for":2,"committed":true}}"#;
        assert!(from_json::<WireVoteRequest>("a vote", named.as_bytes()).is_ok());
        let answer = r#"{"vote":{"term":9,"committed":true},"vote_granted":false}"#;
        assert!(from_json::<WireVoteResponse>("a vote answer", answer.as_bytes()).is_err());
    }

    #[test]
    fn a_checkpoint_chunk_past_the_largest_checkpoint_is_refused() {
        let chunk = |offset| WireInstallSnapshotRequest {
            origin: WireOrigin {
                node_id: 1,
                cluster_id: None,
            },
            vote: StoredVote {
                term: 3,
                voted_for: Some(1),
                committed: true,
            },
            meta: WireSnapshotMeta {
                last_log_id: None,
                membership_log_id: None,
                membership: QuorumMembership {
                    configs: vec![[1u64].into_iter().collect()],
                    nodes: [(1u64, QuorumNode::default())].into_iter().collect(),
                },
                snapshot_id: "s".into(),
            },
            offset,
            data: base64::encode(b"x"),
            done: false,
        };
        assert!(chunk(0).to_raft().is_ok());
        assert!(chunk(MAX_CHECKPOINT_BYTES - 1).to_raft().is_ok());
        assert!(chunk(MAX_CHECKPOINT_BYTES).to_raft().is_err());
        assert!(chunk(1 << 40).to_raft().is_err());
        assert!(chunk(u64::MAX).to_raft().is_err());
    }
}
