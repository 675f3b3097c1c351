use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseKind};

use crate::routes::{self, ListenerKind};

/// The APIs served on the listener the request came in on, as Kafka answers per listener.
pub fn handle(_request: ApiVersionsRequest, _version: i16, kind: ListenerKind) -> ResponseKind {
    ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(0)
            .with_api_keys(routes::api_versions(kind))
            .with_finalized_features_epoch(-1),
    )
}
