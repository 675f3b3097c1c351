use caudal_protocol::codec::api_versions_keys;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, ResponseKind};

pub fn handle(_request: ApiVersionsRequest, _version: i16) -> ResponseKind {
    ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(0)
            .with_api_keys(api_versions_keys())
            .with_finalized_features_epoch(-1),
    )
}
