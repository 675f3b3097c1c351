//! The APIs Caudal serves and the versions of each: the one place a version range is written.
//! The decoder accepts exactly these (API, version) pairs; the broker's route table takes each
//! route's range from here and adds the listener kinds it is served on, and ApiVersions answers
//! from that table (a test in the broker checks that every API here has exactly one route).

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

/// `(api, min_version, max_version)` for every API the broker serves.
///
/// Minimums follow Apache Kafka 4.x, which dropped the pre-2017 versions; maximums are the newest
/// versions whose semantics Caudal implements in full.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    // Transactions version 1 (EndTxn v5 is version 2, which clients use only when the broker
    // finalizes the transaction.version feature). AddPartitionsToTxn v4 and later are what
    // brokers send each other to verify transactional batches (KIP-890 part 1).
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    // v5 is transactions version 2 (the partition added implicitly).
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 2),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    // Forwarded to the active controller in an Envelope, as CreateTopics.
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    // Served on client and controller listeners: brokers forward it to the active controller.
    (ApiKey::DescribeQuorum, 0, 2),
    // Served on controller listeners only: what brokers send the active controller.
    (ApiKey::Envelope, 0, 0),
    (ApiKey::BrokerRegistration, 0, 4),
    (ApiKey::BrokerHeartbeat, 0, 1),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::AllocateProducerIds, 0, 0),
    (ApiKey::AlterPartition, 2, 3),
];

/// The version range served for `api`, or `None` if the API is not served at all. A `const fn`,
/// so the broker's route table is built from it at compile time.
pub const fn supported_range(api: ApiKey) -> Option<VersionRange> {
    let mut i = 0;
    while i < SUPPORTED_APIS.len() {
        let (key, min, max) = SUPPORTED_APIS[i];
        if key as i16 == api as i16 {
            return Some(VersionRange { min, max });
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_range_finds_each_entry_and_nothing_else() {
        for &(api, min, max) in SUPPORTED_APIS {
            assert_eq!(
                supported_range(api),
                Some(VersionRange { min, max }),
                "{api:?}"
            );
        }
        assert_eq!(supported_range(ApiKey::SaslHandshake), None);
        assert_eq!(supported_range(ApiKey::DeleteRecords), None);
    }

    #[test]
    fn every_served_range_is_one_the_message_schemas_define() {
        for &(api, min, max) in SUPPORTED_APIS {
            let schema = api.valid_versions();
            assert!(min <= max, "{api:?}: empty range {min}..={max}");
            assert!(
                schema.min <= min && max <= schema.max,
                "{api:?}: served {min}..={max} outside the schema's {schema}"
            );
        }
    }
}

#[cfg(test)]
mod readme {
    use super::SUPPORTED_APIS;

    /// The README's table of supported APIs must say what the broker serves.
    #[test]
    fn the_readme_lists_exactly_the_served_versions() {
        let readme = include_str!("../../../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("| ") && l.matches('|').count() == 4)
            .collect();
        for &(api, min, max) in SUPPORTED_APIS {
            let row = format!("| {api:?} | {} | {min}-{max} |", api as i16);
            assert!(
                rows.contains(&row.as_str()),
                "README.md should have the row `{row}`"
            );
        }
        let listed = rows
            .iter()
            .filter(|r| {
                r.split('|').nth(3).is_some_and(|v| {
                    v.trim()
                        .split_once('-')
                        .is_some_and(|(a, b)| a.parse::<i16>().is_ok() && b.parse::<i16>().is_ok())
                })
            })
            .count();
        assert_eq!(
            listed,
            SUPPORTED_APIS.len(),
            "README.md lists APIs the broker does not serve"
        );
    }
}
