//! Request and response framing: a request frame (without its 4-byte length prefix) in, a decoded
//! header and body out; a response body in, a length-prefixed frame out.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api::{supported_range, SUPPORTED_APIS};

/// Kafka's UNSUPPORTED_VERSION error code.
const UNSUPPORTED_VERSION: i16 = 35;

/// A decoded request: its header and its body.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: RequestKind,
}

impl Request {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

/// Why a request frame could not be turned into a [`Request`].
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request frame of {len} bytes is shorter than a request header")]
    TooShort { len: usize },
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApi { api_key: i16, correlation_id: i32 },
    #[error("{api_key:?} v{version} is not supported (correlation id {correlation_id})")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        reason: String,
    },
}

impl RequestError {
    /// The answer Kafka gives to this error, if it gives one rather than closing the connection:
    /// an ApiVersions request of a version we do not know gets a v0 response carrying
    /// UNSUPPORTED_VERSION and our ranges, so the client can retry at a version we serve.
    pub fn answer(&self) -> Option<BytesMut> {
        self.answer_listing(api_versions_keys)
    }

    /// [`answer`](Self::answer), listing the APIs `keys` gives rather than every API decoded:
    /// a broker answers with the APIs of the listener the request came in on.
    pub fn answer_listing(&self, keys: impl FnOnce() -> Vec<ApiVersion>) -> Option<BytesMut> {
        match *self {
            RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                correlation_id,
                ..
            } => Some(api_versions_fallback(correlation_id, keys())),
            _ => None,
        }
    }
}

/// Decodes one request frame (the bytes after the length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Request, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::TooShort { len: frame.len() });
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| RequestError::UnknownApi {
        api_key: raw_key,
        correlation_id,
    })?;
    let served = supported_range(api_key).ok_or(RequestError::UnknownApi {
        api_key: raw_key,
        correlation_id,
    })?;
    if version < served.min || version > served.max {
        return Err(RequestError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        });
    }
    let malformed = |reason: String| RequestError::Malformed {
        api_key,
        version,
        correlation_id,
        reason,
    };
    let header_version = api_key.request_header_version(version);
    let header =
        RequestHeader::decode(&mut frame, header_version).map_err(|e| malformed(e.to_string()))?;
    let body =
        RequestKind::decode(api_key, &mut frame, version).map_err(|e| malformed(e.to_string()))?;
    // Bytes after the body are ignored, as Apache Kafka does: librdkafka 2.16 sends an
    // all-topics Metadata v12 request with three bytes more than the schema reads.
    Ok(Request {
        api_key,
        header,
        body,
    })
}

/// Why a response could not be encoded. This is a broker bug (a field that the chosen version
/// cannot carry), never a peer's fault.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {api_key:?} v{version} response: {reason}")]
pub struct EncodeError {
    pub api_key: ApiKey,
    pub version: i16,
    pub reason: String,
}

/// Appends a length-prefixed response frame for `body` to `out`.
pub fn encode_response(
    out: &mut BytesMut,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<(), EncodeError> {
    let err = |e: &dyn std::fmt::Display| EncodeError {
        api_key,
        version,
        reason: e.to_string(),
    };
    let start = out.len();
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(out, api_key.response_header_version(version))
        .map_err(|e| err(&e))?;
    body.encode(out, version).map_err(|e| err(&e))?;
    let len = out.len() - start - 4;
    let len = i32::try_from(len).map_err(|_| EncodeError {
        api_key,
        version,
        reason: format!("response of {len} bytes does not fit a frame"),
    })?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Every API decoded, as an ApiVersions response lists them.
pub fn api_versions_keys() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// The v0 ApiVersions response with UNSUPPORTED_VERSION that Kafka sends when a client asks for an
/// ApiVersions version the broker does not know (KIP-511).
pub fn unsupported_api_versions_response(correlation_id: i32) -> BytesMut {
    api_versions_fallback(correlation_id, api_versions_keys())
}

/// The v0 ApiVersions response with UNSUPPORTED_VERSION, listing `keys`.
fn api_versions_fallback(correlation_id: i32, keys: Vec<ApiVersion>) -> BytesMut {
    let body = ApiVersionsResponse::default()
        .with_error_code(UNSUPPORTED_VERSION)
        .with_api_keys(keys);
    let mut out = BytesMut::with_capacity(256);
    // Version 0 of the response can carry everything set above, so encoding cannot fail.
    if encode_response(
        &mut out,
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(body),
    )
    .is_err()
    {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(hex: &str) -> Bytes {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn librdkafka_metadata_v12_with_trailing_bytes_is_accepted_as_all_topics() {
        // Captured from confluent-kafka 2.16.1 (librdkafka 2.16) listing all topics.
        let frame = unhex("0003000c00000004000772646b61666b610000000000010000");
        let r = decode_request(frame).unwrap();
        assert_eq!(r.api_key, ApiKey::Metadata);
        assert_eq!(r.header.correlation_id, 4);
        let RequestKind::Metadata(m) = r.body else {
            panic!("not metadata")
        };
        assert_eq!(m.topics, None, "null topics means every topic");
    }

    #[test]
    fn unknown_apis_and_versions_are_refused_with_the_correlation_id() {
        let e = decode_request(unhex("7fff000000000009")).unwrap_err();
        assert!(matches!(
            e,
            RequestError::UnknownApi {
                api_key: 0x7fff,
                correlation_id: 9
            }
        ));
        let e = decode_request(unhex("0000006300000009")).unwrap_err();
        assert!(matches!(
            e,
            RequestError::UnsupportedVersion {
                api_key: ApiKey::Produce,
                version: 99,
                correlation_id: 9
            }
        ));
        assert!(e.answer().is_none(), "only ApiVersions gets an answer");
        let e = decode_request(unhex("0012006300000009")).unwrap_err();
        assert!(e.answer().is_some());
        assert!(matches!(
            decode_request(unhex("0012")),
            Err(RequestError::TooShort { len: 2 })
        ));
    }
}
