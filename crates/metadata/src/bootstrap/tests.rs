//! The bootstrap entry for fresh directories and for the previous release's, checked against the
//! real fixture that release wrote (`tests/fixtures/previous-release-data.tar.gz` and its
//! `expected.json`), then end to end on a one-voter quorum with the controller service.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ResponseKind;
use tempfile::TempDir;

use super::*;
use crate::controller::service::tests::{
    beat, create, heartbeat, image_where, live_broker, quorum_config, registration, until_active,
};
use crate::controller::{
    ControllerClock, ControllerConfig, ControllerRequest, ControllerService,
    ControllerServiceConfig, IdSource,
};
use crate::image::{MetadataDelta, Provenance};
use crate::quorum::testing::Router;
use crate::quorum::Quorum;
use crate::Controller;

const WAIT: Duration = Duration::from_secs(10);

fn settings(voters: &[u64]) -> BootstrapSettings {
    BootstrapSettings {
        node_id: 1,
        cluster_id: None,
        voters: voters.iter().copied().collect(),
    }
}

/// The previous release's data directory, unpacked into a temporary directory.
struct Fixture {
    _tmp: TempDir,
    dir: PathBuf,
    expected: serde_json::Value,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/previous-release-data.tar.gz");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "unpacking {}", archive.display());
    let dir = tmp.path().join("data");
    let expected = serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        expected,
    }
}

/// Kafka prints topic ids in base64; the fixture's expectations do too.
fn kafka_id(id: Uuid) -> String {
    const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    base64_unpadded(id.as_bytes(), STANDARD)
}

/// `records` replayed as one entry into the empty image; replay must take every one.
fn applied(records: &[MetadataRecord]) -> MetadataImage {
    let at = Provenance { index: 1, term: 1 };
    let mut delta = MetadataDelta::new(Arc::new(MetadataImage::empty()));
    delta.advance(at);
    for record in records {
        if let Err(e) = delta.replay(record, at) {
            panic!("the bootstrap wrote a record replay skips ({e}): {record:?}");
        }
    }
    delta.apply()
}

/// Everything `expected.json` says about the metadata holds in `image`.
fn assert_matches_fixture(image: &MetadataImage, fixture: &Fixture) {
    let expected = &fixture.expected;
    assert_eq!(image.cluster_id(), expected["cluster_id"].as_str());
    let topics = expected["topics"].as_object().unwrap();
    assert!(!topics.is_empty());
    for (name, want) in topics {
        let topic = image
            .topic_by_name(name)
            .unwrap_or_else(|| panic!("topic {name} taken over"));
        assert_eq!(
            Some(kafka_id(topic.id).as_str()),
            want["topic_id"].as_str(),
            "{name}'s id"
        );
        assert_eq!(
            topic.partitions.len() as u64,
            want["partitions"].as_u64().unwrap(),
            "{name}'s partitions"
        );
        for p in &topic.partitions {
            assert_eq!(
                (p.replicas.as_slice(), p.isr.as_slice()),
                (&[1][..], &[1][..])
            );
        }
        let configs: BTreeMap<String, String> = want["configs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            image.config(&ConfigResource::topic(name)),
            Some(&configs),
            "{name}'s overrides"
        );
        // Each partition directory carries the same id.
        for partition in 0..topic.partitions.len() {
            let meta = fs::read_to_string(
                fixture
                    .dir
                    .join(format!("{name}-{partition}"))
                    .join("partition.metadata"),
            )
            .unwrap();
            assert!(meta.contains(&topic.id.hyphenated().to_string()), "{meta}");
        }
    }
    // The group offsets live in __consumer_offsets, which is taken over as a topic like any.
    let offsets = image.topic_by_name("__consumer_offsets").unwrap();
    assert_eq!(offsets.partitions.len(), 50);
    assert_eq!(
        image
            .config(&ConfigResource::topic("__consumer_offsets"))
            .and_then(|c| c.get("cleanup.policy"))
            .map(String::as_str),
        Some("compact")
    );
}

#[test]
fn the_previous_release_is_taken_over_with_every_topic_id_partition_and_override() {
    let fixture = fixture();
    let floor: i64 = fs::read_to_string(fixture.dir.join(LEGACY_PRODUCER_IDS_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let bootstrap = Bootstrap::prepare(&fixture.dir, &settings(&[])).unwrap();
    assert!(bootstrap.is_takeover());
    assert_eq!(
        Some(bootstrap.cluster_id()),
        fixture.expected["cluster_id"].as_str()
    );
    let image = applied(bootstrap.records());
    assert_matches_fixture(&image, &fixture);
    for topic in image.topics() {
        for p in &topic.partitions {
            assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (1, 0, 0));
        }
    }
    assert!(floor > 0);
    assert_eq!(image.next_producer_id(), floor);
    assert_eq!(image.feature_level(METADATA_VERSION_FEATURE), 1);
    // Preparing reads and writes nothing else.
    assert!(fixture.dir.join(LEGACY_METADATA_FILE).exists());
    assert!(!metadata_log_dir(&fixture.dir).exists());
}

#[test]
fn a_takeover_is_refused_unless_this_node_is_the_only_voter() {
    let fixture = fixture();
    for voters in [&[1, 2, 3][..], &[2][..], &[1, 2][..]] {
        let err = Bootstrap::prepare(&fixture.dir, &settings(voters)).unwrap_err();
        assert!(
            matches!(err, BootstrapError::TakeoverNeedsOneVoter { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("start this node alone once to convert its data, then add nodes"),
            "{err}"
        );
    }
    assert!(Bootstrap::prepare(&fixture.dir, &settings(&[1])).is_ok());
    // Another cluster id than the directory's is refused; the same one is fine.
    let mut other = settings(&[]);
    other.cluster_id = Some("another-cluster".into());
    let err = Bootstrap::prepare(&fixture.dir, &other).unwrap_err();
    assert!(
        matches!(err, BootstrapError::ClusterIdMismatch { .. }),
        "{err}"
    );
    other.cluster_id = fixture.expected["cluster_id"].as_str().map(String::from);
    assert!(Bootstrap::prepare(&fixture.dir, &other).is_ok());
    // So is a meta.properties of another node.
    let mut node2 = settings(&[]);
    node2.node_id = 2;
    let err = Bootstrap::prepare(&fixture.dir, &node2).unwrap_err();
    assert!(err.to_string().contains("--node-id 1"), "{err}");
}

#[test]
fn a_fresh_directory_gets_a_cluster_id_and_the_feature_level() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = Bootstrap::prepare(dir.path(), &settings(&[1, 2, 3])).unwrap();
    assert!(!bootstrap.is_takeover());
    let id = bootstrap.cluster_id();
    assert_eq!(id.len(), 22, "{id}");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(!id.starts_with('-'));
    assert_eq!(bootstrap.records().len(), 2);
    let image = applied(bootstrap.records());
    assert_eq!(image.cluster_id(), Some(id));
    assert_eq!(image.feature_level(METADATA_VERSION_FEATURE), 1);
    assert_ne!(
        Bootstrap::prepare(dir.path(), &settings(&[]))
            .unwrap()
            .cluster_id(),
        id
    );

    let mut configured = settings(&[]);
    configured.cluster_id = Some("MkU3OEVBNTcwNTJENDM2Qk".into());
    let bootstrap = Bootstrap::prepare(dir.path(), &configured).unwrap();
    assert_eq!(bootstrap.cluster_id(), "MkU3OEVBNTcwNTJENDM2Qk");
    configured.cluster_id = Some("two words".into());
    assert!(matches!(
        Bootstrap::prepare(dir.path(), &configured),
        Err(BootstrapError::InvalidClusterId(_))
    ));

    // No entry once the log has a cluster id.
    assert_eq!(
        Bootstrap::plan(dir.path(), &settings(&[]), &image).unwrap(),
        None
    );
    // meta.properties is written only after the bootstrap commits: with a log that has no
    // cluster id, the log was lost.
    complete(dir.path(), &image, 1).unwrap();
    let err = Bootstrap::prepare(dir.path(), &settings(&[])).unwrap_err();
    assert!(
        matches!(err, BootstrapError::MetadataLogLost { .. }),
        "{err}"
    );
}

#[test]
fn cluster_ids_are_kafkas_base64_of_sixteen_bytes() {
    // The fixture's own pair: a topic id and how the Kafka tools print it.
    let id = Uuid::parse_str("dfb7ce29-e60e-4050-a49d-9e04d43decdc").unwrap();
    assert_eq!(kafka_id(id), "37fOKeYOQFCknZ4E1D3s3A");
    assert_eq!(base64_unpadded(&[0xfb, 0xff], BASE64_URL), "-_8");
    assert_eq!(base64_unpadded(b"", BASE64_URL), "");
}

#[test]
fn completing_a_takeover_writes_meta_properties_and_checkpoints_then_retires_the_old_files() {
    let fixture = fixture();
    let dir = &fixture.dir;
    // A directory of a release from before meta.properties.
    fs::remove_file(dir.join(meta_properties::META_PROPERTIES_FILE)).unwrap();
    let orders_checkpoint =
        fs::read_to_string(dir.join("orders-0/leader-epoch-checkpoint")).unwrap();
    let bootstrap = Bootstrap::prepare(dir, &settings(&[])).unwrap();
    let image = applied(bootstrap.records());
    let without_checkpoint = image
        .topics()
        .flat_map(|t| (0..t.partitions.len()).map(move |p| format!("{}-{p}", t.name)))
        .filter(|d| !dir.join(d).join("leader-epoch-checkpoint").exists())
        .count();

    // Before the commit there is nothing to complete.
    assert_eq!(
        complete(dir, &MetadataImage::empty(), 1).unwrap(),
        Completed::default()
    );
    // An image without the listed topics must not retire the file that lists them.
    let bare = applied(&bootstrap.records()[..2]);
    let err = complete(dir, &bare, 1).unwrap_err();
    assert!(
        matches!(err, BootstrapError::TakeoverNotCommitted { .. }),
        "{err}"
    );
    assert!(dir.join(LEGACY_METADATA_FILE).exists());

    let done = complete(dir, &image, 1).unwrap();
    assert!(done.wrote_meta_properties);
    let meta = MetaProperties::read(dir).unwrap().unwrap();
    assert_eq!(Some(meta.cluster_id.as_str()), image.cluster_id());
    assert_eq!(meta.node_id, 1);
    // The fixture's partitions that held records had checkpoints (orders, events, the
    // __consumer_offsets partition of the group); the others get one now.
    assert_eq!(done.epoch_checkpoints_written, without_checkpoint);
    assert!(without_checkpoint > 0);
    assert_eq!(
        fs::read_to_string(dir.join("orders-0/leader-epoch-checkpoint")).unwrap(),
        orders_checkpoint
    );
    let offsets = caudal_storage::LeaderEpochCache::load(&dir.join("__consumer_offsets-0"))
        .unwrap()
        .unwrap();
    assert_eq!(
        offsets.entries(),
        &[caudal_storage::EpochEntry {
            epoch: 0,
            start_offset: 0
        }]
    );
    assert_eq!(
        done.migrated,
        vec![
            dir.join("producer-ids.migrated"),
            dir.join("caudal-metadata.toml.migrated")
        ]
    );
    assert!(!dir.join(LEGACY_METADATA_FILE).exists());
    assert!(!dir.join(LEGACY_PRODUCER_IDS_FILE).exists());

    // Again (a restart): nothing left to do, and no bootstrap to propose.
    assert_eq!(complete(dir, &image, 1).unwrap(), Completed::default());
    assert_eq!(Bootstrap::plan(dir, &settings(&[]), &image).unwrap(), None);
}

#[test]
fn a_crash_between_the_renames_is_finished_by_the_next_start() {
    let fixture = fixture();
    let dir = &fixture.dir;
    let image = applied(Bootstrap::prepare(dir, &settings(&[])).unwrap().records());
    complete(dir, &image, 1).unwrap();
    // As if the crash came after meta.properties and before the second rename.
    fs::rename(
        dir.join("producer-ids.migrated"),
        dir.join(LEGACY_PRODUCER_IDS_FILE),
    )
    .unwrap();
    let done = complete(dir, &image, 1).unwrap();
    assert_eq!(done.migrated, vec![dir.join("producer-ids.migrated")]);
    assert!(!done.wrote_meta_properties);
}

async fn start(dir: &Path) -> Quorum {
    Quorum::start(&quorum_config(1), dir, Router::default().network(1))
        .await
        .unwrap()
}

fn controller() -> Controller {
    Controller::new(ControllerConfig::new(1), IdSource::seeded(0x5EED_0008))
}

/// The image without its position in the log, to compare images across a restart (the lone
/// voter writes a blank entry in its new term).
fn content(image: &MetadataImage) -> MetadataImage {
    let mut image = image.clone();
    image.provenance = Provenance::default();
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_directory_serves_the_controller_and_survives_a_restart() {
    let fixture = fixture();
    let dir = fixture.dir.clone();
    let quorum = start(&dir).await;
    assert!(quorum.initialize(&BTreeSet::from([1])).await.unwrap());
    let client = quorum.client();
    let mut states = client.statuses();
    tokio::time::timeout(WAIT, async {
        while !states.current().is_leader {
            states.changed().await.unwrap();
        }
    })
    .await
    .expect("the lone voter leads");

    // As `serve` will: the leader's image has no cluster id, so the bootstrap entry goes in.
    let image = image_where(&client, "the leader's blank entry", |i| {
        i.provenance().term >= 1
    })
    .await;
    let bootstrap = Bootstrap::plan(&dir, &settings(&[1]), &image)
        .unwrap()
        .expect("an entry to propose");
    assert!(bootstrap.is_takeover());
    quorum.propose(bootstrap.entry()).await.unwrap();
    let done = complete(&dir, &quorum.image(), 1).unwrap();
    assert_eq!(done.migrated.len(), 2);
    assert_matches_fixture(&quorum.image(), &fixture);

    let service = ControllerService::start(
        controller(),
        client.clone(),
        ControllerClock::manual(0),
        ControllerServiceConfig::default(),
    );
    let handle = service.handle();
    until_active(&handle).await;
    // A broker of another cluster is refused.
    match handle
        .call(ControllerRequest::RegisterBroker(
            registration("other", 1),
            4,
        ))
        .await
    {
        Ok(ResponseKind::BrokerRegistration(r)) => {
            assert_eq!(r.error_code, ResponseError::InconsistentClusterId.code())
        }
        other => panic!("{other:?}"),
    }
    let epoch = live_broker(&handle, &client, 1).await;
    let created = create(&handle, "after-takeover", 2).await.unwrap();
    assert_eq!(created.error_code, 0, "{created:?}");
    // Once its broker is back, every taken-over partition has its leader again.
    let offset = client.image().provenance().index as i64;
    heartbeat(&handle, beat(1, epoch, offset)).await;
    let image = image_where(&client, "every partition led by broker 1", |image| {
        image
            .topics()
            .all(|t| t.partitions.iter().all(|p| p.leader == 1))
    })
    .await;
    assert_matches_fixture(&image, &fixture);
    assert!(!image.broker(1).unwrap().fenced);
    assert_eq!(
        image.topic_by_name("after-takeover").unwrap().id,
        created.topic_id
    );
    service.shutdown().await;
    let before = quorum.image();
    quorum.shutdown().await.unwrap();

    // Restarted on the same directory: the same image, and no second bootstrap.
    let quorum = start(&dir).await;
    let after = quorum.image();
    assert_eq!(content(&after), content(&before));
    assert_eq!(
        Bootstrap::plan(&dir, &settings(&[1]), &after).unwrap(),
        None
    );
    assert_eq!(complete(&dir, &after, 1).unwrap(), Completed::default());
    // A lone voter leads again at once; its controller starts on everything committed.
    let service = ControllerService::start(
        controller(),
        quorum.client(),
        ControllerClock::manual(0),
        ControllerServiceConfig::default(),
    );
    let handle = service.handle();
    until_active(&handle).await;
    assert_eq!(content(&quorum.image()), content(&before));
    let again = create(&handle, "after-takeover", 1).await.unwrap();
    assert_eq!(again.error_code, ResponseError::TopicAlreadyExists.code());
    assert_eq!(
        create(&handle, "after-restart", 1)
            .await
            .unwrap()
            .error_code,
        0
    );
    service.shutdown().await;
    quorum.shutdown().await.unwrap();
}
