//! The agent's HTTP endpoints: `/metrics`, `/api/v1/processes`, `/healthz`.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use crate::{metrics, shared::Shared};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: address already in use (is another leakscope running?)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            HttpError::InUse { addr }
        } else {
            HttpError::Bind { addr, source }
        }
    })
}

pub fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/processes", get(processes_handler))
        .route("/api/v1/pools", get(pools_handler))
        .route("/api/v1/oom", get(oom_handler))
        .route("/api/v1/tasks", get(crate::tasks::api::handler))
        .route(
            "/debug/pprof/growth",
            get(crate::investigate::endpoint::growth_handler),
        )
        .route("/healthz", get(health_handler))
        .route("/", get(index_handler))
        .with_state(state)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

async fn metrics_handler(State(state): State<Arc<Shared>>) -> Response {
    let rendered = metrics::render(&state.current());
    match rendered {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ProcessQuery {
    pid: Option<u32>,
}

async fn processes_handler(
    State(state): State<Arc<Shared>>,
    Query(q): Query<ProcessQuery>,
) -> Response {
    let state = state.current();
    let export = state.export();
    let own: std::collections::HashSet<u32> = export.own.iter().map(|p| p.pid).collect();
    let mut list: Vec<_> = state
        .table
        .iter()
        .filter(|p| p.selected == Some(true))
        .filter(|p| q.pid.is_none_or(|pid| pid == p.pid))
        .map(|p| state.process_json(p, own.contains(&p.pid)))
        .collect();
    list.sort_by_key(|p| std::cmp::Reverse(p.resident_bytes));
    Json(serde_json::json!({
        "processes": list,
        "overflow": export.overflow,
    }))
    .into_response()
}

async fn pools_handler(State(state): State<Arc<Shared>>) -> Response {
    let state = state.current();
    let pools: Vec<_> = state
        .pools
        .iter()
        .map(|pool| {
            let mut pool = pool.clone();
            pool.children = state
                .table
                .iter()
                .filter(|p| p.ppid == pool.parent_pid && p.comm == pool.comm)
                .count();
            pool
        })
        .collect();
    Json(serde_json::json!({
        "pools": pools,
        "overflow_recycles": state.pools.overflow_recycles,
    }))
    .into_response()
}

async fn oom_handler(State(state): State<Arc<Shared>>) -> Response {
    let state = state.current();
    Json(serde_json::json!({ "oom_kills": state.ooms.recent })).into_response()
}

async fn health_handler(State(state): State<Arc<Shared>>) -> Response {
    let health = state.current().health();
    let body = if health.degraded {
        format!("degraded: {}\n", health.reasons.join("; "))
    } else {
        "ok\n".to_string()
    };
    // 200 either way: a degraded agent still serves what it can and must not be restarted.
    (StatusCode::OK, body).into_response()
}

async fn index_handler() -> &'static str {
    "leakscope agent: /metrics /api/v1/processes /api/v1/pools /api/v1/oom /api/v1/tasks /healthz\n"
}
