//! The agent's `/debug/pprof/growth?pid=PID[&seconds=S][&format=pprof|svg|txt]`: growth
//! stacks of one process over a few seconds, as `investigate --mode growth` would report.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use aya::Ebpf;
use serde::Deserialize;

use super::{
    collect::{self, Target},
    flame,
    growth::Growth,
    maps_snapshot, pprof, table,
    tracer::{self, Shared as Stacks},
};
use crate::shared::Shared;

const DEFAULT_SECONDS: u64 = 10;
const MAX_SECONDS: u64 = 300;
const DEFAULT_PERIOD: u32 = 16;

/// The agent's kernel object and what growth sampling needs of it.
pub struct Profiler {
    ebpf: Ebpf,
    growth: Growth,
    stacks: Stacks,
}

impl Profiler {
    /// On failure the object comes back: the agent's own programs live in it.
    pub fn new(mut ebpf: Ebpf) -> Result<Self, (String, Ebpf)> {
        let parts = Stacks::take(&mut ebpf)
            .map_err(|e| e.to_string())
            .and_then(|s| Ok((s, Growth::new(&mut ebpf).map_err(|e| e.to_string())?)));
        match parts {
            Ok((stacks, growth)) => Ok(Self {
                ebpf,
                growth,
                stacks,
            }),
            Err(e) => Err((e, ebpf)),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct GrowthQuery {
    pid: Option<String>,
    seconds: Option<String>,
    format: Option<String>,
}

fn bad(status: StatusCode, why: String) -> Response {
    (status, format!("{why}\n")).into_response()
}

pub async fn growth_handler(
    State(state): State<Arc<Shared>>,
    Query(q): Query<GrowthQuery>,
) -> Response {
    let Some(profiler) = state.profiler() else {
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
        None => DEFAULT_SECONDS,
        Some(Ok(s)) if (1..=MAX_SECONDS).contains(&s) => s,
        Some(_) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("seconds must be 1 to {MAX_SECONDS}"),
            );
        }
    };
    let format = q.format.as_deref().unwrap_or("pprof");
    if !["pprof", "svg", "txt"].contains(&format) {
        return bad(
            StatusCode::BAD_REQUEST,
            format!("unknown format `{format}`: use pprof, svg or txt"),
        );
    }
    let comm = match super::command::read_comm(pid) {
        Ok(comm) => comm,
        Err(e) => return bad(StatusCode::NOT_FOUND, e.to_string()),
    };

    let added = {
        let mut p = profiler.lock().await;
        let p = &mut *p;
        if p.growth.is_target(pid) {
            false
        } else if let Err(e) = p.growth.add(&mut p.ebpf, pid, DEFAULT_PERIOD) {
            return bad(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        } else {
            true
        }
    };
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let mut p = profiler.lock().await;
    let p = &mut *p;
    let mappings = super::command::running(pid)
        .then(|| maps_snapshot::read(pid).ok())
        .flatten();
    let report = mappings.as_ref().map(|m| {
        let target = Target {
            pid,
            comm: &comm,
            alive: true,
            mappings: m,
        };
        collect::growth_report(
            &target,
            &p.growth,
            &p.stacks,
            started.elapsed(),
            DEFAULT_PERIOD,
        )
    });
    if added {
        p.growth.remove(&mut p.ebpf, pid);
        if p.growth.targets().is_empty() {
            p.stacks.clear_stacks();
        }
    }
    let Some(report) = report else {
        return bad(
            StatusCode::GONE,
            format!("pid {pid} ({comm}) exited during the {seconds}s profile"),
        );
    };
    match format {
        "svg" => match flame::svg(&report) {
            Ok(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
            Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        "txt" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            table::render(&report, 0),
        )
            .into_response(),
        _ => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"growth.pb.gz\"",
                ),
            ],
            pprof::encode(&report),
        )
            .into_response(),
    }
}

/// Map capacities for the agent: stacks only for on-demand growth profiles, no allocations.
pub const AGENT_CAPACITY: tracer::Capacity = tracer::Capacity {
    stacks: 4096,
    allocations: 1024,
};
