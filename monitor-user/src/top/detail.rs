//! The text of the drill-down screens, as plain lines: a process with its evidence and task
//! types, a group's summary, a pool's recycles, the help.

use leakscope_api::{HistoryResponse, Pool, Process, RecycleReason};

use super::view::{self, GroupKind, Snapshot};

/// The screen without an agent: what to run to start one.
pub fn not_running(agent: &str, every: &str) -> Vec<String> {
    vec![
        format!("No leakscope agent is listening at {agent}."),
        String::new(),
        "Start one on this host (it needs root):".into(),
        "    sudo leakscope run".into(),
        "or, from a leakscope checkout:".into(),
        "    cargo xtask run".into(),
        "or point top at a running one:".into(),
        "    leakscope top --agent http://HOST:9633".into(),
        String::new(),
        format!("Trying again every {every}; q quits."),
    ]
}

/// Shown for a process the agent no longer lists.
pub fn gone(pid: u32) -> String {
    format!("pid {pid} is no longer listed by the agent (it exited, or is no longer selected)")
}

/// A process: names, memory, limit, the verdict's evidence, threads and task types.
pub fn process(snapshot: &Snapshot, pid: u32, profile_seconds: u64) -> Vec<String> {
    let Some(p) = snapshot.processes.iter().find(|p| p.pid == pid) else {
        return vec![gone(pid)];
    };
    let mut out = vec![format!("{} pid {} (parent {})", p.comm, p.pid, p.ppid)];
    let names = names(p);
    if !names.is_empty() {
        out.push(format!("in: {}", names.join(" · ")));
    }
    out.push(format!(
        "RSS {} (anon {}, file {}, shmem {}, swap {})  peak {}",
        view::bytes(p.resident_bytes),
        view::bytes(p.rss_bytes.anon),
        view::bytes(p.rss_bytes.file),
        view::bytes(p.rss_bytes.shmem),
        view::bytes(p.rss_bytes.swap),
        view::bytes(p.peak_rss_bytes),
    ));
    out.push(match p.memory_limit_bytes {
        Some(limit) => format!(
            "limit {} ({}), reached in {}",
            view::bytes(limit),
            view::limit_source(p.memory_limit_source),
            view::time_to_limit(p.time_to_limit_seconds)
        ),
        None => "no memory limit known (cgroup unlimited, no --limit)".into(),
    });
    out.push(match &p.leak {
        None => "verdict: none yet (no sample)".into(),
        Some(a) => format!(
            "verdict {} {}: growth {} over {}, floor {} (consistency {}), {} samples",
            a.verdict.as_str(),
            view::confidence(Some(a.confidence)),
            view::rate(
                a.rate_bytes_per_sec
                    .is_finite()
                    .then_some(a.rate_bytes_per_sec)
            ),
            view::time_to_limit(Some(a.window_secs)),
            view::signed_bytes(a.floor_rise_bytes as i64),
            view::confidence(Some(a.consistency)),
            a.samples
        ),
    });
    out.push(if p.growth_sampled {
        "growth stacks: sampled by the agent (--auto-growth); p shows them".into()
    } else {
        format!("growth stacks: p takes a {profile_seconds}s profile")
    });
    if let Some(threads) = p.threads.as_ref().filter(|t| !t.is_empty()) {
        let top: Vec<String> = threads
            .iter()
            .take(3)
            .map(|t| {
                format!(
                    "{} {} {}",
                    t.tid,
                    t.comm,
                    view::signed_bytes(t.rss_growth_bytes)
                )
            })
            .collect();
        out.push(format!("threads by growth: {}", top.join(", ")));
    }
    let tasks = view::tasks_of(snapshot, pid);
    if tasks.is_empty() {
        out.push("task types: none seen (the worker sends no task markers)".into());
    } else {
        out.push("task types (TASK  RUNS  KEPT/RUN  VERDICT):".into());
        for t in tasks {
            out.push(format!(
                "  {}  {}  {}  {}: {}",
                view::fit(&t.task, 32),
                t.runs,
                view::signed_bytes(t.retained_bytes_per_run),
                if t.verdict.leak_suspected {
                    "LEAK SUSPECTED"
                } else {
                    "ok"
                },
                t.verdict.evidence
            ));
        }
    }
    out
}

fn names(p: &Process) -> Vec<String> {
    let mut out: Vec<String> = view::groups_of(p)
        .into_iter()
        .map(|(kind, name)| format!("{} {name}", kind.describe()))
        .collect();
    if let Some(c) = &p.container {
        out.push(format!("container {} ({})", c.name, c.image));
    }
    out
}

/// One line for the history: its span and range, under the sparkline.
pub fn history(h: &HistoryResponse) -> String {
    let (Some(first), Some(last)) = (h.points.first(), h.points.last()) else {
        return "history: no points yet".into();
    };
    let low = h
        .points
        .iter()
        .map(|p| p.min_resident_bytes)
        .min()
        .unwrap_or(0);
    let high = h.points.iter().map(|p| p.resident_bytes).max().unwrap_or(0);
    format!(
        "history {}: {} → {} (low {}, high {})",
        view::time_to_limit(Some(last.unix_time_seconds - first.unix_time_seconds)),
        view::bytes(first.resident_bytes),
        view::bytes(last.resident_bytes),
        view::bytes(low),
        view::bytes(high)
    )
}

/// A group's first lines: what it is and, for a pool, its recycles.
pub fn group(snapshot: &Snapshot, kind: GroupKind, name: &str) -> Vec<String> {
    let members = view::members(snapshot, kind, name);
    let total: u64 = members.iter().map(|r| r.resident_bytes).sum();
    let mut out = vec![format!(
        "{} {name}: {} processes listed, {} resident",
        kind.describe(),
        members.len(),
        view::bytes(total)
    )];
    if kind == GroupKind::Pool {
        match snapshot.pools.iter().find(|p| p.pool == name) {
            Some(pool) => out.extend(pool_lines(pool)),
            None => out.push("the agent reports no recycle for this pool yet".into()),
        }
    }
    out
}

fn reason(r: RecycleReason) -> &'static str {
    match r {
        RecycleReason::Memory => "memory",
        RecycleReason::Oom => "oom",
        RecycleReason::Crash => "crash",
        RecycleReason::Clean => "clean",
    }
}

fn pool_lines(pool: &Pool) -> Vec<String> {
    let by: Vec<String> = pool
        .recycles_by_reason
        .iter()
        .map(|(r, n)| format!("{} {n}", reason(*r)))
        .collect();
    let mut out = vec![format!(
        "{} live children, {} recycles ({})",
        pool.children,
        pool.recycles,
        if by.is_empty() {
            "none".into()
        } else {
            by.join(", ")
        }
    )];
    out.push(match (&pool.evidence, pool.leak_suspected) {
        (Some(e), true) => format!("LEAK SUSPECTED: {e}"),
        (Some(e), false) => e.clone(),
        (None, _) => "no leak suspected from recycles".into(),
    });
    if !pool.exits.is_empty() {
        out.push("recent recycles (newest first): PID  LIVED  RSS  PEAK  WHY".into());
        for e in pool.exits.iter().rev() {
            out.push(format!(
                "  {}  {}  {}  {}  {}",
                e.pid,
                view::time_to_limit(Some(e.lifetime_secs)),
                view::bytes(e.resident_bytes),
                view::bytes(e.peak_bytes),
                reason(e.reason)
            ));
        }
    }
    out
}

pub const HELP: &[&str] = &[
    "leakscope top: processes the agent watches, their memory and leak verdicts",
    "",
    "Rows: groups first (svc Compose service, ctr container, unit systemd unit,",
    "pod, pool worker pool; PID shows their size), then processes.",
    "GROWTH is the fitted RSS growth rate; TO LIMIT when it reaches LIMIT's limit.",
    "",
    "  ↑ ↓ j k PgUp PgDn Home End  move",
    "  Enter → l              open: a group's processes, a process's details",
    "  Esc ← h Backspace      back (on the table: clear the filter)",
    "  p                      growth profile of the process (its top stacks)",
    "  t m g v n              sort: time to limit, RSS, growth, verdict, name",
    "  r, or the same key     reverse the order",
    "  /                      filter: words to match (name, pid, group, verdict)",
    "  ?                      this help",
    "  q                      quit",
];

#[cfg(test)]
mod tests {
    use leakscope_api::{Job, Retained, Source, Task, TaskVerdict, Verdict};

    use super::{super::view::tests::snapshot, *};

    fn task(name: &str, pid: u32, suspected: bool) -> Task {
        Task {
            task: name.into(),
            runs: 40,
            failed_runs: 0,
            abandoned_jobs: 0,
            leak_suspected: suspected,
            retained_bytes_per_run: if suspected { 1 << 20 } else { 0 },
            retained_bytes: Retained {
                runs: 40,
                median: 0,
                mean: 0.0,
                p90: 0,
                min: 0,
                max: 0,
                last: None,
            },
            verdict: TaskVerdict {
                leak_suspected: suspected,
                runs_considered: 40,
                retaining_runs: if suspected { 40 } else { 0 },
                median_retained_bytes: 0,
                retained_total_bytes: 0,
                floor_rise_bytes: 0,
                evidence: format!("{name} evidence"),
                allocator: None,
            },
            recent_jobs: vec![Job {
                job_id: None,
                pid,
                tid: None,
                duration_seconds: 0.1,
                rss_begin_bytes: 0,
                rss_end_bytes: 0,
                retained_bytes: 0,
                failed: false,
                source: Source::Kernel,
                threads: Vec::new(),
                begin_time_seconds: 0.0,
            }],
        }
    }

    #[test]
    fn a_process_shows_its_evidence_names_and_task_types() {
        let mut s = snapshot();
        s.tasks = vec![
            task("app.clean", 101, false),
            task("app.leaky", 101, true),
            task("other", 555, true),
        ];
        let text = process(&s, 101, 7).join("\n");
        for want in [
            "celery pid 101 (parent 100)",
            "Compose service shop/worker",
            "worker pool 100/celery",
            "container shop-worker-1 (shop:latest)",
            "limit 1.0G (cgroup), reached in 5m00s",
            "verdict leaking 90%: growth +2.0M/s over 10m00s",
            "p takes a 7s profile",
            "app.leaky  40  +1.0M  LEAK SUSPECTED: app.leaky evidence",
            "app.clean  40  +0B  ok",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        assert!(!text.contains("other"), "{text}");
        assert!(
            text.find("app.leaky").unwrap() < text.find("app.clean").unwrap(),
            "suspected first"
        );
        assert_eq!(process(&s, 4242, 7), [gone(4242)]);
        let _ = Verdict::Leaking;
    }

    #[test]
    fn a_pool_shows_children_and_recycles() {
        let mut s = snapshot();
        s.pools[0].exits = vec![leakscope_api::PoolExit {
            pid: 99,
            lifetime_secs: 120.0,
            resident_bytes: 500 << 20,
            peak_bytes: 510 << 20,
            first_sample_bytes: None,
            reason: RecycleReason::Memory,
            unix_time: 1.7e9,
        }];
        let text = group(&s, GroupKind::Pool, "100/celery").join("\n");
        for want in [
            "worker pool 100/celery: 2 processes listed, 700M resident",
            "2 live children, 3 recycles (memory 3)",
            "LEAK SUSPECTED: 3 recycled for memory",
            "  99  2m00s  500M  510M  memory",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let text = group(&s, GroupKind::Unit, "web.service").join("\n");
        assert!(
            text.contains("systemd unit web.service: 1 processes"),
            "{text}"
        );
    }

    #[test]
    fn help_fits_80_columns() {
        for line in HELP {
            assert!(line.chars().count() <= 78, "{line}");
        }
    }
}
