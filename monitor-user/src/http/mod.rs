//! The agent's HTTP endpoints: `/metrics`, `/healthz`, the process API (`/api/v1/*`) and,
//! with `--enable-profiling`, `/debug/pprof/growth`.
//!
//! Who may reach what: `/metrics` and `/healthz` are for the network (Prometheus, kubelet).
//! The process API is served to loopback peers, and to the network only with `--expose-api`.
//! Profiles disclose every tenant's code paths: they go to web-config `profiling_users`, or to
//! a local user asking about their own processes (root about any), never to an anonymous
//! network peer. Credentials, when configured, are checked before any of this (`web`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{ConnectInfo, FromRef, Query, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use leakscope_api::{
    ExitedProcess, ExitsResponse, OomResponse, Overflow, PoolsResponse, ProcessesResponse, paths,
};
use serde::Deserialize;

use crate::{investigate::profiler::Profiler, metrics, model::shared::Shared};

pub mod history;
pub mod profile;
pub mod web;

/// Growth sampling, shared by the profile endpoint and the agent's interval loop.
pub type SharedProfiler = Arc<tokio::sync::Mutex<Profiler>>;

/// What the handlers read: the agent's state, and growth sampling when it is available.
#[derive(Clone)]
pub struct App {
    pub shared: Arc<Shared>,
    pub profiler: Option<SharedProfiler>,
}

impl FromRef<App> for Arc<Shared> {
    fn from_ref(app: &App) -> Self {
        app.shared.clone()
    }
}

/// What the agent serves beyond `/metrics` and `/healthz`, as its flags say.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    /// `--expose-api`: the process API to non-loopback peers too.
    pub expose_api: bool,
    /// `--enable-profiling`.
    pub profiling: bool,
    /// Basic auth is on: the credentials layer has already admitted the request (and, for
    /// profiles, checked that its user is in `profiling_users`).
    pub credentials: bool,
}

/// On what grounds a profile request was let through, for the handler's last check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileAccess {
    /// A user named in `profiling_users`.
    Credentials,
    /// A process of this uid on this host's loopback, without credentials.
    LocalUser(u32),
}

const API_PREFIX: &str = "/api/";
const PROFILE_PREFIX: &str = "/debug/pprof/";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: address already in use (is another leakscope running?)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            HttpError::InUse { addr }
        } else {
            HttpError::Bind {
                addr,
                cause: source,
            }
        }
    })
}

pub fn router(app: App, access: Access) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route(paths::PROCESSES, get(processes_handler))
        .route(paths::PROCESS_HISTORY, get(history::handler))
        .route(paths::POOLS, get(pools_handler))
        .route(paths::OOM, get(oom_handler))
        .route(paths::EXITS, get(exits_handler))
        .route(paths::TASKS, get(crate::tasks::api::handler))
        .route(paths::HOST, get(host_handler))
        .route("/debug/pprof/growth", get(profile::growth_handler))
        .route("/healthz", get(health_handler))
        .route("/", get(index_handler))
        .layer(axum::middleware::from_fn_with_state(access, gate))
        .with_state(app)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// Applies [`Access`] to the request's path and peer (see the module documentation).
async fn gate(State(access): State<Access>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    // No peer address is not a loopback peer: refuse rather than guess.
    let loopback = peer.is_some_and(|p| is_loopback(p.ip()));
    if path.starts_with(API_PREFIX) && !loopback && !access.expose_api {
        return refuse(
            StatusCode::FORBIDDEN,
            "the process API is served on loopback only; start the agent with --expose-api \
             to serve it to the network (with basic auth: see README, Security)",
        );
    }
    if path.starts_with(PROFILE_PREFIX) {
        if !access.profiling {
            return refuse(
                StatusCode::NOT_FOUND,
                "profiling is off: start the agent with --enable-profiling (see README, Security)",
            );
        }
        // With credentials on, the credentials layer named the user (and checked it against
        // profiling_users); a request that reached here without one is refused, not trusted.
        let granted = if access.credentials {
            if req
                .extensions()
                .get::<crate::http::web::AuthenticatedUser>()
                .is_none()
            {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "profiles need a web-config user listed under profiling_users",
                );
            }
            ProfileAccess::Credentials
        } else {
            let Some(peer) = peer.filter(|_| loopback) else {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "profiles are served to network peers only with credentials: name the \
                     user under profiling_users in --web-config-file",
                );
            };
            match tokio::task::spawn_blocking(move || crate::host::peer::loopback_uid(peer)).await {
                Ok(Ok(uid)) => ProfileAccess::LocalUser(uid),
                Ok(Err(e)) => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        &format!("cannot tell which local user is asking: {e}"),
                    );
                }
                Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        };
        req.extensions_mut().insert(granted);
    }
    next.run(req).await
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Fresh kernel numbers for a scrape, read off the async workers (a walk over every task).
async fn refresh(state: &Arc<Shared>) {
    let shared = state.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || shared.refresh()).await {
        log::warn!("refresh before a scrape failed: {e}");
    }
}

async fn metrics_handler(State(state): State<Arc<Shared>>) -> Response {
    refresh(&state).await;
    let rendered = metrics::render(&state.current(), web::metric_families());
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

/// Processes with series of their own (the same `--max-processes` cap and overflow rule as
/// `/metrics`, so a host with thousands of processes cannot make a response of megabytes),
/// or any selected process by `?pid=`.
async fn processes_handler(
    State(state): State<Arc<Shared>>,
    Query(q): Query<ProcessQuery>,
) -> Response {
    refresh(&state).await;
    let state = state.current();
    let export = state.export();
    let own: std::collections::HashSet<u32> = export.own.iter().map(|p| p.pid).collect();
    let mut list: Vec<_> = state
        .table
        .iter()
        .filter(|p| p.selected == Some(true))
        .filter(|p| match q.pid {
            Some(pid) => pid == p.pid,
            None => own.contains(&p.pid),
        })
        .map(|p| crate::wire::process(&state, p, own.contains(&p.pid)))
        .collect();
    list.sort_by_key(|p| std::cmp::Reverse(p.resident_bytes));
    Json(ProcessesResponse {
        processes: list,
        overflow: Overflow {
            processes: export.overflow.processes as u64,
            rss: export.overflow.rss,
        },
    })
    .into_response()
}

async fn pools_handler(State(state): State<Arc<Shared>>) -> Response {
    let state = state.current();
    let pools = state.pools.iter().map(leakscope_api::Pool::from).collect();
    Json(PoolsResponse {
        pools,
        overflow_recycles: state.pools.overflow_recycles,
        overflow_pools: state.pools.overflow_pools,
    })
    .into_response()
}

async fn oom_handler(State(state): State<Arc<Shared>>) -> Response {
    let state = state.current();
    Json(OomResponse {
        oom_kills: state.ooms.recent.iter().map(Into::into).collect(),
    })
    .into_response()
}

/// The host's memory, read at the request (one small file, no state kept).
async fn host_handler() -> Response {
    match tokio::task::spawn_blocking(crate::host::memory::read).await {
        Ok(Ok(host)) => Json(host).into_response(),
        Ok(Err(e)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn exits_handler(State(state): State<Arc<Shared>>) -> Response {
    let state = state.current();
    Json(ExitsResponse {
        exits: state
            .exits
            .iter()
            .filter(|e| state.selector.selects(&ExitCandidate(e)))
            .map(|e| ExitedProcess {
                pid: e.pid,
                ppid: e.ppid,
                comm: e.comm.clone(),
                exit_code: e.exit_code,
                resident_bytes: e.resident_bytes,
                peak_rss_bytes: e.peak_bytes,
                lifetime_seconds: (e.lifetime_ns > 0).then(|| e.lifetime_ns as f64 / 1e9),
            })
            .collect(),
    })
    .into_response()
}

/// An exited process as `--match` sees it: its pid and name only (its command line and cgroup
/// are gone with it, and the pid may already be someone else's).
struct ExitCandidate<'a>(&'a crate::model::table::Exited);

impl crate::model::select::Candidate for ExitCandidate<'_> {
    fn pid(&self) -> u32 {
        self.0.pid
    }
    fn comm(&self) -> &str {
        &self.0.comm
    }
    fn cmdline(&self) -> Option<String> {
        None
    }
    fn cgroup_path(&self) -> Option<String> {
        None
    }
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
    "leakscope agent: /metrics /api/v1/processes /api/v1/processes/{pid}/history /api/v1/pools /api/v1/oom /api/v1/exits /api/v1/tasks /api/v1/host /healthz\n"
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    use super::*;
    use crate::model::state::{AgentState, Settings};

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(AgentState::new(Settings::default()), None))
    }

    async fn status(access: Access, peer: &str, path: &str) -> (StatusCode, String) {
        status_of(shared(), access, peer, path).await
    }

    async fn status_of(
        shared: Arc<Shared>,
        access: Access,
        peer: &str,
        path: &str,
    ) -> (StatusCode, String) {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let resp = router(
            App {
                shared,
                profiler: None,
            },
            access,
        )
        .oneshot(req)
        .await
        .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const NETWORK: &str = "192.0.2.7:40000";
    const LOCAL: &str = "127.0.0.1:40000";

    #[tokio::test]
    async fn network_peers_get_metrics_and_health_only_by_default() {
        let access = Access::default();
        for path in ["/metrics", "/healthz"] {
            assert_eq!(
                status(access, NETWORK, path).await.0,
                StatusCode::OK,
                "{path}"
            );
        }
        for path in [
            "/api/v1/processes",
            "/api/v1/pools",
            "/api/v1/oom",
            "/api/v1/tasks",
            "/api/v1/exits",
            "/api/v1/host",
        ] {
            let (code, body) = status(access, NETWORK, path).await;
            assert_eq!(code, StatusCode::FORBIDDEN, "{path}");
            assert!(body.contains("--expose-api"), "{body}");
            assert_eq!(
                status(access, LOCAL, path).await.0,
                StatusCode::OK,
                "{path}"
            );
        }
        // An IPv4 peer of an IPv6 listener is still a network peer.
        let mapped = "[::ffff:192.0.2.7]:40000";
        assert_eq!(
            status(access, mapped, "/api/v1/processes").await.0,
            StatusCode::FORBIDDEN
        );
        let expose = Access {
            expose_api: true,
            ..access
        };
        assert_eq!(
            status(expose, NETWORK, "/api/v1/processes").await.0,
            StatusCode::OK
        );
    }

    /// pid 10 selected and leaking 10 MiB per second for `secs` seconds of boot clock, pid 11
    /// not selected.
    fn leaking_state(secs: u64) -> Arc<Shared> {
        use crate::{host::proc::ProcSnapshot, model::detector::DetectorConfig};
        const S: u64 = 1_000_000_000;
        let snapshot = |pid, anon| ProcSnapshot {
            pid,
            ppid: 1,
            comm: "celery".into(),
            start_ns: S,
            rss: [0, anon, 0, 0],
            peak_bytes: anon,
        };
        let mut state = AgentState::new(Settings {
            detector: DetectorConfig {
                warmup_secs: 0.0,
                ..DetectorConfig::default()
            },
            ..Settings::default()
        });
        state.table.seed([snapshot(10, 0), snapshot(11, 0)]);
        state.table.get_mut(10).unwrap().selected = Some(true);
        state.table.get_mut(11).unwrap().selected = Some(false);
        for i in 0..secs {
            let p = state.table.get_mut(10).unwrap();
            p.set_seed(snapshot(10, (100 + 10 * i) << 20));
            state.assess(S + i * S);
        }
        Arc::new(Shared::new(state, None))
    }

    #[tokio::test]
    async fn history_is_the_detectors_own_and_served_like_the_rest_of_the_api() {
        let path = paths::process_history(10);
        let (code, body) = status_of(leaking_state(120), Access::default(), LOCAL, &path).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let h: leakscope_api::HistoryResponse = serde_json::from_str(&body).unwrap();
        assert_eq!((h.pid, h.comm.as_str()), (10, "celery"));
        assert_eq!(h.points.len(), 120);
        assert!(
            h.points
                .windows(2)
                .all(|w| w[0].unix_time_seconds < w[1].unix_time_seconds
                    && w[0].resident_bytes < w[1].resident_bytes),
            "{:?}",
            h.points
        );
        assert_eq!(h.points[0].resident_bytes, 100 << 20);
        // The boot clock's second 1 (the start) and the first sample are the same instant.
        let gap = h.points[0].unix_time_seconds - h.start_time_seconds;
        assert!(gap.abs() < 1e-3, "{gap}");
        let rate = h.rate_bytes_per_sec.expect("120 s is enough for a fit");
        assert!((rate - (10 << 20) as f64).abs() < 1.0, "{rate}");
        assert_eq!(h.verdict, Some(leakscope_api::Verdict::Leaking));
        assert!(!h.floors.is_empty());
        assert!(
            h.floors
                .windows(2)
                .all(|w| w[0].floor_bytes < w[1].floor_bytes)
        );

        // Too short a history for a verdict: points, but no fit and no floors yet.
        let (_, body) = status_of(leaking_state(30), Access::default(), LOCAL, &path).await;
        let h: leakscope_api::HistoryResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(h.points.len(), 30);
        assert_eq!((h.rate_bytes_per_sec, h.floors.len()), (None, 0));

        // Unknown, unselected, and not a pid.
        for (pid, want) in [
            ("99", StatusCode::NOT_FOUND),
            ("11", StatusCode::NOT_FOUND),
            ("x", StatusCode::BAD_REQUEST),
        ] {
            let path = format!("/api/v1/processes/{pid}/history");
            let (code, _) = status_of(leaking_state(1), Access::default(), LOCAL, &path).await;
            assert_eq!(code, want, "{path}");
        }
        let (code, body) = status_of(leaking_state(1), Access::default(), NETWORK, &path).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    }

    #[tokio::test]
    async fn host_memory_is_served_to_loopback_as_json() {
        let (code, body) = status(Access::default(), LOCAL, paths::HOST).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let host: leakscope_api::HostResponse = serde_json::from_str(&body).unwrap();
        assert!(host.memory.total_bytes > 64 << 20, "{body}");
        assert!(host.memory.available_bytes.is_some(), "{body}");
    }

    #[tokio::test]
    async fn profiles_are_off_by_default_and_never_for_anonymous_network_peers() {
        let path = "/debug/pprof/growth?pid=1&seconds=1";
        let (code, body) = status(Access::default(), LOCAL, path).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(body.contains("--enable-profiling"), "{body}");
        let on = Access {
            profiling: true,
            expose_api: true,
            credentials: false,
        };
        let (code, body) = status(on, NETWORK, path).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(body.contains("profiling_users"), "{body}");
    }
}
