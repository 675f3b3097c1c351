//! The quorum adapters against openraft's storage conformance suite.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::{LogStore, MetadataLogConfig, QuorumTypes, StateMachine};

/// Fresh stores in a temporary directory, which lives as long as the test holds the guard.
struct TempStores;

impl StoreBuilder<QuorumTypes, LogStore, StateMachine, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log_dir = super::metadata_log_dir(dir.path());
        // Tiny segments, so purges and truncations cross segment boundaries.
        let config = MetadataLogConfig {
            segment_bytes: 1024,
            ..MetadataLogConfig::default()
        };
        let store = LogStore::open(&log_dir, &config)
            .expect("the log store opens")
            .with_map_like_appends();
        let (machine, _images) = StateMachine::open(&log_dir).expect("the state machine opens");
        Ok((dir, store, machine))
    }
}

#[test]
fn log_store_and_state_machine_pass_openraft_suite() {
    Suite::test_all(TempStores).expect("openraft's storage suite passes");
}
