//! Caudal's partition log: segments of stored RecordBatches with Kafka's on-disk layout
//! (`<base offset>.log`, `.index`, `.timeindex`), batch validation, crash recovery, retention.
//!
//! Batches are stored exactly as producers sent them; the only change is the base offset (and
//! leader epoch) written into the header, which the CRC does not cover. Reads return stored bytes.

pub mod batch;
pub mod compact;
pub mod compression;
pub mod disk;
pub mod epochs;
pub mod index;
pub mod log;
pub mod producers;
pub mod segment;
mod snapshots;
pub mod txnindex;

pub use batch::{
    control_batch, control_marker, validate_batch, validate_produced_batch, BatchError,
    BatchHeader, ControlMarker, ValidBatch,
};
pub use disk::{Disk, LogFile, OsDisk};
pub use epochs::{EpochEntry, LeaderEpochCache, UNDEFINED_EPOCH, UNDEFINED_OFFSET};
pub use log::{
    validate_for_append, AppendError, AppendInfo, AppendLimits, FlushJob, LogConfig, PartitionLog,
    ReadError, ReadPlan, RecoveryReport,
};
pub use producers::{EndedTxn, SequenceError};
pub use txnindex::AbortedTxn;
