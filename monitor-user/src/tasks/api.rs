//! `/api/v1/tasks`: every task name with its runs, retained bytes, verdict and recent jobs.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Query, State},
    response::{IntoResponse, Response},
};
use leakscope_api::{self as api, Retained, Task, TasksResponse};
use serde::Deserialize;

use super::{
    jobs::{JobRecord, MarkerCounters, SocketStatus, TaskStats, ThreadDelta},
    verdict::TaskVerdict,
};
use crate::{model::shared::Shared, model::state::AgentState};

#[derive(Debug, Deserialize)]
pub struct TasksQuery {
    /// Only this task name.
    task: Option<String>,
}

fn retained_json(t: &TaskStats) -> Retained {
    let mut v = t.window_retained();
    let last = v.last().copied();
    v.sort_unstable();
    let pick = |q: f64| {
        if v.is_empty() {
            0
        } else {
            v[((v.len() - 1) as f64 * q).floor() as usize]
        }
    };
    Retained {
        runs: v.len() as u64,
        median: pick(0.5),
        mean: if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<i64>() as f64 / v.len() as f64
        },
        p90: pick(0.9),
        min: v.first().copied().unwrap_or(0),
        max: v.last().copied().unwrap_or(0),
        last,
    }
}

pub fn tasks_json(state: &AgentState, only: Option<&str>) -> TasksResponse {
    let tasks = super::Tasks::of(state);
    let mut list: Vec<Task> = tasks
        .iter()
        .filter(|t| only.is_none_or(|name| name == t.name))
        .map(|t| Task {
            task: t.name.clone(),
            runs: t.runs,
            failed_runs: t.failed,
            abandoned_jobs: t.abandoned,
            leak_suspected: t.verdict.leak_suspected,
            retained_bytes_per_run: t.retained_per_run(),
            retained_bytes: retained_json(t),
            verdict: (&t.verdict).into(),
            recent_jobs: t
                .recent
                .iter()
                .map(|j| job(j, state.unix_seconds(j.begin_ns)))
                .collect(),
        })
        .collect();
    list.sort_by(|a, b| {
        b.leak_suspected
            .cmp(&a.leak_suspected)
            .then(b.retained_bytes_per_run.cmp(&a.retained_bytes_per_run))
            .then(a.task.cmp(&b.task))
    });
    TasksResponse {
        socket: tasks.socket.as_ref().map(Into::into),
        markers: (&tasks.counters).into(),
        open_jobs: tasks.open_jobs() as u64,
        tasks: list,
    }
}

pub async fn handler(State(shared): State<Arc<Shared>>, Query(q): Query<TasksQuery>) -> Response {
    let state = shared.state();
    Json(tasks_json(&state, q.task.as_deref())).into_response()
}

// The task types as the API's wire types (leakscope-api), as `crate::wire` does for the rest.

impl From<&TaskVerdict> for api::TaskVerdict {
    fn from(v: &TaskVerdict) -> Self {
        Self {
            leak_suspected: v.leak_suspected,
            runs_considered: v.runs_considered as u64,
            retaining_runs: v.retaining_runs as u64,
            median_retained_bytes: v.median_retained_bytes,
            retained_total_bytes: v.retained_total_bytes,
            floor_rise_bytes: v.floor_rise_bytes,
            evidence: v.evidence.clone(),
            allocator: v.allocator.as_ref().map(|a| api::AllocatorEvidence {
                leak_suspected: a.suspected,
                runs: a.runs as u64,
                blocks_per_run: a.blocks_per_run,
                blocks_low: a.blocks_low,
                blocks_high: a.blocks_high,
                bytes_per_run: a.bytes_per_run,
                bytes_low: a.bytes_low,
                bytes_high: a.bytes_high,
                share: a.share,
                floor_rise_bytes: a.floor_rise_bytes,
                evidence: a.evidence.clone(),
            }),
        }
    }
}

impl From<&ThreadDelta> for api::JobThread {
    fn from(t: &ThreadDelta) -> Self {
        Self {
            tid: t.tid,
            comm: t.comm.clone(),
            rss_growth_bytes: t.rss_growth_bytes,
            mapped_growth_bytes: t.mapped_growth_bytes,
        }
    }
}

/// A completed job; its begin in Unix seconds, which only the agent's clock can tell.
fn job(j: &JobRecord, begin_time_seconds: f64) -> api::Job {
    api::Job {
        job_id: j.job_id.clone(),
        pid: j.pid,
        tid: j.tid,
        duration_seconds: j.duration_seconds,
        rss_begin_bytes: j.rss_begin_bytes,
        rss_end_bytes: j.rss_end_bytes,
        retained_bytes: j.retained_bytes,
        failed: j.failed,
        source: j.source.into(),
        threads: j.threads.iter().map(Into::into).collect(),
        begin_time_seconds,
    }
}

impl From<&SocketStatus> for api::TaskSocket {
    fn from(s: &SocketStatus) -> Self {
        Self {
            path: s.path.clone(),
            queue_len: s.queue_len,
            mode: s.mode.clone(),
        }
    }
}

impl From<&MarkerCounters> for api::MarkerCounters {
    fn from(c: &MarkerCounters) -> Self {
        let owned = |m: &std::collections::BTreeMap<&'static str, u64>| {
            m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        Self {
            received: c.received,
            dropped: owned(&c.dropped),
            queue_full: c.queue_full,
            abandoned: c.abandoned,
            tid_unverified: c.tid_unverified,
            names_refused: owned(&c.names_refused),
        }
    }
}

/// The task types still derive `Serialize` as they did when they were served directly: each
/// conversion must give the same JSON, so no client sees a difference.
#[cfg(test)]
mod tests {
    use serde_json::{Value, to_value};

    use super::*;
    use crate::model::table::Source;

    fn same<A: serde::Serialize, B: serde::Serialize>(agent: &A, wire: &B) {
        assert_eq!(to_value(agent).unwrap(), to_value(wire).unwrap());
    }

    #[test]
    fn task_parts_keep_their_shape() {
        let v = TaskVerdict {
            leak_suspected: true,
            runs_considered: 20,
            retaining_runs: 18,
            median_retained_bytes: 1 << 20,
            retained_total_bytes: 18 << 20,
            floor_rise_bytes: 17 << 20,
            evidence: "18 of the last 20 runs retained memory".into(),
            allocator: None,
        };
        same(&v, &api::TaskVerdict::from(&v));
        let counters = MarkerCounters::default();
        same(&counters, &api::MarkerCounters::from(&counters));
        let socket = SocketStatus {
            path: "/run/leakscope/tasks.sock".into(),
            queue_len: 512,
            mode: "0666".into(),
        };
        same(&socket, &api::TaskSocket::from(&socket));

        let j = JobRecord {
            job_id: Some("j1".into()),
            pid: 5,
            tid: None,
            begin_ns: 1,
            duration_seconds: 0.25,
            rss_begin_bytes: 10,
            rss_end_bytes: 20,
            retained_bytes: -3,
            failed: false,
            source: Source::Kernel,
            threads: vec![ThreadDelta {
                tid: 6,
                comm: "w".into(),
                rss_growth_bytes: 4,
                mapped_growth_bytes: 0,
            }],
        };
        // Served before as the record flattened beside its begin time.
        let mut before = to_value(&j).unwrap();
        before["begin_time_seconds"] = Value::from(1.7e9);
        assert_eq!(before, to_value(job(&j, 1.7e9)).unwrap());
    }
}
