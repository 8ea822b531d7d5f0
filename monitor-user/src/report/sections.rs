//! The report's other sections: worker pools and their recycles over time, task verdicts,
//! OOM kills, and every watched process.

use std::fmt::Write as _;

use leakscope_api::{
    OomResponse, Pool, PoolsResponse, ProcessesResponse, RecycleReason, TasksResponse,
};

use super::{
    chart::{Marker, TimeChart},
    format::{bytes, duration, escape, rate, signed_bytes, timestamp},
    page::{Fetched, names_html, unavailable, verdict_badge},
};

fn reason_class(r: RecycleReason) -> &'static str {
    match r {
        RecycleReason::Memory => "memory",
        RecycleReason::Oom => "oom",
        RecycleReason::Crash => "crash",
        RecycleReason::Clean => "clean",
    }
}

pub fn recycles_chart(pool: &Pool) -> TimeChart {
    TimeChart {
        title: format!("recycles of pool {}", pool.pool),
        y_title: "peak at exit".into(),
        lines: Vec::new(),
        markers: pool
            .exits
            .iter()
            .map(|e| Marker {
                at: e.unix_time,
                bytes: e.peak_bytes as f64,
                class: reason_class(e.reason),
                title: format!(
                    "pid {} exited ({}) after {} at peak {}",
                    e.pid,
                    reason_class(e.reason),
                    duration(e.lifetime_secs),
                    bytes(e.peak_bytes)
                ),
            })
            .collect(),
        levels: Vec::new(),
    }
}

pub fn pools(pools: &Fetched<PoolsResponse>) -> String {
    let mut s = String::from(r#"<section id="pools"><h2>Worker pools</h2>"#);
    let pools = match pools {
        Ok(p) => p,
        Err(e) => {
            s.push_str(&unavailable("the worker pools", e));
            s.push_str("</section>\n");
            return s;
        }
    };
    if pools.pools.is_empty() {
        s.push_str(
            r#"<p class="empty">No worker pool: no parent runs two or more same-named workers, and none has recycled a child since the agent started.</p>"#,
        );
    }
    for pool in &pools.pools {
        let badge = if pool.leak_suspected {
            r#"<span class="verdict leaking">leak suspected</span>"#
        } else {
            r#"<span class="verdict stable">no leak suspected</span>"#
        };
        let reasons: Vec<String> = pool
            .recycles_by_reason
            .iter()
            .map(|(r, n)| format!("{n} {}", reason_class(*r)))
            .collect();
        let _ = write!(
            s,
            r#"<article class="pool"><h3>pool <code>{}</code> {badge}</h3><table class="facts"><tr><th>children now</th><td>{}</td></tr><tr><th>recycles</th><td>{} ({}); {} for memory</td></tr>"#,
            escape(&pool.pool),
            pool.children,
            pool.recycles,
            reasons.join(", "),
            pool.recycles_for_memory,
        );
        if pool.children > 0 || pool.parent.is_some() {
            let _ = write!(
                s,
                "<tr><th>held now</th><td>{} in all, growing {}: children {}</td></tr>",
                bytes(pool.total_bytes),
                rate(pool.growth_bytes_per_second),
                bytes(pool.children_bytes),
            );
        }
        if let Some(parent) = &pool.parent {
            let _ = write!(
                s,
                "<tr><th>parent</th><td>pid {}: {}, growing {} {}</td></tr>",
                parent.pid,
                bytes(parent.resident_bytes),
                rate(parent.growth_bytes_per_second),
                verdict_badge(parent.verdict),
            );
        }
        if let (Some(limit), Some(left)) = (pool.memory_limit_bytes, pool.time_to_limit_seconds) {
            let _ = write!(
                s,
                "<tr><th>time to limit</th><td>{} to the {} limit the children share</td></tr>",
                duration(left),
                bytes(limit),
            );
        }
        if let Some(e) = &pool.evidence {
            let _ = write!(s, "<tr><th>evidence</th><td>{}</td></tr>", escape(e));
        }
        s.push_str("</table>");
        if let Some(figure) = recycles_chart(pool).figure() {
            s.push_str(&figure);
            s.push_str(
                r#"<p class="legend"><span class="key memory">memory</span><span class="key oom">OOM kill</span><span class="key crash">crash</span><span class="key clean">clean exit</span></p>"#,
            );
        }
        s.push_str(
            "<table class=\"list\"><tr><th>pid</th><th>exited</th><th>lived</th><th>peak</th><th>at exit</th><th>why</th></tr>",
        );
        for e in pool.exits.iter().rev() {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.pid,
                timestamp(e.unix_time),
                duration(e.lifetime_secs),
                bytes(e.peak_bytes),
                bytes(e.resident_bytes),
                reason_class(e.reason)
            );
        }
        s.push_str("</table></article>");
    }
    if pools.overflow_recycles > 0 {
        let _ = write!(
            s,
            r#"<p class="note">{} recycles were not recorded: the agent holds as many pools as it may.</p>"#,
            pools.overflow_recycles
        );
    }
    s.push_str("</section>\n");
    s
}

pub fn tasks(tasks: &Fetched<TasksResponse>) -> String {
    let mut s = String::from(r#"<section id="tasks"><h2>Task verdicts</h2>"#);
    let tasks = match tasks {
        Ok(t) => t,
        Err(e) => {
            s.push_str(&unavailable("the task verdicts", e));
            s.push_str("</section>\n");
            return s;
        }
    };
    if tasks.tasks.is_empty() {
        let why = if tasks.socket.is_none() {
            "the agent's task socket is off, so no worker can send task markers"
        } else {
            "no worker has sent task markers (see integrations/ for Celery, RQ, Dramatiq and Django-Q)"
        };
        let _ = write!(s, r#"<p class="empty">No task verdicts: {why}.</p>"#);
    } else {
        s.push_str(
            "<table class=\"list\"><tr><th>task</th><th>runs</th><th>failed</th><th>kept per run</th><th>verdict</th><th>evidence</th></tr>",
        );
        for t in &tasks.tasks {
            let verdict = if t.leak_suspected {
                r#"<span class="verdict leaking">leak suspected</span>"#
            } else {
                r#"<span class="verdict stable">no leak suspected</span>"#
            };
            let _ = write!(
                s,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{verdict}</td><td>{}</td></tr>",
                escape(&t.task),
                t.runs,
                t.failed_runs,
                signed_bytes(t.retained_bytes_per_run),
                escape(&t.verdict.evidence)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</section>\n");
    s
}

pub fn oom(oom: &Fetched<OomResponse>) -> String {
    let mut s = String::from(r#"<section id="oom"><h2>Recent OOM kills</h2>"#);
    match oom {
        Err(e) => s.push_str(&unavailable("the OOM kills", e)),
        Ok(o) if o.oom_kills.is_empty() => {
            s.push_str(r#"<p class="empty">No OOM kill recorded since the agent started.</p>"#)
        }
        Ok(o) => {
            s.push_str(
                "<table class=\"list\"><tr><th>when</th><th>pid</th><th>process</th><th>pool</th><th>memory cgroup</th><th>anon</th><th>file</th><th>shmem</th></tr>",
            );
            for k in o.oom_kills.iter().rev() {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    timestamp(k.unix_time),
                    k.pid,
                    escape(&k.victim.comm),
                    escape(&k.victim.pool),
                    escape(&k.victim.cgroup),
                    bytes(k.anon_bytes),
                    bytes(k.file_bytes),
                    bytes(k.shmem_bytes)
                );
            }
            s.push_str("</table>");
        }
    }
    s.push_str("</section>\n");
    s
}

pub fn processes(r: &ProcessesResponse) -> String {
    let mut s = String::from(r#"<section id="processes"><h2>Watched processes</h2>"#);
    if r.processes.is_empty() {
        s.push_str(r#"<p class="empty">The agent watches no process (see its --match).</p>"#);
    } else {
        s.push_str(
            "<table class=\"list\"><tr><th>pid</th><th>process</th><th>names</th><th>resident</th><th>verdict</th><th>growth</th><th>time to limit</th></tr>",
        );
        for p in &r.processes {
            let growth = p
                .leak
                .as_ref()
                .map_or_else(|| "—".to_string(), |l| rate(l.rate_bytes_per_sec));
            let ttl = p
                .time_to_limit_seconds
                .map_or_else(|| "—".to_string(), duration);
            let _ = write!(
                s,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{growth}</td><td>{ttl}</td></tr>",
                p.pid,
                escape(&p.comm),
                names_html(p),
                bytes(p.resident_bytes),
                verdict_badge(p.leak.as_ref().map(|l| l.verdict)),
            );
        }
        s.push_str("</table>");
    }
    if r.overflow.processes > 0 {
        let _ = write!(
            s,
            r#"<p class="note">{} more processes are summed into the agent's overflow series (--max-processes).</p>"#,
            r.overflow.processes
        );
    }
    s.push_str("</section>\n");
    s
}

#[cfg(test)]
mod tests {
    use leakscope_api::{OomKill, OomVictim, PoolExit, PoolMember, Verdict};

    use super::*;
    use crate::report::{
        fixtures::{MIB, T0, incident},
        page::render,
    };

    #[test]
    fn pools_plot_their_recycles_and_ooms_are_listed() {
        let mut i = incident();
        let exit = |pid, at: f64, reason| PoolExit {
            pid,
            lifetime_secs: 60.0,
            resident_bytes: 500 * MIB,
            peak_bytes: 520 * MIB,
            first_sample_bytes: Some(40 * MIB),
            reason,
            unix_time: at,
        };
        i.pools = Ok(PoolsResponse {
            pools: vec![Pool {
                pool: "10/celery".into(),
                parent_pid: 10,
                comm: "celery".into(),
                recycles: 2,
                recycles_by_reason: [(RecycleReason::Memory, 1), (RecycleReason::Oom, 1)].into(),
                recycles_for_memory: 2,
                leak_suspected: true,
                evidence: Some("2 of the last 2 children were recycled for memory".into()),
                exits: vec![
                    exit(11, T0 + 60.0, RecycleReason::Memory),
                    exit(12, T0 + 180.0, RecycleReason::Oom),
                ],
                children: 4,
                children_bytes: 2000 * MIB,
                total_bytes: 2100 * MIB,
                growth_bytes_per_second: 100.0 * MIB as f64 / 3600.0,
                parent: Some(PoolMember {
                    pid: 10,
                    resident_bytes: 100 * MIB,
                    verdict: Some(Verdict::Leaking),
                    growth_bytes_per_second: 0.0,
                }),
                memory_limit_bytes: Some(4096 * MIB),
                time_to_limit_seconds: Some(7200.0),
                ..Pool::default()
            }],
            overflow_recycles: 0,
            overflow_pools: 0,
        });
        i.oom = Ok(OomResponse {
            oom_kills: vec![OomKill {
                pid: 12,
                victim: OomVictim {
                    comm: "celery".into(),
                    pool: "10/celery".into(),
                    cgroup: "/docker/abc".into(),
                },
                anon_bytes: 500 * MIB,
                file_bytes: 0,
                shmem_bytes: 0,
                unix_time: T0 + 180.0,
            }],
        });
        let html = render(&i);
        assert!(html.contains("<circle class=\"marker memory\""), "{html}");
        assert!(html.contains("<circle class=\"marker oom\""));
        assert!(html.contains("peak at exit (MiB)"));
        assert!(html.contains("2 of the last 2 children were recycled for memory"));
        // The live pool: what it holds now, its parent apart, the time to the shared limit.
        assert!(
            html.contains("<th>held now</th><td>2.1 GiB in all, growing +1.7 MiB/min"),
            "{html}"
        );
        assert!(
            html.contains("<th>parent</th><td>pid 10: 100.0 MiB"),
            "{html}"
        );
        assert!(html.contains(r#"<span class="verdict leaking">leaking</span>"#));
        assert!(
            html.contains(
                "<th>time to limit</th><td>2h00m to the 4.0 GiB limit the children share"
            ),
            "{html}"
        );
        assert!(html.contains("1 memory, 1 oom"));
        assert!(
            html.contains("<td>2023-11-14 22:16:20 UTC</td><td>12</td>"),
            "{html}"
        );
        assert!(html.contains("1 of 1 worker pools suspected"));
    }

    #[test]
    fn exits_of_unknown_time_are_listed_but_not_plotted() {
        let pool = Pool {
            pool: "10/celery".into(),
            parent_pid: 10,
            comm: "celery".into(),
            recycles: 1,
            recycles_by_reason: [(RecycleReason::Clean, 1)].into(),
            recycles_for_memory: 0,
            leak_suspected: false,
            evidence: None,
            exits: vec![PoolExit {
                pid: 11,
                lifetime_secs: 60.0,
                resident_bytes: MIB,
                peak_bytes: MIB,
                first_sample_bytes: None,
                reason: RecycleReason::Clean,
                unix_time: f64::NAN,
            }],
            children: 1,
            ..Pool::default()
        };
        assert!(recycles_chart(&pool).figure().is_none());
        let html = pools(&Ok(PoolsResponse {
            pools: vec![pool],
            overflow_recycles: 0,
            overflow_pools: 0,
        }));
        assert!(!html.contains("<svg"), "{html}");
        assert!(html.contains("<td>11</td><td>unknown time</td>"), "{html}");
    }
}
