//! Caudal's cluster metadata: the typed records of the metadata log, the image they build, what
//! a batch of them changes for one broker, where new partitions' replicas go, and the controller
//! that decides which records to write.
//!
//! Nothing outside [`quorum`] does I/O or reads a clock: records and log ids go in, images come
//! out, so every rule is tested deterministically. [`quorum`] replicates the records with Raft
//! and stores them.

pub mod bootstrap;
pub mod controller;
pub mod image;
pub mod meta_properties;
pub mod placement;
pub mod quorum;
pub mod records;

#[cfg(test)]
mod testing;

pub use bootstrap::{Bootstrap, BootstrapError, BootstrapSettings};
pub use controller::{
    CommitReply, Controller, ControllerConfig, ControllerRequest, Decision, IdSource, Reply,
};
pub use image::{
    BrokerRegistration, ConfigResource, LocalReplicaChanges, MetadataDelta, MetadataImage,
    PartitionRegistration, Provenance, ReplayError, TopicIdPartition, TopicImage,
};
pub use placement::{continuation, place, PlacementBroker, PlacementError, Start};
pub use records::{
    CodecError, Endpoint, EntryRecords, FeatureRange, LeaderChange, MetadataRecord,
    METADATA_VERSION_FEATURE, METADATA_VERSION_LEVEL, RECORD_VERSION,
};
