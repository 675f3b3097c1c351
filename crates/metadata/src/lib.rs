//! Caudal's cluster metadata: the typed records of the metadata log and their JSON form.
//!
//! Nothing here does I/O; the Raft quorum that replicates the records lives elsewhere.

pub mod records;

#[cfg(test)]
mod testing;

pub use records::{
    CodecError, Endpoint, EntryRecords, FeatureRange, LeaderChange, MetadataRecord,
    METADATA_VERSION_FEATURE, RECORD_VERSION,
};
