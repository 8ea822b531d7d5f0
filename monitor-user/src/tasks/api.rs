//! `/api/v1/tasks`: every task name with its runs, retained bytes, verdict and recent jobs.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Query, State},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{
    jobs::{JobRecord, MarkerCounters, SocketStatus, TaskStats},
    verdict::TaskVerdict,
};
use crate::{shared::Shared, state::AgentState};

#[derive(Debug, Deserialize)]
pub struct TasksQuery {
    /// Only this task name.
    task: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RetainedJson {
    /// Over the verdict's window of recent runs.
    pub runs: usize,
    pub median: i64,
    pub mean: f64,
    pub p90: i64,
    pub min: i64,
    pub max: i64,
    pub last: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct JobJson {
    #[serde(flatten)]
    pub job: JobRecord,
    pub begin_time_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct TaskJson {
    pub task: String,
    pub runs: u64,
    pub failed_runs: u64,
    pub abandoned_jobs: u64,
    pub leak_suspected: bool,
    /// Median retained bytes of recent runs: what one run keeps.
    pub retained_bytes_per_run: i64,
    pub retained_bytes: RetainedJson,
    pub verdict: TaskVerdict,
    /// Most recent last.
    pub recent_jobs: Vec<JobJson>,
}

#[derive(Debug, Serialize)]
pub struct TasksJson {
    /// Where workers send markers; absent when the socket is off or could not be bound.
    pub socket: Option<SocketStatus>,
    pub markers: MarkerCounters,
    pub open_jobs: usize,
    pub tasks: Vec<TaskJson>,
}

fn retained_json(t: &TaskStats) -> RetainedJson {
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
    RetainedJson {
        runs: v.len(),
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

pub fn tasks_json(state: &AgentState, only: Option<&str>) -> TasksJson {
    let tasks = &state.tasks;
    let mut list: Vec<TaskJson> = tasks
        .iter()
        .filter(|t| only.is_none_or(|name| name == t.name))
        .map(|t| TaskJson {
            task: t.name.clone(),
            runs: t.runs,
            failed_runs: t.failed,
            abandoned_jobs: t.abandoned,
            leak_suspected: t.verdict.leak_suspected,
            retained_bytes_per_run: t.median_retained(),
            retained_bytes: retained_json(t),
            verdict: t.verdict.clone(),
            recent_jobs: t
                .recent
                .iter()
                .map(|j| JobJson {
                    job: j.clone(),
                    begin_time_seconds: state.unix_seconds(j.begin_ns),
                })
                .collect(),
        })
        .collect();
    list.sort_by(|a, b| {
        b.leak_suspected
            .cmp(&a.leak_suspected)
            .then(b.retained_bytes_per_run.cmp(&a.retained_bytes_per_run))
            .then(a.task.cmp(&b.task))
    });
    TasksJson {
        socket: tasks.socket.clone(),
        markers: tasks.counters.clone(),
        open_jobs: tasks.open_jobs(),
        tasks: list,
    }
}

pub async fn handler(State(shared): State<Arc<Shared>>, Query(q): Query<TasksQuery>) -> Response {
    let state = shared.state();
    Json(tasks_json(&state, q.task.as_deref())).into_response()
}
