use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, ResponseKind};

use crate::coordinator_runtime::wait_committed;
use crate::{now_ms, Broker};

pub async fn handle(broker: &Arc<Broker>, request: DeleteGroupsRequest) -> ResponseKind {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for id in request.groups_names {
        let now = now_ms();
        let ran = broker.groups.run(id.0.as_str(), now, |c| {
            match c.delete_group(id.0.as_str()) {
                Ok(effects) => (0, effects),
                Err(code) => (code, Vec::new()),
            }
        });
        let (error, wait) = ran.unwrap_or_else(|e| (e.code(), None));
        let error = match wait_committed(wait, broker.config.offsets_commit_timeout()).await {
            Ok(()) => error,
            Err(e) => e.code(),
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(error),
        );
    }
    ResponseKind::DeleteGroups(DeleteGroupsResponse::default().with_results(results))
}
