//! The agent's `/debug/pprof/growth?pid=PID[&seconds=S][&format=pprof|svg|txt][&period=N]`:
//! growth stacks of one process over a few seconds, as `investigate --mode growth` would
//! report. A process the agent already samples on its own (`--auto-growth`) is answered at
//! once with everything gathered since its sampling began.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

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
use monitor_common::stacks::DEFAULT_SAMPLE_PERIOD;

const DEFAULT_SECONDS: u64 = 10;
const MAX_SECONDS: u64 = 300;
const MAX_PERIOD: u32 = 1_000_000;

/// The agent's kernel object and what growth sampling needs of it.
pub struct Profiler {
    ebpf: Ebpf,
    growth: Growth,
    stacks: Stacks,
    /// Who wants each sampled pid: a pid stops being sampled when the last holder leaves.
    holders: HashMap<u32, Holders>,
    /// The per-thread syscall programs, which live in the same object.
    pub syscalls: Option<crate::threads::SyscallProbes>,
}

#[derive(Default)]
struct Holders {
    /// Requests in flight.
    requests: u32,
    /// Set while the agent samples the pid on its own (--auto-growth), since then.
    auto_since: Option<Instant>,
}

/// On whose behalf a pid is sampled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Request,
    Auto,
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
                holders: HashMap::new(),
                syscalls: None,
            }),
            Err(e) => Err((e, ebpf)),
        }
    }

    /// Samples `pid` (one fault in `period`) unless it already is, on behalf of `holder`.
    pub fn hold(
        &mut self,
        pid: u32,
        period: u32,
        holder: Holder,
    ) -> Result<(), super::growth::GrowthError> {
        if !self.growth.is_target(pid) {
            self.growth.add(&mut self.ebpf, pid, period)?;
        }
        let h = self.holders.entry(pid).or_default();
        match holder {
            Holder::Request => h.requests += 1,
            Holder::Auto => {
                h.auto_since.get_or_insert_with(Instant::now);
            }
        }
        Ok(())
    }

    /// `holder` is done with `pid`; sampling stops, and its stacks go, with the last holder.
    pub fn release(&mut self, pid: u32, holder: Holder) {
        let Some(h) = self.holders.get_mut(&pid) else {
            return;
        };
        match holder {
            Holder::Request => h.requests = h.requests.saturating_sub(1),
            Holder::Auto => h.auto_since = None,
        }
        if h.requests == 0 && h.auto_since.is_none() {
            self.holders.remove(&pid);
            self.growth.remove(&mut self.ebpf, pid);
            if self.growth.targets().is_empty() {
                self.stacks.clear_stacks();
            }
        }
    }

    /// Attaches or detaches the per-thread syscall programs as `wanted` says; None when the
    /// object has none.
    pub fn follow_thread_wants(&mut self, wanted: bool) -> Option<Result<(), String>> {
        let probes = self.syscalls.as_mut()?;
        Some(probes.follow(&mut self.ebpf, wanted))
    }

    /// Pids the agent samples on its own, with when that began.
    pub fn auto_targets(&self) -> Vec<(u32, Instant)> {
        self.holders
            .iter()
            .filter_map(|(pid, h)| h.auto_since.map(|since| (*pid, since)))
            .collect()
    }

    fn auto_since(&self, pid: u32) -> Option<Instant> {
        self.holders.get(&pid).and_then(|h| h.auto_since)
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

    if let Err(e) = profiler.lock().await.hold(pid, period, Holder::Request) {
        return bad(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let requested = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let mut p = profiler.lock().await;
    let p = &mut *p;
    // A pid the agent already samples keeps its period, and the profile covers all of it.
    let period = p.growth.period(pid).unwrap_or(period);
    let started = p
        .auto_since(pid)
        .map_or(requested, |since| since.min(requested));
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
        collect::growth_report(&target, &p.growth, &p.stacks, started.elapsed(), period)
    });
    p.release(pid, Holder::Request);
    let Some(report) = report else {
        return bad(
            StatusCode::GONE,
            if seconds == 0 {
                format!("pid {pid} ({comm}) has exited")
            } else {
                format!("pid {pid} ({comm}) exited during the {seconds}s profile")
            },
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
    alloc_sample_bytes: 0,
};
