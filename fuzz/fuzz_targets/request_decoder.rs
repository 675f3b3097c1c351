//! Request frames from an untrusted peer: `decode_request` must never panic nor allocate beyond
//! what the frame's size justifies, and whatever it returns must be usable (the error's answer,
//! its message, the request's Debug form as the broker logs them).
//!
//! "Never allocates wildly" is checked too: while `decode_request` runs, no single allocation
//! may exceed [`allocation_limit`] for the frame's length.
//!
//! Input layout: see `caudal_fuzz::frame_from_input` (first byte even: raw frame; odd: API and
//! version picked from `SUPPORTED_APIS`, so every message decoder is reached).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use caudal_protocol::{decode_request, supported_range, RequestError};
use libfuzzer_sys::fuzz_target;

/// The system allocator, noting the largest single allocation made while armed.
struct Watch;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Relaxed) {
            LARGEST.fetch_max(layout.size(), Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Relaxed) {
            LARGEST.fetch_max(layout.size(), Relaxed);
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Relaxed) {
            LARGEST.fetch_max(new_size, Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static WATCH: Watch = Watch;

/// The largest single allocation decoding a frame of `len` bytes may make: what an array
/// decoder reserves up front (at most 64 KiB, see vendor/kafka-protocol/CAUDAL-PATCH.md), or a
/// vector of elements that really are in the frame, at up to twice its length (growth by
/// doubling) times the memory/wire size ratio of the most expansive element (32: a 96-byte
/// struct from 3 wire bytes, e.g. an empty FetchTopic v12).
fn allocation_limit(len: usize) -> usize {
    (64 * 1024).max(64 * len)
}

fuzz_target!(|data: &[u8]| {
    let Some(frame) = caudal_fuzz::frame_from_input(data) else {
        return;
    };
    let (key, version) = match frame.as_slice() {
        [k0, k1, v0, v1, ..] => (
            i16::from_be_bytes([*k0, *k1]),
            i16::from_be_bytes([*v0, *v1]),
        ),
        _ => (-1, -1),
    };
    let len = frame.len();
    let frame = Bytes::from(frame);
    LARGEST.store(0, Relaxed);
    ARMED.store(true, Relaxed);
    let decoded = decode_request(frame);
    ARMED.store(false, Relaxed);
    let largest = LARGEST.load(Relaxed);
    assert!(
        largest <= allocation_limit(len),
        "decoding a {len}-byte frame made a {largest}-byte allocation"
    );
    match decoded {
        Ok(request) => {
            // Only served APIs and versions get through, and they are the ones the frame named.
            assert_eq!(request.api_key as i16, key);
            assert_eq!(request.version(), version);
            assert_eq!(request.header.request_api_key, key);
            let range =
                supported_range(request.api_key).expect("decoded an API that is not served");
            assert!(range.min <= version && version <= range.max);
            std::hint::black_box(format!("{request:?}"));
        }
        Err(error) => {
            let answer = error.answer();
            if let RequestError::UnsupportedVersion { api_key, .. } = &error {
                assert_eq!(
                    answer.is_some(),
                    *api_key == caudal_protocol::kafka_protocol::messages::ApiKey::ApiVersions
                );
            }
            if let Some(answer) = answer {
                // A length-prefixed frame whose prefix matches its size.
                assert!(answer.len() >= 8);
                let len = i32::from_be_bytes([answer[0], answer[1], answer[2], answer[3]]);
                assert_eq!(len as usize, answer.len() - 4);
            }
            std::hint::black_box(error.to_string());
        }
    }
});
