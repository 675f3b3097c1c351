//! The state machine is the metadata loader: committed entries are replayed into one
//! [`MetadataDelta`] per `apply` call, the next image is built once, and published.
//!
//! Snapshots are the image written as records (see `snapshot.rs`); installing one, and loading
//! one at start, replays those records into an empty delta, through the same code as the log.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use super::entry::StoredLogId;
use super::snapshot::{self, CheckpointHeader};
use super::{
    blocking, now_ms, Applied, QuorumMembership, QuorumNode, QuorumStoreError, QuorumTypes,
};
use crate::image::writer::image_records;
use crate::records::MetadataRecord;
use crate::{MetadataDelta, MetadataImage, Provenance};

/// The applied state of the metadata log and the image it built.
#[derive(Debug)]
pub struct StateMachine {
    dir: PathBuf,
    image: Arc<MetadataImage>,
    applied: Option<StoredLogId>,
    membership_log_id: Option<StoredLogId>,
    membership: QuorumMembership,
    publisher: watch::Sender<Arc<MetadataImage>>,
}

/// Writes a checkpoint of one image. Holds the image by `Arc`, so building never copies it nor
/// holds up applying the next entries.
#[derive(Debug)]
pub struct CheckpointBuilder {
    dir: PathBuf,
    image: Arc<MetadataImage>,
    header: CheckpointHeader,
}

fn provenance(id: StoredLogId) -> Provenance {
    Provenance {
        index: id.index,
        term: id.term,
    }
}

fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> impl FnOnce(QuorumStoreError) -> StorageError<u64> {
    move |e| {
        tracing::error!(error = %e, "metadata state machine storage failed");
        StorageIOError::new(subject, verb, &e).into()
    }
}

/// The image `records` build when replayed at `at` into an empty image.
fn replay_into_empty(records: &[MetadataRecord], at: Option<StoredLogId>) -> MetadataImage {
    let mut delta = MetadataDelta::new(Arc::new(MetadataImage::empty()));
    if let Some(at) = at {
        let at = provenance(at);
        delta.advance(at);
        for record in records {
            // A skipped record is logged by replay, identically on every node.
            let _ = delta.replay(record, at);
        }
    }
    delta.apply()
}

impl StateMachine {
    /// Opens the state machine on the newest checkpoint in `dir` (the metadata log's directory),
    /// or empty. The receiver sees every image published from here on. Blocking.
    pub fn open(
        dir: &Path,
    ) -> Result<(StateMachine, watch::Receiver<Arc<MetadataImage>>), QuorumStoreError> {
        std::fs::create_dir_all(dir)
            .map_err(QuorumStoreError::io(format!("creating {}", dir.display())))?;
        snapshot::remove_leftovers(dir)?;
        let mut machine = StateMachine {
            dir: dir.to_path_buf(),
            image: Arc::new(MetadataImage::empty()),
            applied: None,
            membership_log_id: None,
            membership: QuorumMembership::default(),
            publisher: watch::Sender::new(Arc::new(MetadataImage::empty())),
        };
        if let Some(path) = snapshot::latest(dir)? {
            let bytes = std::fs::read(&path)
                .map_err(QuorumStoreError::io(format!("reading {}", path.display())))?;
            let (header, records) = snapshot::decode(&bytes)?;
            tracing::info!(checkpoint = %path.display(), records = records.len(), "metadata image loaded");
            machine.load(header, &records);
        }
        let receiver = machine.publisher.subscribe();
        Ok((machine, receiver))
    }

    /// The image of everything applied so far.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.clone()
    }

    /// A new receiver of the published images.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.publisher.subscribe()
    }

    fn load(&mut self, header: CheckpointHeader, records: &[MetadataRecord]) {
        self.image = Arc::new(replay_into_empty(records, header.last_log_id));
        self.applied = header.last_log_id;
        self.membership_log_id = header.membership_log_id;
        self.membership = header.membership;
        self.publisher.send_replace(self.image.clone());
    }

    fn header(&self) -> CheckpointHeader {
        CheckpointHeader {
            format: 1,
            last_log_id: self.applied,
            membership_log_id: self.membership_log_id,
            membership: self.membership.clone(),
        }
    }
}

fn snapshot_meta(header: &CheckpointHeader) -> SnapshotMeta<u64, QuorumNode> {
    SnapshotMeta {
        last_log_id: header.last_log_id.map(StoredLogId::to_raft),
        last_membership: StoredMembership::new(
            header.membership_log_id.map(StoredLogId::to_raft),
            header.membership.to_raft(),
        ),
        snapshot_id: header.name(),
    }
}

impl RaftSnapshotBuilder<QuorumTypes> for CheckpointBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<QuorumTypes>, StorageError<u64>> {
        let (dir, image, header) = (self.dir.clone(), self.image.clone(), self.header.clone());
        let (header, bytes) = blocking(move || {
            let bytes = snapshot::encode(&header, &image_records(&image), now_ms())?;
            snapshot::write(&dir, &header, &bytes)?;
            Ok((header, bytes))
        })
        .await
        .map_err(storage_error(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Write,
        ))?;
        tracing::info!(snapshot = %header.name(), bytes = bytes.len(), "metadata checkpoint written");
        Ok(Snapshot {
            meta: snapshot_meta(&header),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<QuorumTypes> for StateMachine {
    type SnapshotBuilder = CheckpointBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, QuorumNode>), StorageError<u64>> {
        Ok((
            self.applied.map(StoredLogId::to_raft),
            StoredMembership::new(
                self.membership_log_id.map(StoredLogId::to_raft),
                self.membership.to_raft(),
            ),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<QuorumTypes>> + Send,
        I::IntoIter: Send,
    {
        let mut delta = MetadataDelta::new(self.image.clone());
        let mut replies = Vec::new();
        for entry in entries {
            let id = StoredLogId::from(&entry.log_id);
            let at = provenance(id);
            delta.advance(at);
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(records) => {
                    for record in &records.0 {
                        // Invalid records are skipped (and logged) the same way everywhere.
                        let _ = delta.replay(record, at);
                    }
                }
                EntryPayload::Membership(m) => {
                    self.membership_log_id = Some(id);
                    self.membership = QuorumMembership::from(m);
                }
            }
            self.applied = Some(id);
            replies.push(Applied { index: id.index });
        }
        if !replies.is_empty() {
            self.image = Arc::new(delta.apply());
            self.publisher.send_replace(self.image.clone());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> CheckpointBuilder {
        CheckpointBuilder {
            dir: self.dir.clone(),
            image: self.image.clone(),
            header: self.header(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, QuorumNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let dir = self.dir.clone();
        let expected = meta.last_log_id.as_ref().map(StoredLogId::from);
        let (header, records) = blocking(move || {
            let (header, records) = snapshot::decode(&bytes)?;
            if header.last_log_id != expected {
                return Err(QuorumStoreError::corrupt(
                    "received checkpoint",
                    format!(
                        "it covers up to {:?}, the leader said {expected:?}",
                        header.last_log_id
                    ),
                ));
            }
            snapshot::write(&dir, &header, &bytes)?;
            Ok((header, records))
        })
        .await
        .map_err(storage_error(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Write,
        ))?;
        tracing::info!(snapshot = %header.name(), records = records.len(), "metadata checkpoint installed");
        self.load(header, &records);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<QuorumTypes>>, StorageError<u64>> {
        let dir = self.dir.clone();
        let found = blocking(move || {
            let Some(path) = snapshot::latest(&dir)? else {
                return Ok(None);
            };
            let bytes = std::fs::read(&path)
                .map_err(QuorumStoreError::io(format!("reading {}", path.display())))?;
            let (header, _) = snapshot::decode(&bytes)?;
            Ok(Some((header, bytes)))
        })
        .await
        .map_err(storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(found.map(|(header, bytes)| Snapshot {
            meta: snapshot_meta(&header),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
