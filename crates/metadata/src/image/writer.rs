//! An image written as records, for snapshots: replaying them into an empty delta at the
//! snapshot's log id gives the same image back, through the same code that applies the log.

use super::MetadataImage;
use crate::records::{MetadataRecord, RECORD_VERSION as V};

/// The records that rebuild `image`, in a fixed order (by name or id) so that two nodes with the
/// same image write the same snapshot.
pub fn image_records(image: &MetadataImage) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    if let Some(cluster_id) = image.cluster_id() {
        records.push(MetadataRecord::ClusterId {
            v: V,
            cluster_id: cluster_id.to_string(),
        });
    }
    for (name, level) in image.features() {
        records.push(MetadataRecord::FeatureLevel {
            v: V,
            name: name.clone(),
            level: *level,
        });
    }
    for broker in image.brokers().values() {
        records.push(MetadataRecord::RegisterBroker {
            v: V,
            broker_id: broker.id,
            incarnation_id: broker.incarnation_id,
            endpoints: broker.endpoints.clone(),
            rack: broker.rack.clone(),
            features: broker.features.clone(),
            // Replayed at the snapshot's index, the registration must keep its own epoch.
            broker_epoch: Some(broker.epoch),
        });
        // A registration replays fenced and running; write the state only when it differs.
        if !broker.fenced || broker.in_controlled_shutdown {
            records.push(MetadataRecord::BrokerRegistrationChange {
                v: V,
                broker_id: broker.id,
                broker_epoch: broker.epoch,
                fenced: Some(broker.fenced),
                in_controlled_shutdown: Some(broker.in_controlled_shutdown),
            });
        }
    }
    let mut topics: Vec<_> = image.topics().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        records.push(MetadataRecord::Topic {
            v: V,
            name: topic.name.clone(),
            topic_id: topic.id,
        });
        for (partition, registration) in (0i32..).zip(&topic.partitions) {
            records.push(MetadataRecord::Partition {
                v: V,
                topic_id: topic.id,
                partition,
                replicas: registration.replicas.clone(),
                isr: registration.isr.clone(),
                leader: registration.leader,
                leader_epoch: registration.leader_epoch,
                partition_epoch: registration.partition_epoch,
                elr: registration.elr.clone(),
            });
            if registration.is_reassigning() {
                records.push(MetadataRecord::PartitionReassignment {
                    v: V,
                    topic_id: topic.id,
                    partition,
                    adding: registration.adding.clone(),
                    removing: registration.removing.clone(),
                });
            }
        }
    }
    let mut configs: Vec<_> = image.configs().collect();
    configs.sort_by(|a, b| a.0.cmp(b.0));
    for (resource, config) in configs {
        for (name, value) in config {
            records.push(MetadataRecord::Config {
                v: V,
                resource_type: resource.resource_type,
                resource_name: resource.name.clone(),
                name: name.clone(),
                value: Some(value.clone()),
            });
        }
    }
    if image.next_producer_id() != 0 {
        // Which broker took the last block is not part of the image; -1 says so, as Kafka's
        // snapshots do.
        records.push(MetadataRecord::ProducerIds {
            v: V,
            broker_id: -1,
            broker_epoch: -1,
            next_producer_id: image.next_producer_id(),
        });
    }
    records
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::image::{MetadataDelta, Provenance};
    use crate::records::EntryRecords;

    fn load(records: &[MetadataRecord], at: Provenance) -> (MetadataImage, usize) {
        let mut delta = MetadataDelta::new(Arc::new(MetadataImage::empty()));
        delta.advance(at);
        let errors = records
            .iter()
            .filter(|r| delta.replay(r, at).is_err())
            .count();
        (delta.apply(), errors)
    }

    proptest! {
        /// records -> image -> records -> image: the snapshot of an image loads back to it,
        /// without a record skipped, and writing that again gives the same bytes.
        #[test]
        fn snapshot_round_trip(records in crate::testing::record_sequence(60)) {
            let (image, _) = {
                let mut delta = MetadataDelta::new(Arc::new(MetadataImage::empty()));
                for (i, record) in records.iter().enumerate() {
                    let _ = delta.replay(record, Provenance { index: 1 + i as u64, term: 2 });
                }
                (delta.apply(), ())
            };
            let written = image_records(&image);
            let (loaded, errors) = load(&written, image.provenance());
            prop_assert_eq!(errors, 0, "a snapshot record was skipped: {:?}", written);
            prop_assert_eq!(&loaded, &image);
            let again = EntryRecords(image_records(&loaded)).encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let first = EntryRecords(written).encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, first);
        }
    }
}
