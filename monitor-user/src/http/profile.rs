//! The agent's `/debug/pprof/growth?pid=PID[&seconds=S][&format=pprof|svg|txt][&period=N]`:
//! growth stacks of one process over a few seconds, as `investigate --mode growth` would
//! report. A process the agent already samples on its own (`--auto-growth`) is answered at
//! once with everything gathered since its sampling began.
//!
//! Served only with `--enable-profiling`; who may ask is decided in `http` (credentials named
//! in `profiling_users`, or a local user for their own processes).

use crate::investigate::unwind::UnwindMode;
use std::time::Instant;

use axum::{
    Extension,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{App, ProfileAccess, SharedProfiler};
use crate::{
    host::peer::{may_inspect, process_owner},
    investigate::{
        collect::{self, Target},
        flame, maps_snapshot, pprof,
        profiler::{HoldError, Holder},
        report::Report,
        table, target,
    },
};
use monitor_common::stacks::DEFAULT_SAMPLE_PERIOD;

const DEFAULT_SECONDS: u64 = 10;
/// The longest profile a request may ask for.
pub const MAX_SECONDS: u64 = 300;
const MAX_PERIOD: u32 = 1_000_000;

/// A request's hold on growth sampling of one pid. Released when dropped: a client that
/// disconnects cancels the handler mid-wait, and the page-fault program must not stay
/// attached host-wide because of it.
struct RequestHold {
    profiler: SharedProfiler,
    pid: u32,
    holder: Holder,
}

impl Drop for RequestHold {
    fn drop(&mut self) {
        if let Ok(mut p) = self.profiler.try_lock() {
            p.release(self.pid, self.holder);
            return;
        }
        // Someone holds the lock: release as soon as it is free. Should even that fail, the
        // profiler's deadline releases the hold.
        let (profiler, pid, holder) = (self.profiler.clone(), self.pid, self.holder);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                profiler.lock().await.release(pid, holder);
            });
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct GrowthQuery {
    pid: Option<String>,
    seconds: Option<String>,
    format: Option<String>,
    period: Option<String>,
}

fn bad(status: StatusCode, why: String) -> Response {
    (status, format!("{why}\n")).into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Pprof,
    Svg,
    Txt,
}

pub async fn growth_handler(
    State(app): State<App>,
    access: Option<Extension<ProfileAccess>>,
    Query(q): Query<GrowthQuery>,
) -> Response {
    let Some(profiler) = app.profiler.clone() else {
        return bad(
            StatusCode::SERVICE_UNAVAILABLE,
            "growth profiling is off in this agent (see the start-up log)".into(),
        );
    };
    let pid = match q.pid.as_deref().map(str::parse::<u32>) {
        Some(Ok(pid)) if pid > 0 => pid,
        Some(_) => return bad(StatusCode::BAD_REQUEST, "pid must be a process id".into()),
        None => return bad(StatusCode::BAD_REQUEST, "missing ?pid=PID".into()),
    };
    let seconds = match q.seconds.as_deref().map(str::parse::<u64>) {
        None if profiler.lock().await.auto_since(pid).is_some() => 0,
        None => DEFAULT_SECONDS,
        Some(Ok(s)) if (1..=MAX_SECONDS).contains(&s) => s,
        Some(_) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("seconds must be 1 to {MAX_SECONDS}"),
            );
        }
    };
    let period = match q.period.as_deref().map(str::parse::<u32>) {
        None => DEFAULT_SAMPLE_PERIOD,
        Some(Ok(p)) if (1..=MAX_PERIOD).contains(&p) => p,
        Some(_) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("period must be 1 to {MAX_PERIOD} (one page fault sampled in that many)"),
            );
        }
    };
    let format = match q.format.as_deref().unwrap_or("pprof") {
        "pprof" => Format::Pprof,
        "svg" => Format::Svg,
        "txt" => Format::Txt,
        other => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("unknown format `{other}`: use pprof, svg or txt"),
            );
        }
    };
    let comm = match target::check(pid) {
        Ok(comm) => comm,
        Err(e) => return bad(e.status(), e.to_string()),
    };
    if let Some(refused) = refusal(access.map(|Extension(a)| a), pid, &comm) {
        return refused;
    }

    let holder = match profiler.lock().await.hold_request(pid, period) {
        Ok(holder) => holder,
        Err(e @ HoldError::Busy) => return bad(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        Err(e) => return bad(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let hold = RequestHold {
        profiler: profiler.clone(),
        pid,
        holder,
    };
    let requested = Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    // Reading the maps, symbolizing and rendering block for up to seconds: off the async
    // workers, so /healthz and /metrics keep answering. The hold goes with the work and is
    // released once the kernel's records are read, whatever happens to the connection.
    let work = tokio::task::spawn_blocking(move || build(hold, &comm, requested, seconds, format));
    match work.await {
        Ok(response) => response,
        Err(e) => bad(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the profile failed: {e}"),
        ),
    }
}

/// Who may profile `pid`: anyone the credentials layer let through (it checks
/// `profiling_users`), and otherwise a local user for their own processes, root for all.
/// The refusal, if any.
fn refusal(access: Option<ProfileAccess>, pid: u32, comm: &str) -> Option<Response> {
    match access {
        Some(ProfileAccess::Credentials) => None,
        Some(ProfileAccess::LocalUser(uid)) => match process_owner(pid) {
            Err(e) => Some(bad(
                StatusCode::NOT_FOUND,
                format!("pid {pid} ({comm}): {e}"),
            )),
            Ok(owner) if may_inspect(uid, owner) => None,
            Ok(owner) => Some(bad(
                StatusCode::FORBIDDEN,
                format!(
                    "uid {uid} may not profile pid {pid} ({comm}), which belongs to uid \
                     {owner}: local users may profile their own processes, root any"
                ),
            )),
        },
        None => Some(bad(
            StatusCode::FORBIDDEN,
            "profiling is allowed only to local users and to web-config profiling_users".into(),
        )),
    }
}

fn build(
    hold: RequestHold,
    comm: &str,
    requested: Instant,
    seconds: u64,
    format: Format,
) -> Response {
    let pid = hold.pid;
    let profiler = hold.profiler.clone();
    let mappings = match maps_snapshot::read(pid) {
        Ok(m) if crate::host::proc::running(pid) => m,
        Ok(_) => return gone(pid, comm, seconds),
        Err(maps_snapshot::MapsError::Gone { .. }) => return gone(pid, comm, seconds),
        Err(e @ maps_snapshot::MapsError::PermissionDenied { .. }) => {
            return bad(StatusCode::FORBIDDEN, e.to_string());
        }
        Err(e) => return bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let target = Target {
        pid,
        comm,
        alive: true,
        mappings: &mappings,
    };
    let (records, started) = {
        let mut p = profiler.blocking_lock();
        let read = p.records(&target, requested);
        p.release(pid, hold.holder);
        read
    };
    drop(hold);
    let report = collect::finish_growth(&target, records, started.elapsed());
    render(&report, format)
}

fn gone(pid: u32, comm: &str, seconds: u64) -> Response {
    bad(
        StatusCode::GONE,
        if seconds == 0 {
            format!("pid {pid} ({comm}) has exited")
        } else {
            format!("pid {pid} ({comm}) exited during the {seconds}s profile")
        },
    )
}

fn render(report: &Report, format: Format) -> Response {
    match format {
        Format::Svg => match flame::svg(report) {
            Ok(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
            Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Format::Txt => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            table::render(report, 0),
        )
            .into_response(),
        Format::Pprof => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"growth.pb.gz\"",
                ),
            ],
            pprof::encode(report),
        )
            .into_response(),
    }
}

/// Map capacities for the agent: stacks only for on-demand growth profiles, no allocations;
/// `unwind` is how their native stacks are taken (`--profile-unwind`).
pub fn agent_capacity(unwind: UnwindMode) -> crate::bpf::object::StackCapacity {
    crate::bpf::object::StackCapacity {
        stacks: 4096,
        allocations: 1024,
        alloc_sample_bytes: 0,
        unwind_copy_bytes: unwind.copy_bytes(),
    }
}
