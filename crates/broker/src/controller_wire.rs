//! Controller requests on the wire, both ways: what a broker sends the active controller's
//! listener and how the answer comes back.
//!
//! Registration, heartbeats, unregistration and producer-id blocks go as themselves; the admin
//! requests a broker forwards (CreateTopics, DeleteTopics, CreatePartitions, ElectLeaders,
//! AlterPartitionReassignments) go inside an
//! Envelope, as Kafka 4's brokers forward them: the inner request with its own header, answered
//! by the inner response with its own header.

use bytes::{BufMut, Bytes, BytesMut};
use caudal_metadata::ControllerRequest;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    AllocateProducerIdsResponse, ApiKey, BrokerHeartbeatResponse, BrokerRegistrationResponse,
    EnvelopeRequest, EnvelopeResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
    UnregisterBrokerResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Why a controller request or answer could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot encode {api:?} v{version}: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("malformed {api:?} v{version} answer from the controller: {reason}")]
    Decode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("the controller answered correlation id {got}, expected {expected}")]
    Correlation { expected: i32, got: i32 },
    #[error("the controller refused the forwarded request with error code {0}")]
    Envelope(i16),
}

/// How a request travels: its own API and version, or inside an Envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The API and version of the frame on the wire.
    pub api: ApiKey,
    pub version: i16,
    /// The API and version of the request inside an Envelope, if forwarded.
    pub inner: Option<(ApiKey, i16)>,
}

/// The Envelope version Caudal sends and serves.
const ENVELOPE_VERSION: i16 = 0;

fn body_of(request: &ControllerRequest) -> (RequestKind, ApiKey, i16, bool) {
    match request.clone() {
        ControllerRequest::CreateTopics(r, v) => {
            (RequestKind::CreateTopics(r), ApiKey::CreateTopics, v, true)
        }
        ControllerRequest::DeleteTopics(r, v) => {
            (RequestKind::DeleteTopics(r), ApiKey::DeleteTopics, v, true)
        }
        ControllerRequest::CreatePartitions(r, v) => (
            RequestKind::CreatePartitions(r),
            ApiKey::CreatePartitions,
            v,
            true,
        ),
        ControllerRequest::ElectLeaders(r, v) => {
            (RequestKind::ElectLeaders(r), ApiKey::ElectLeaders, v, true)
        }
        ControllerRequest::AlterPartitionReassignments(r, v) => (
            RequestKind::AlterPartitionReassignments(r),
            ApiKey::AlterPartitionReassignments,
            v,
            true,
        ),
        ControllerRequest::ListPartitionReassignments(r, v) => (
            RequestKind::ListPartitionReassignments(r),
            ApiKey::ListPartitionReassignments,
            v,
            true,
        ),
        ControllerRequest::RegisterBroker(r, v) => (
            RequestKind::BrokerRegistration(r),
            ApiKey::BrokerRegistration,
            v,
            false,
        ),
        ControllerRequest::Heartbeat(r, v) => (
            RequestKind::BrokerHeartbeat(r),
            ApiKey::BrokerHeartbeat,
            v,
            false,
        ),
        ControllerRequest::UnregisterBroker(r, v) => (
            RequestKind::UnregisterBroker(r),
            ApiKey::UnregisterBroker,
            v,
            false,
        ),
        ControllerRequest::AllocateProducerIds(r, v) => (
            RequestKind::AllocateProducerIds(r),
            ApiKey::AllocateProducerIds,
            v,
            false,
        ),
        ControllerRequest::AlterPartition(r, v) => (
            RequestKind::AlterPartition(r),
            ApiKey::AlterPartition,
            v,
            false,
        ),
    }
}

/// Appends the header and body of a request, without a length prefix.
fn put_request(
    out: &mut BytesMut,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &RequestKind,
) -> Result<(), WireError> {
    let err = |e: &dyn std::fmt::Display| WireError::Encode {
        api,
        version,
        reason: e.to_string(),
    };
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())))
        .encode(out, api.request_header_version(version))
        .map_err(|e| err(&e))?;
    body.encode(out, version).map_err(|e| err(&e))
}

/// A length-prefixed request frame for `request`, and how it travels.
pub fn request_frame(
    request: &ControllerRequest,
    correlation_id: i32,
    client_id: &str,
) -> Result<(Shape, BytesMut), WireError> {
    let (body, api, version, forwarded) = body_of(request);
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let shape = if forwarded {
        let mut inner = BytesMut::with_capacity(256);
        put_request(&mut inner, api, version, correlation_id, client_id, &body)?;
        let envelope = EnvelopeRequest::default()
            .with_request_data(inner.freeze())
            .with_client_host_address(Bytes::new());
        put_request(
            &mut out,
            ApiKey::Envelope,
            ENVELOPE_VERSION,
            correlation_id,
            client_id,
            &RequestKind::Envelope(envelope),
        )?;
        Shape {
            api: ApiKey::Envelope,
            version: ENVELOPE_VERSION,
            inner: Some((api, version)),
        }
    } else {
        put_request(&mut out, api, version, correlation_id, client_id, &body)?;
        Shape {
            api,
            version,
            inner: None,
        }
    };
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok((shape, out))
}

/// A length-prefixed frame of a request sent as itself, not one the controller decides: one the
/// quorum answers (DescribeQuorum).
pub fn direct_request_frame(
    api: ApiKey,
    version: i16,
    body: &RequestKind,
    correlation_id: i32,
    client_id: &str,
) -> Result<BytesMut, WireError> {
    let mut out = BytesMut::with_capacity(128);
    out.put_i32(0);
    put_request(&mut out, api, version, correlation_id, client_id, body)?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads the answer to a request of [`direct_request_frame`].
pub fn read_direct_answer(
    frame: Bytes,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Result<ResponseKind, WireError> {
    decode_response(frame, api, version, correlation_id)
}

/// Decodes a response (header and body, no length prefix) of `api` at `version`.
fn decode_response(
    mut frame: Bytes,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Result<ResponseKind, WireError> {
    let err = |e: &dyn std::fmt::Display| WireError::Decode {
        api,
        version,
        reason: e.to_string(),
    };
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| err(&e))?;
    if header.correlation_id != correlation_id {
        return Err(WireError::Correlation {
            expected: correlation_id,
            got: header.correlation_id,
        });
    }
    ResponseKind::decode(api, &mut frame, version).map_err(|e| err(&e))
}

/// What the controller answered: the response, or NOT_CONTROLLER (it no longer leads). One per
/// call, moved once: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Answer {
    Response(ResponseKind),
    NotController,
}

/// Reads the controller's answer to a request sent as `shape`.
pub fn read_answer(frame: Bytes, shape: Shape, correlation_id: i32) -> Result<Answer, WireError> {
    let outer = decode_response(frame, shape.api, shape.version, correlation_id)?;
    let not_controller = ResponseError::NotController.code();
    let code = match (&outer, shape.inner) {
        (ResponseKind::Envelope(envelope), Some((api, version))) => {
            if envelope.error_code == not_controller {
                return Ok(Answer::NotController);
            }
            if envelope.error_code != 0 {
                return Err(WireError::Envelope(envelope.error_code));
            }
            let data = envelope.response_data.clone().unwrap_or_default();
            return decode_response(data, api, version, correlation_id).map(Answer::Response);
        }
        (ResponseKind::BrokerRegistration(r), _) => r.error_code,
        (ResponseKind::BrokerHeartbeat(r), _) => r.error_code,
        (ResponseKind::UnregisterBroker(r), _) => r.error_code,
        (ResponseKind::AllocateProducerIds(r), _) => r.error_code,
        (ResponseKind::AlterPartition(r), _) => r.error_code,
        _ => 0,
    };
    Ok(if code == not_controller {
        Answer::NotController
    } else {
        Answer::Response(outer)
    })
}

/// A request the controller listener took off the wire, and how to answer it.
#[derive(Debug)]
pub struct Served {
    pub request: ControllerRequest,
    /// Set when the request came inside an Envelope: the inner request's correlation id.
    pub enveloped: Option<i32>,
}

/// Turns a decoded controller-listener request of `api` into what the controller decides, or
/// says why it is not one: an API the controller does not take, or an Envelope whose inner
/// request is unreadable or not one a broker forwards.
pub fn served(api: ApiKey, body: RequestKind, version: i16) -> Result<Served, Refusal> {
    let direct = |request| {
        Ok(Served {
            request,
            enveloped: None,
        })
    };
    match body {
        RequestKind::BrokerRegistration(r) => direct(ControllerRequest::RegisterBroker(r, version)),
        RequestKind::BrokerHeartbeat(r) => direct(ControllerRequest::Heartbeat(r, version)),
        RequestKind::UnregisterBroker(r) => direct(ControllerRequest::UnregisterBroker(r, version)),
        RequestKind::AllocateProducerIds(r) => {
            direct(ControllerRequest::AllocateProducerIds(r, version))
        }
        RequestKind::AlterPartition(r) => direct(ControllerRequest::AlterPartition(r, version)),
        RequestKind::Envelope(envelope) => {
            let inner = caudal_protocol::decode_request(envelope.request_data)
                .map_err(|e| Refusal::Malformed(e.to_string()))?;
            let v = inner.header.request_api_version;
            let request = match inner.body {
                RequestKind::CreateTopics(r) => ControllerRequest::CreateTopics(r, v),
                RequestKind::DeleteTopics(r) => ControllerRequest::DeleteTopics(r, v),
                RequestKind::CreatePartitions(r) => ControllerRequest::CreatePartitions(r, v),
                RequestKind::ElectLeaders(r) => ControllerRequest::ElectLeaders(r, v),
                RequestKind::AlterPartitionReassignments(r) => {
                    ControllerRequest::AlterPartitionReassignments(r, v)
                }
                RequestKind::ListPartitionReassignments(r) => {
                    ControllerRequest::ListPartitionReassignments(r, v)
                }
                _ => return Err(Refusal::NotForwardable(inner.api_key)),
            };
            Ok(Served {
                request,
                enveloped: Some(inner.header.correlation_id),
            })
        }
        _ => Err(Refusal::NotAControllerApi(api)),
    }
}

/// Why a controller-listener request is not decided.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("an Envelope whose request cannot be read: {0}")]
    Malformed(String),
    #[error("an Envelope carrying {0:?}, which brokers do not forward")]
    NotForwardable(ApiKey),
    #[error("{0:?} is not a request the controller decides")]
    NotAControllerApi(ApiKey),
}

/// The API and version of `request`'s answer.
pub fn response_api(request: &ControllerRequest) -> (ApiKey, i16) {
    let (_, api, version, _) = body_of(request);
    (api, version)
}

/// The answer to `request` from a controller that does not lead: NOT_CONTROLLER where the
/// response has a top-level error code (forwarded requests are answered by the Envelope).
pub fn not_controller(request: &ControllerRequest) -> Option<ResponseKind> {
    let code = ResponseError::NotController.code();
    Some(match request {
        ControllerRequest::RegisterBroker(..) => ResponseKind::BrokerRegistration(
            BrokerRegistrationResponse::default().with_error_code(code),
        ),
        ControllerRequest::Heartbeat(..) => ResponseKind::BrokerHeartbeat(
            BrokerHeartbeatResponse::default()
                .with_error_code(code)
                .with_is_fenced(true),
        ),
        ControllerRequest::UnregisterBroker(..) => ResponseKind::UnregisterBroker(
            UnregisterBrokerResponse::default().with_error_code(code),
        ),
        ControllerRequest::AllocateProducerIds(..) => ResponseKind::AllocateProducerIds(
            AllocateProducerIdsResponse::default().with_error_code(code),
        ),
        ControllerRequest::AlterPartition(..) => ResponseKind::AlterPartition(
            kafka_protocol::messages::AlterPartitionResponse::default().with_error_code(code),
        ),
        _ => return None,
    })
}

/// The Envelope answering a forwarded request: the inner response with its header, or an error.
pub fn envelope_answer(
    inner: Result<(ApiKey, i16, i32, &ResponseKind), i16>,
) -> Result<ResponseKind, WireError> {
    let envelope = match inner {
        Ok((api, version, correlation_id, body)) => {
            let mut data = BytesMut::with_capacity(256);
            caudal_protocol::encode_response(&mut data, api, version, correlation_id, body)
                .map_err(|e| WireError::Encode {
                    api,
                    version,
                    reason: e.to_string(),
                })?;
            // `encode_response` writes a framed response; the Envelope carries it unframed.
            EnvelopeResponse::default().with_response_data(Some(data.freeze().slice(4..)))
        }
        Err(code) => EnvelopeResponse::default().with_error_code(code),
    };
    Ok(ResponseKind::Envelope(envelope))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    use kafka_protocol::messages::{
        BrokerHeartbeatRequest, BrokerId, CreateTopicsRequest, CreateTopicsResponse, TopicName,
    };

    use super::*;

    /// The controller side of a frame: decode it as the listener does.
    fn take(frame: BytesMut) -> (i32, Served) {
        let request = caudal_protocol::decode_request(frame.freeze().slice(4..)).expect("decodes");
        let corr = request.header.correlation_id;
        let version = request.header.request_api_version;
        (
            corr,
            served(request.api_key, request.body, version).expect("a controller request"),
        )
    }

    #[test]
    fn a_heartbeat_goes_as_itself_and_its_answer_comes_back() {
        let request = ControllerRequest::Heartbeat(
            BrokerHeartbeatRequest::default()
                .with_broker_id(BrokerId(2))
                .with_broker_epoch(9),
            1,
        );
        let (shape, frame) = request_frame(&request, 17, "caudal-broker-2").expect("encodes");
        assert_eq!(shape.api, ApiKey::BrokerHeartbeat);
        assert_eq!(shape.inner, None);
        let (corr, served) = take(frame);
        assert_eq!(corr, 17);
        assert!(served.enveloped.is_none());
        let ControllerRequest::Heartbeat(r, 1) = &served.request else {
            panic!("not a heartbeat v1: {:?}", served.request)
        };
        assert_eq!((r.broker_id, r.broker_epoch), (BrokerId(2), 9));

        let answer = ResponseKind::BrokerHeartbeat(
            BrokerHeartbeatResponse::default().with_is_caught_up(true),
        );
        let mut out = BytesMut::new();
        caudal_protocol::encode_response(&mut out, shape.api, shape.version, corr, &answer)
            .expect("encodes");
        match read_answer(out.freeze().slice(4..), shape, 17).expect("reads") {
            Answer::Response(ResponseKind::BrokerHeartbeat(r)) => assert!(r.is_caught_up),
            other => panic!("{other:?}"),
        }
        // NOT_CONTROLLER is told apart from an answer.
        let refused = not_controller(&served.request).expect("a top-level code");
        let mut out = BytesMut::new();
        caudal_protocol::encode_response(&mut out, shape.api, shape.version, corr, &refused)
            .expect("encodes");
        assert!(matches!(
            read_answer(out.freeze().slice(4..), shape, 17),
            Ok(Answer::NotController)
        ));
        // An answer to another request is an error, never taken for this one's.
        let mut out = BytesMut::new();
        caudal_protocol::encode_response(&mut out, shape.api, shape.version, 18, &answer)
            .expect("encodes");
        assert!(matches!(
            read_answer(out.freeze().slice(4..), shape, 17),
            Err(WireError::Correlation {
                expected: 17,
                got: 18
            })
        ));
    }

    #[test]
    fn create_topics_is_forwarded_in_an_envelope_and_answered_inside_one() {
        let request = ControllerRequest::CreateTopics(
            CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_num_partitions(3)
                .with_replication_factor(1)]),
            7,
        );
        let (shape, frame) = request_frame(&request, 5, "caudal-broker-1").expect("encodes");
        assert_eq!(shape.api, ApiKey::Envelope);
        assert_eq!(shape.inner, Some((ApiKey::CreateTopics, 7)));
        let (corr, served) = take(frame);
        assert_eq!(served.enveloped, Some(5));
        let ControllerRequest::CreateTopics(r, 7) = &served.request else {
            panic!("not CreateTopics v7: {:?}", served.request)
        };
        assert_eq!(r.topics[0].name.0.as_str(), "orders");

        let inner = ResponseKind::CreateTopics(CreateTopicsResponse::default().with_topics(vec![
            CreatableTopicResult::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_num_partitions(3),
        ]));
        let envelope = envelope_answer(Ok((ApiKey::CreateTopics, 7, 5, &inner))).expect("encodes");
        let mut out = BytesMut::new();
        caudal_protocol::encode_response(&mut out, shape.api, shape.version, corr, &envelope)
            .expect("encodes");
        match read_answer(out.freeze().slice(4..), shape, 5).expect("reads") {
            Answer::Response(ResponseKind::CreateTopics(r)) => {
                assert_eq!(r.topics[0].num_partitions, 3)
            }
            other => panic!("{other:?}"),
        }
        let refused = envelope_answer(Err(ResponseError::NotController.code())).expect("encodes");
        let mut out = BytesMut::new();
        caudal_protocol::encode_response(&mut out, shape.api, shape.version, corr, &refused)
            .expect("encodes");
        assert!(matches!(
            read_answer(out.freeze().slice(4..), shape, 5),
            Ok(Answer::NotController)
        ));
    }

    #[test]
    fn an_envelope_carrying_a_produce_is_refused() {
        let mut inner = BytesMut::new();
        put_request(
            &mut inner,
            ApiKey::Produce,
            9,
            1,
            "x",
            &RequestKind::Produce(Default::default()),
        )
        .expect("encodes");
        let body =
            RequestKind::Envelope(EnvelopeRequest::default().with_request_data(inner.freeze()));
        assert!(matches!(
            served(ApiKey::Envelope, body, 0),
            Err(Refusal::NotForwardable(ApiKey::Produce))
        ));
        let garbage = RequestKind::Envelope(
            EnvelopeRequest::default().with_request_data(Bytes::from_static(b"\x00\x01")),
        );
        assert!(matches!(
            served(ApiKey::Envelope, garbage, 0),
            Err(Refusal::Malformed(_))
        ));
    }
}
