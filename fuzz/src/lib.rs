//! Helpers shared by Caudal's fuzz targets and the seed generator (`examples/gen_seeds.rs`):
//! how a fuzz input is turned into a request frame, and how valid frames and RecordBatches are
//! built for the seed corpora.

use bytes::{Bytes, BytesMut};
use caudal_protocol::kafka_protocol::messages::{
    api_versions_request::ApiVersionsRequest,
    create_partitions_request::{
        CreatePartitionsAssignment, CreatePartitionsRequest, CreatePartitionsTopic,
    },
    create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
    },
    delete_topics_request::DeleteTopicsRequest,
    describe_cluster_request::DescribeClusterRequest,
    describe_configs_request::{DescribeConfigsRequest, DescribeConfigsResource},
    fetch_request::{FetchPartition, FetchRequest, FetchTopic},
    init_producer_id_request::InitProducerIdRequest,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic},
    metadata_request::{MetadataRequest, MetadataRequestTopic},
    produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData},
    ApiKey, BrokerId, RequestHeader, RequestKind, TopicName, TransactionalId,
};
use caudal_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
use caudal_protocol::SUPPORTED_APIS;

/// Turns a fuzz input into a request frame (without the length prefix).
///
/// The first byte chooses how the rest is read:
/// * even: the rest is a raw frame, exactly as a peer would send it;
/// * odd: `byte >> 1` (modulo the table's length) picks an entry of [`SUPPORTED_APIS`], the
///   next byte (modulo the entry's range) picks a served version, and the frame is that API key
///   and version followed by the remaining bytes (correlation id, rest of the header, body). This
///   keeps the fuzzer past the API/version gate and inside every message decoder.
pub fn frame_from_input(data: &[u8]) -> Option<Vec<u8>> {
    let (&mode, rest) = data.split_first()?;
    if mode & 1 == 0 {
        return Some(rest.to_vec());
    }
    let (&version_pick, rest) = rest.split_first()?;
    let (api, min, max) = SUPPORTED_APIS[usize::from(mode >> 1) % SUPPORTED_APIS.len()];
    let span = (max - min + 1) as u16;
    let version = min + (u16::from(version_pick) % span) as i16;
    let mut frame = Vec::with_capacity(4 + rest.len());
    frame.extend_from_slice(&(api as i16).to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(rest);
    Some(frame)
}

/// The fuzz input that [`frame_from_input`] maps to `frame` through the structured (odd) mode.
/// `frame` must be a frame of an API and version in [`SUPPORTED_APIS`].
pub fn structured_input(frame: &[u8]) -> Option<Vec<u8>> {
    let key = i16::from_be_bytes([*frame.first()?, *frame.get(1)?]);
    let version = i16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]);
    let index = SUPPORTED_APIS
        .iter()
        .position(|&(api, _, _)| api as i16 == key)?;
    let (_, min, max) = SUPPORTED_APIS[index];
    if !(min..=max).contains(&version) {
        return None;
    }
    let mut input = vec![(index as u8) << 1 | 1, (version - min) as u8];
    input.extend_from_slice(&frame[4..]);
    Some(input)
}

/// The fuzz input that [`frame_from_input`] maps to `frame` through the raw (even) mode.
pub fn raw_input(frame: &[u8]) -> Vec<u8> {
    let mut input = vec![0];
    input.extend_from_slice(frame);
    input
}

fn name(s: &'static str) -> StrBytes {
    StrBytes::from_static_str(s)
}

#[path = "../../crates/protocol/tests/common/every_api.rs"]
mod every_api;
pub use every_api::default_request;

/// A request of `api` with a little of everything filled in (one topic, one partition, a record
/// batch...), using only fields that every served version carries, so that it encodes at every
/// version in [`SUPPORTED_APIS`] (the encoder refuses fields a version cannot carry). `None` for
/// APIs that have no such request here; their default one is their only seed.
pub fn populated_request(api: ApiKey) -> Option<RequestKind> {
    let topic = || TopicName::from(name("orders"));
    Some(match api {
        ApiKey::Produce => RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(record_batch(
                            &[b"k1".as_slice(), b"value"],
                            1_700_000_000_000,
                            -1,
                        ))))])]),
        ),
        ApiKey::Fetch => RequestKind::Fetch(
            FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic())
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(42)
                        .with_partition_max_bytes(1 << 16)])]),
        ),
        ApiKey::ListOffsets => RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1)])]),
        ),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic())),
            ])))
        }
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(
            CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic())
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
                    .with_assignments(vec![CreatableReplicaAssignment::default()
                        .with_partition_index(0)
                        .with_broker_ids(vec![BrokerId(1)])])
                    .with_configs(vec![CreatableTopicConfig::default()
                        .with_name(name("retention.ms"))
                        .with_value(Some(name("60000")))])]),
        ),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topic_names(vec![topic()]),
        ),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(
            CreatePartitionsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(topic())
                    .with_count(3)
                    .with_assignments(Some(vec![
                        CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1)])
                    ]))]),
        ),
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("orders"))
                    .with_configuration_keys(Some(vec![name("cleanup.policy")])),
            ]))
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId::from(name("txn-1"))))
                .with_transaction_timeout_ms(60_000),
        ),
        _ => return None,
    })
}

/// Encodes a whole request frame (header and body, without the length prefix) the way a client
/// would, or explains why this body cannot be encoded at this version.
pub fn encode_frame(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &RequestKind,
) -> Result<Vec<u8>, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(name("caudal-fuzz")));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, api.request_header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut out, version).map_err(|e| e.to_string())?;
    Ok(out.to_vec())
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A valid uncompressed RecordBatch (magic 2, correct CRC-32C) holding `values`, one record
/// each, with null keys. `producer_id` -1 makes a plain batch; otherwise it is idempotent with
/// epoch 0 and base sequence 0.
pub fn record_batch(values: &[&[u8]], base_timestamp: i64, producer_id: i64) -> Vec<u8> {
    let mut records = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let mut record = vec![0u8]; // attributes
        put_varint(&mut record, i as i64); // timestamp delta
        put_varint(&mut record, i as i64); // offset delta
        put_varint(&mut record, -1); // key: null
        put_varint(&mut record, value.len() as i64);
        record.extend_from_slice(value);
        put_varint(&mut record, 0); // no headers
        put_varint(&mut records, record.len() as i64);
        records.extend_from_slice(&record);
    }
    let count = values.len() as i32;
    let idempotent = producer_id >= 0;
    let mut b = Vec::with_capacity(61 + records.len());
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes()); // batch length
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // CRC, filled in below
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    b.extend_from_slice(&base_timestamp.to_be_bytes());
    b.extend_from_slice(&(base_timestamp + i64::from(count - 1)).to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&(if idempotent { 0i16 } else { -1 }).to_be_bytes());
    b.extend_from_slice(&(if idempotent { 0i32 } else { -1 }).to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}
