//! Kafka wire framing for Caudal: request decoding, response encoding, and the table of APIs
//! (with version ranges) that the broker serves.
//!
//! Message structs come from the `kafka-protocol` crate, generated from Kafka's own message
//! schemas; this crate adds the framing around them and knows nothing of storage.

pub mod api;
pub mod codec;

pub use api::{supported_range, SUPPORTED_APIS};
pub use codec::{
    decode_request, encode_response, unsupported_api_versions_response, Request, RequestError,
};
/// The generated message structs, re-exported so every crate uses one version of them.
pub use kafka_protocol;
