//! Task and marker metrics, built from the agent's state at scrape time.
//!
//! Series per task name (at most `--max-tasks` names plus `task="(overflow)"`):
//! `leakscope_task_runs_total`, `leakscope_task_retained_bytes` (histogram),
//! `leakscope_task_leak_suspected`. Marker traffic: `leakscope_markers_received_total`,
//! `leakscope_markers_dropped_total{reason}` (every reason from the start),
//! `leakscope_marker_queue_full_total`, `leakscope_task_jobs_abandoned_total`. Shares of the
//! agent's tables refused to a uid or cgroup: `leakscope_share_refused_total{table,owner}`.

use leakscope_api::metrics as names;
use prometheus::proto::{self, MetricFamily, MetricType};

use super::jobs::{Histogram, RETAINED_BUCKETS};
use crate::{
    model::budget::Over,
    model::state::AgentState,
    prom::{counter, family, gauge, labels},
};

fn histogram(pairs: &[(&str, &str)], h: &Histogram) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels(pairs));
    let mut out = proto::Histogram::default();
    out.set_sample_count(h.count);
    out.set_sample_sum(h.sum);
    out.set_bucket(
        RETAINED_BUCKETS
            .iter()
            .zip(h.buckets)
            .map(|(bound, count)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(count);
                b
            })
            .collect(),
    );
    m.set_histogram(out);
    m
}

pub fn families(state: &AgentState) -> Vec<MetricFamily> {
    let tasks = super::Tasks::of(state);
    let (mut runs, mut retained, mut suspected) = (Vec::new(), Vec::new(), Vec::new());
    let mut names: Vec<_> = tasks.iter().collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    for t in names {
        let l = [("task", t.name.as_str())];
        runs.push(counter(&l, t.runs as f64));
        retained.push(histogram(&l, &t.retained));
        suspected.push(gauge(&l, f64::from(u8::from(t.verdict.leak_suspected))));
    }
    let c = &tasks.counters;
    let dropped = c
        .dropped
        .iter()
        .map(|(reason, n)| counter(&[("reason", reason)], *n as f64))
        .collect();
    let mut refused = Vec::new();
    for over in Over::ALL {
        let owner = over.label();
        let names = c.names_refused.get(owner).copied().unwrap_or(0);
        refused.push(counter(
            &[("table", "task_names"), ("owner", owner)],
            names as f64,
        ));
        let threads = crate::threads::Threads::of(state).share_refused(over);
        refused.push(counter(
            &[("table", "thread_processes"), ("owner", owner)],
            threads as f64,
        ));
    }
    // Pools are charged to their parent's uid only.
    refused.push(counter(
        &[("table", "pools"), ("owner", Over::Uid.label())],
        state.pools.share_refused as f64,
    ));
    vec![
        family(
            names::TASK_RUNS_TOTAL,
            "Completed runs of a task (a begin marker paired with its end).",
            MetricType::COUNTER,
            runs,
        ),
        family(
            names::TASK_RETAINED_BYTES,
            "Memory a run left its process holding (anon+shmem+swap at end minus at begin, \
             from the kernel's counters at the markers); runs that gave memory back count as 0.",
            MetricType::HISTOGRAM,
            retained,
        ),
        family(
            names::TASK_LEAK_SUSPECTED,
            "1 when most recent runs of the task retain memory and the process floor rises \
             with them (see /api/v1/tasks for the evidence).",
            MetricType::GAUGE,
            suspected,
        ),
        family(
            names::TASK_JOBS_ABANDONED_TOTAL,
            "Jobs that began and never ended: their end marker was lost or their process exited.",
            MetricType::COUNTER,
            vec![counter(&[], c.abandoned as f64)],
        ),
        family(
            names::MARKERS_RECEIVED_TOTAL,
            "Task markers accepted from workers.",
            MetricType::COUNTER,
            vec![counter(&[], c.received as f64)],
        ),
        family(
            names::MARKERS_DROPPED_TOTAL,
            "Task markers dropped, by reason: malformed (the parser's reasons), no credentials, \
             ancillary data, the sender's uid or cgroup over its rate (uid_rate_limited, \
             cgroup_rate_limited) or its share of open jobs (uid_open_jobs_share, \
             cgroup_open_jobs_share), unmatched end, too many open jobs.",
            MetricType::COUNTER,
            dropped,
        ),
        family(
            names::SHARE_REFUSED_TOTAL,
            "Entries of a shared table refused because the uid or cgroup (owner) behind them \
             already held its share (a quarter, at least a floor): task names (their runs go \
             to task=\"(overflow)\"), processes with per-thread accounting, worker pools. \
             Open jobs refused this way are dropped markers (reason *_open_jobs_share).",
            MetricType::COUNTER,
            refused,
        ),
        family(
            names::MARKER_QUEUE_FULL_TOTAL,
            "Times the agent drained a full queue's worth of markers at once: workers, who never \
             wait, may have dropped markers meanwhile.",
            MetricType::COUNTER,
            vec![counter(&[], c.queue_full as f64)],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::budget::Principal,
        model::state::Settings,
        model::table::Source,
        tasks::{jobs::Snapshot, protocol::parse},
    };

    fn state() -> AgentState {
        AgentState::new(Settings::default())
    }

    fn render(families: Vec<MetricFamily>) -> String {
        use prometheus::Encoder as _;
        let families: Vec<_> = families
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect();
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn drop_reasons_exist_at_zero_before_any_marker() {
        let text = render(families(&state()));
        assert!(text.contains("leakscope_markers_dropped_total{reason=\"bad_magic\"} 0"));
        for reason in [
            "uid_rate_limited",
            "cgroup_rate_limited",
            "uid_open_jobs_share",
        ] {
            let line = format!("leakscope_markers_dropped_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        for table in ["task_names", "thread_processes", "pools"] {
            let line =
                format!("leakscope_share_refused_total{{table=\"{table}\",owner=\"uid\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains("leakscope_markers_received_total 0"));
        assert!(!text.contains("leakscope_task_runs_total{"));
    }

    #[test]
    fn a_task_renders_runs_histogram_and_verdict() {
        let mut s = state();
        let snap = |at, anon| Snapshot {
            at_ns: at,
            rss: [0, anon, 0, 0],
            source: Source::Kernel,
            threads: Vec::new(),
            pool: 1,
        };
        for i in 0..3 {
            let b = parse(b"LS1 begin app.t").unwrap();
            let who = Principal::uid(0);
            crate::tasks::Tasks::of_mut(&mut s).on_marker(1, who, &b, None, snap(i, 0));
            let e = parse(b"LS1 end app.t").unwrap();
            crate::tasks::Tasks::of_mut(&mut s).on_marker(1, who, &e, None, snap(i, 2 << 20));
        }
        let text = render(families(&s));
        assert!(
            text.contains("leakscope_task_runs_total{task=\"app.t\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE leakscope_task_retained_bytes histogram"));
        assert!(
            text.contains("leakscope_task_retained_bytes_bucket{task=\"app.t\",le=\"1048576\"} 0")
        );
        assert!(
            text.contains("leakscope_task_retained_bytes_bucket{task=\"app.t\",le=\"4194304\"} 3")
        );
        assert!(
            text.contains("leakscope_task_retained_bytes_bucket{task=\"app.t\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("leakscope_task_retained_bytes_count{task=\"app.t\"} 3"));
        assert!(text.contains("leakscope_task_leak_suspected{task=\"app.t\"} 0"));
    }
}
