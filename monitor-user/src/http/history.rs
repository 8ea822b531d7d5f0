//! `/api/v1/processes/{pid}/history`: the RSS history the detector keeps for a process, so an
//! incident can be graphed from the agent itself (no Prometheus needed on the host).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};

use crate::model::shared::Shared;

/// The history of a selected process; 404 for a pid the agent does not know or does not
/// watch (`--match`), as `/api/v1/processes?pid=` shows neither.
pub async fn handler(State(state): State<Arc<Shared>>, Path(pid): Path<u32>) -> Response {
    let state = state.current();
    match state.table.get(pid).filter(|p| p.selected == Some(true)) {
        Some(p) => Json(crate::wire::history(&state, p)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no selected process {pid} (see --match)\n"),
        )
            .into_response(),
    }
}
