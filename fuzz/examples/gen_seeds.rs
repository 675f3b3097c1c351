//! Writes the seed corpora into `fuzz/seeds/<target>/`: valid request frames for every API and
//! version Caudal serves, and valid RecordBatches. Run from `fuzz/`:
//! `cargo run --example gen_seeds`. The output is deterministic; re-running rewrites the same
//! files.

use std::fs;
use std::path::Path;

use caudal_fuzz::{
    default_request, encode_frame, populated_request, raw_input, record_batch, structured_input,
};
use caudal_protocol::{decode_request, SUPPORTED_APIS};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("writing {name}: {e}"));
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let requests = root.join("request_decoder");
    let batches = root.join("batch_validator");
    for dir in [&requests, &batches] {
        if dir.exists() {
            fs::remove_dir_all(dir).expect("clearing old seeds");
        }
        fs::create_dir_all(dir).expect("creating the seed directory");
    }

    let mut count = 0;
    for &(api, min, max) in SUPPORTED_APIS {
        for version in min..=max {
            let mut previous: Option<Vec<u8>> = None;
            for (kind, body) in [
                ("default", Some(default_request(api))),
                ("populated", populated_request(api)),
            ] {
                let Some(body) = body else {
                    continue; // no populated request for this API: its default will do
                };
                let frame = encode_frame(api, version, 7, &body)
                    .unwrap_or_else(|e| panic!("{api:?} v{version} {kind}: {e}"));
                // A seed the broker would reject is no seed: check it decodes.
                if let Err(e) = decode_request(frame.clone().into()) {
                    panic!("{api:?} v{version} {kind} does not decode: {e}");
                }
                if previous.as_ref() == Some(&frame) {
                    continue; // the populated request is the default one for this API
                }
                previous = Some(frame.clone());
                let stem = format!("{api:?}-v{version}-{kind}");
                let structured = structured_input(&frame).expect("a served API and version");
                write(&requests, &stem, &structured);
                count += 1;
                if version == max {
                    write(&requests, &format!("{stem}-raw"), &raw_input(&frame));
                    count += 1;
                }
            }
        }
    }
    println!("{count} request seeds in {}", requests.display());

    let plain = record_batch(&[b"a", b"bc", b"def"], 1_700_000_000_000, -1);
    let idempotent = record_batch(&[b"x"], 1_700_000_000_000, 4242);
    let mut compressed = record_batch(&[b"z"], 0, -1);
    compressed[22] |= 1; // gzip attribute; the CRC is now stale, so fix it
    let crc = crc32c::crc32c(&compressed[21..]);
    compressed[17..21].copy_from_slice(&crc.to_be_bytes());
    let mut retried = idempotent.clone();
    retried.extend_from_slice(&idempotent);
    let mut run = plain.clone();
    run.extend_from_slice(&idempotent);
    run.extend_from_slice(&plain[..40]);
    for (name, bytes) in [
        ("plain-3-records", &plain),
        ("idempotent", &idempotent),
        ("compressed-attribute", &compressed),
        ("idempotent-retried", &retried),
        ("two-batches-and-a-torn-one", &run),
    ] {
        write(&batches, name, bytes);
    }
    println!("5 batch seeds in {}", batches.display());
}
