//! Properties of `decode_request` on untrusted bytes: it never panics, whatever the frame, and a
//! request encoded the way a client encodes it decodes back to the API and version it names.
//!
//! The fuzz targets in `fuzz/` explore the same decoder for longer; inputs they found that once
//! misbehaved are pinned here as explicit cases.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use caudal_protocol::kafka_protocol::messages::{
    create_topics_request::{CreatableTopic, CreatableTopicConfig, CreateTopicsRequest},
    fetch_request::{FetchPartition, FetchRequest, FetchTopic},
    metadata_request::{MetadataRequest, MetadataRequestTopic},
    produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData},
    ApiKey, RequestHeader, RequestKind, TopicName,
};
use caudal_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
use caudal_protocol::{decode_request, RequestError, SUPPORTED_APIS};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const CORRELATION_ID: i32 = 0x0102_0304;

/// The system allocator, noting the largest single allocation the current thread makes while
/// it is watching (tests run on several threads; each watches only itself).
struct Watch;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if WATCHING.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static WATCH: Watch = Watch;

/// Decodes `frame`, returning the result and the largest single allocation made meanwhile.
fn decode_watched(frame: Vec<u8>) -> (Result<caudal_protocol::Request, RequestError>, usize) {
    let frame = Bytes::from(frame);
    LARGEST.with(|l| l.set(0));
    WATCHING.with(|w| w.set(true));
    let result = decode_request(frame);
    WATCHING.with(|w| w.set(false));
    (result, LARGEST.with(Cell::get))
}

#[path = "common/every_api.rs"]
mod every_api;
use every_api::default_request as default_body;

/// Requests with nested arrays filled in, for the APIs whose bodies nest deepest. Only fields
/// every served version carries are set, so they encode at every version.
fn nested_body(api: ApiKey) -> Option<RequestKind> {
    let topic = || TopicName::from(StrBytes::from_static_str("orders"));
    Some(match api {
        ApiKey::Produce => {
            RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(3)
                        .with_records(Some(Bytes::from_static(&[0u8; 70])))]),
            ]))
        }
        ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default().with_topics(vec![
            FetchTopic::default().with_topic(topic()).with_partitions(vec![
                FetchPartition::default()
                    .with_partition(1)
                    .with_fetch_offset(9),
            ]),
        ])),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic())),
            ])))
        }
        ApiKey::CreateTopics => RequestKind::CreateTopics(
            CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(topic())
                .with_num_partitions(2)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_static_str("1000")))])]),
        ),
        _ => return None,
    })
}

/// A whole request frame (header and body, no length prefix), encoded as a client would.
fn encode_frame(api: ApiKey, version: i16, body: &RequestKind) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(CORRELATION_ID)
        .with_client_id(Some(StrBytes::from_static_str("props")));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, api.request_header_version(version))
        .unwrap_or_else(|e| panic!("{api:?} v{version} header: {e}"));
    body.encode(&mut out, version)
        .unwrap_or_else(|e| panic!("{api:?} v{version} body: {e}"));
    out.to_vec()
}

/// Every served API at every served version: the default request, and the nested one where
/// there is one.
fn valid_frames() -> &'static [(ApiKey, i16, Vec<u8>)] {
    static FRAMES: OnceLock<Vec<(ApiKey, i16, Vec<u8>)>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let mut frames = Vec::new();
        for &(api, min, max) in SUPPORTED_APIS {
            for version in min..=max {
                frames.push((api, version, encode_frame(api, version, &default_body(api))));
                if let Some(body) = nested_body(api) {
                    frames.push((api, version, encode_frame(api, version, &body)));
                }
            }
        }
        frames
    })
}

/// What the broker does with a decode result besides dispatching it: answer or log the error.
fn exercise(frame: Vec<u8>) {
    match decode_request(Bytes::from(frame)) {
        Ok(request) => {
            let _ = format!("{request:?}");
        }
        Err(e) => {
            if let Some(answer) = e.answer() {
                let len = i32::from_be_bytes([answer[0], answer[1], answer[2], answer[3]]);
                assert_eq!(len as usize, answer.len() - 4);
            }
            let _ = e.to_string();
        }
    }
}

#[test]
fn every_default_request_at_every_served_version_decodes_back() {
    let mut checked = 0;
    for (api, version, frame) in valid_frames() {
        let request = decode_request(Bytes::from(frame.clone()))
            .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        assert_eq!(request.api_key, *api);
        assert_eq!(request.version(), *version);
        assert_eq!(request.header.correlation_id, CORRELATION_ID);
        assert_eq!(
            std::mem::discriminant(&request.body),
            std::mem::discriminant(&default_body(*api)),
            "{api:?} v{version} decoded as another message"
        );
        checked += 1;
    }
    let versions: usize = SUPPORTED_APIS
        .iter()
        .map(|&(_, min, max)| (max - min + 1) as usize)
        .sum();
    assert!(checked >= versions);
}

#[test]
fn every_truncation_and_single_byte_overwrite_of_every_valid_request_is_handled() {
    for (_, _, frame) in valid_frames() {
        for len in 0..frame.len() {
            exercise(frame[..len].to_vec());
        }
        for at in 0..frame.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff] {
                let mut bad = frame.clone();
                bad[at] = value;
                exercise(bad);
            }
        }
    }
}

/// A frame from its parts: API key, version, correlation id 1, null client id, then `rest`
/// (which starts with the header's tagged fields for flexible versions).
fn hostile(api: ApiKey, version: i16, rest: &[&[u8]]) -> Vec<u8> {
    let mut frame = (api as i16).to_be_bytes().to_vec();
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&1i32.to_be_bytes());
    frame.extend_from_slice(&[0xff, 0xff]);
    for part in rest {
        frame.extend_from_slice(part);
    }
    frame
}

/// Frames that announce far more than they carry: each must be refused, quickly and without a
/// large allocation (see vendor/kafka-protocol/CAUDAL-PATCH.md).
#[test]
fn frames_announcing_more_than_they_carry_are_refused() {
    let u32_max_varint: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x0f];
    let frames = [
        // Fetch v4: replica id, max wait, min bytes, max bytes, isolation level, then a topics
        // array of i32::MAX entries.
        hostile(
            ApiKey::Fetch,
            4,
            &[&[0xff; 4], &[0; 12], &[0], &i32::MAX.to_be_bytes()],
        ),
        // Metadata v12: no header tags, then a compact topics array of u32::MAX - 1 entries.
        hostile(ApiKey::Metadata, 12, &[&[0], u32_max_varint]),
        // Produce v3: a transactional id of 32767 bytes, one of which is there.
        hostile(ApiKey::Produce, 3, &[&[0x7f, 0xff, b'x']]),
        // Produce v9: null transactional id, acks, timeout, one topic "t", one partition 0,
        // whose records claim 4 GiB.
        hostile(
            ApiKey::Produce,
            9,
            &[
                &[0, 0, 0, 1, 0, 0, 0, 0],
                &[2, 2, b't', 2, 0, 0, 0, 0],
                u32_max_varint,
            ],
        ),
        // ApiVersions v3: a header with u32::MAX tagged fields.
        hostile(ApiKey::ApiVersions, 3, &[u32_max_varint]),
        // CreateTopics v5: one topic whose assignments array claims u32::MAX - 1 entries.
        hostile(
            ApiKey::CreateTopics,
            5,
            &[&[0, 2, 2, b't', 0, 0, 0, 1, 0, 1], u32_max_varint],
        ),
    ];
    for frame in frames {
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        let (result, largest) = decode_watched(frame);
        assert!(largest <= 4096, "{hex}: a {largest}-byte allocation");
        match result {
            Err(RequestError::Malformed { .. }) => {}
            other => panic!("{hex}: expected Malformed, got {other:?}"),
        }
    }
}

/// Found while building the fuzz targets (before the 64 KiB cap in vendor/kafka-protocol): an
/// array length prefix was bounded by the bytes left, but the decoder reserved that many
/// *elements*, each up to 112 bytes, before decoding one. A 1 MiB frame
/// claiming i32::MAX Fetch topics reserved 96 MiB, and a 100 MiB frame (the default
/// socket.request.max.bytes) 9.4 GiB at once, which aborts the broker when the allocation fails.
#[test]
fn a_large_frame_claiming_a_huge_array_reserves_little() {
    // Fetch v4: replica id, max wait, min bytes, max bytes, isolation level, topics i32::MAX,
    // then a first topic whose name length (0xffff: null) is refused.
    let head = hostile(
        ApiKey::Fetch,
        4,
        &[&[0xff; 4], &[0; 12], &[0], &i32::MAX.to_be_bytes()],
    );
    for len in [4096, 1 << 20] {
        let mut frame = head.clone();
        frame.resize(len, 0xff);
        let (result, largest) = decode_watched(frame);
        assert!(result.is_err());
        assert!(
            largest <= 64 * 1024 + len,
            "a {len}-byte frame made a {largest}-byte allocation"
        );
    }
}

/// Found by the `request_decoder` fuzz target (allocation check) against the decoder before the
/// 64 KiB cap, after 2.5 minutes from the seeds; minimised. LeaveGroup v3 with a `members` array
/// of 0x1115 entries and ~1.2 KB of bytes that are not a member: the decoder reserved 1189
/// 120-byte `MemberIdentity` slots (142 680 bytes) for a 1205-byte frame.
#[test]
fn fuzz_leave_group_v3_members_count_reserves_little() {
    let mut frame = hostile(ApiKey::LeaveGroup, 3, &[&[0, 0], &0x1115i32.to_be_bytes()]);
    // The client id is an empty string here, not null, as in the minimised input.
    frame[8..10].copy_from_slice(&[0, 0]);
    frame.resize(1205, 0x80);
    let len = frame.len();
    let (result, largest) = decode_watched(frame);
    assert!(result.is_err());
    assert!(
        largest <= 64 * 1024 + len,
        "a {len}-byte frame made a {largest}-byte allocation"
    );
}

#[test]
fn an_unserved_api_versions_version_is_answered() {
    let e = decode_request(Bytes::from_static(&[0, 18, 0x7f, 0xff, 0, 0, 0, 9]))
        .expect_err("ApiVersions v32767 is not served");
    assert!(matches!(
        e,
        RequestError::UnsupportedVersion {
            correlation_id: 9,
            ..
        }
    ));
    let answer = e.answer().expect("Kafka answers this one");
    assert_eq!(&answer[4..8], &9i32.to_be_bytes());
}

fn served_frame(api_pick: Index, version_pick: u16, rest: &[u8]) -> Vec<u8> {
    let (api, min, max) = SUPPORTED_APIS[api_pick.index(SUPPORTED_APIS.len())];
    let version = min + (version_pick % (max - min + 1) as u16) as i16;
    let mut frame = (api as i16).to_be_bytes().to_vec();
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(rest);
    frame
}

#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut frame: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match *m {
            Mutation::Insert(ref i, b) => {
                let at = i.index(frame.len() + 1);
                frame.insert(at, b);
            }
            _ if frame.is_empty() => {}
            Mutation::Overwrite(ref i, b) => {
                let at = i.index(frame.len());
                frame[at] = b;
            }
            Mutation::Remove(ref i) => {
                frame.remove(i.index(frame.len()));
            }
            Mutation::Truncate(ref i) => frame.truncate(i.index(frame.len())),
        }
    }
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_panic(frame in vec(any::<u8>(), 0..512)) {
        exercise(frame);
    }

    #[test]
    fn random_bodies_of_served_apis_never_panic(
        api in any::<Index>(),
        version in any::<u16>(),
        rest in vec(any::<u8>(), 0..512),
    ) {
        exercise(served_frame(api, version, &rest));
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        pick in any::<Index>(),
        mutations in vec(mutation(), 1..6),
    ) {
        let frames = valid_frames();
        let (_, _, frame) = &frames[pick.index(frames.len())];
        exercise(mutate(frame.clone(), &mutations));
    }

    #[test]
    fn valid_requests_with_bytes_appended_never_panic(
        pick in any::<Index>(),
        tail in vec(any::<u8>(), 1..64),
    ) {
        // Whether bytes after the body are refused or ignored is the codec's policy; either
        // way they must not change which API and version the frame is.
        let frames = valid_frames();
        let (api, version, frame) = &frames[pick.index(frames.len())];
        let mut long = frame.clone();
        long.extend_from_slice(&tail);
        if let Ok(request) = decode_request(Bytes::from(long)) {
            prop_assert_eq!(request.api_key, *api);
            prop_assert_eq!(request.version(), *version);
        }
    }
}
