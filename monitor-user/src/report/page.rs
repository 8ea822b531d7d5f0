//! The incident report as one HTML page, from what the agent's API returned. Pure functions of
//! their input: the page has no script, loads nothing (its Content-Security-Policy forbids it
//! should anything slip through), and every string that came from the agent is escaped.

use std::fmt::Write as _;

use base64::Engine as _;
use leakscope_api::{
    HistoryResponse, HostResponse, LimitSource, OomResponse, Pool, PoolsResponse, Process,
    ProcessesResponse, RecycleReason, TasksResponse, Verdict,
};

use super::{
    chart::{Level, Line, Marker, TimeChart},
    format::{bytes, duration, escape, percent, rate, signed_bytes, timestamp},
};

/// A part of the report, or why the agent could not give it.
pub type Fetched<T> = Result<T, String>;

/// Everything the report shows, as read from one agent.
pub struct Incident {
    /// The agent's address, as given to `--agent`.
    pub agent: String,
    /// When the report was made, Unix seconds.
    pub generated: f64,
    /// `/healthz`'s answer.
    pub health: Fetched<String>,
    pub host: Fetched<HostResponse>,
    pub processes: ProcessesResponse,
    pub suspects: Vec<Suspect>,
    pub pools: Fetched<PoolsResponse>,
    pub tasks: Fetched<TasksResponse>,
    pub oom: Fetched<OomResponse>,
}

pub struct Suspect {
    pub process: Process,
    pub history: Fetched<HistoryResponse>,
    pub flame: Flame,
}

/// The growth flame graph of a suspect, or why there is none.
pub enum Flame {
    /// The agent's SVG (`/debug/pprof/growth?format=svg`).
    Svg(Vec<u8>),
    Missing(String),
}

/// Suspects drawn in full (chart and flame graph); the rest are in the process table.
pub const MAX_SUSPECTS: usize = 12;

/// Processes the detector calls leaking or growing: leaking first, then the soonest to reach
/// their limit, then the fastest growing.
pub fn suspects(processes: &[Process]) -> Vec<&Process> {
    let mut out: Vec<&Process> = processes
        .iter()
        .filter(|p| {
            p.leak
                .as_ref()
                .is_some_and(|a| a.verdict != Verdict::Stable)
        })
        .collect();
    out.sort_by(|a, b| {
        let leaking = |p: &Process| p.leak.as_ref().map(|l| l.verdict) != Some(Verdict::Leaking);
        let ttl = |p: &Process| p.time_to_limit_seconds.unwrap_or(f64::INFINITY);
        let rate = |p: &Process| p.leak.as_ref().map_or(0.0, |l| l.rate_bytes_per_sec);
        leaking(a)
            .cmp(&leaking(b))
            .then(ttl(a).total_cmp(&ttl(b)))
            .then(rate(b).total_cmp(&rate(a)))
    });
    out.truncate(MAX_SUSPECTS);
    out
}

/// The names a process's owners know it by: Compose service, container, pod, systemd unit,
/// worker pool.
pub fn names(p: &Process) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(c) = &p.container {
        match (&c.compose_project, &c.compose_service) {
            (Some(project), Some(service)) => out.push(("compose", format!("{project}/{service}"))),
            (None, Some(service)) => out.push(("compose", service.clone())),
            _ => {}
        }
        out.push(("container", c.name.clone()));
        out.push(("image", c.image.clone()));
    } else if let Some(id) = &p.container_id {
        out.push(("container", id.chars().take(12).collect()));
    }
    if let Some(pod) = &p.pod {
        out.push(("pod", format!("{}/{}", pod.namespace, pod.name)));
    } else if let Some(uid) = &p.pod_uid {
        out.push(("pod uid", uid.clone()));
    }
    if let Some(unit) = &p.unit {
        out.push(("unit", unit.clone()));
    }
    if let Some(pool) = &p.pool {
        out.push(("pool", pool.clone()));
    }
    out
}

fn names_html(p: &Process) -> String {
    let names = names(p);
    if names.is_empty() {
        return r#"<span class="muted">no container, unit or pool</span>"#.into();
    }
    names
        .iter()
        .map(|(k, v)| {
            format!(
                r#"<span class="name"><span class="k">{k}</span> {}</span>"#,
                escape(v)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn verdict_badge(v: Option<Verdict>) -> String {
    match v {
        Some(v) => format!(r#"<span class="verdict {0}">{0}</span>"#, v.as_str()),
        None => r#"<span class="verdict none">not judged yet</span>"#.into(),
    }
}

fn limit_source(s: Option<LimitSource>) -> &'static str {
    match s {
        Some(LimitSource::Cgroup) => "memory cgroup limit",
        Some(LimitSource::Configured) => "--limit given to the agent",
        None => "limit of unknown source",
    }
}

fn limit_text(p: &Process) -> String {
    match p.memory_limit_bytes {
        Some(l) => format!("{} ({})", bytes(l), limit_source(p.memory_limit_source)),
        None => "none known (no cgroup limit, no --limit)".into(),
    }
}

fn time_to_limit_text(p: &Process) -> String {
    match (p.time_to_limit_seconds, p.memory_limit_bytes) {
        (Some(s), Some(l)) => format!(
            "{} at the current rate, to the {} {}",
            duration(s),
            bytes(l),
            limit_source(p.memory_limit_source)
        ),
        (Some(s), None) => format!("{} at the current rate", duration(s)),
        (None, Some(_)) => "not growing towards it".into(),
        (None, None) => "no limit known".into(),
    }
}

/// The agent's answer to a section, or a line saying why it is missing.
fn unavailable(what: &str, why: &str) -> String {
    format!(
        r#"<p class="missing">Could not read {what} from the agent: {}</p>"#,
        escape(why)
    )
}

pub fn render(i: &Incident) -> String {
    let host_name = match &i.host {
        Ok(h) if !h.hostname.is_empty() => h.hostname.clone(),
        _ => "unknown host".into(),
    };
    let suspects_n = i.suspects.len();
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>leakscope incident report: {host}</title>
<style>{STYLE}</style></head><body>
<header><h1>Memory incident report: <span class="host">{host}</span></h1>
<p class="meta">Made {when} by <code>leakscope report</code> from the agent at <code>{agent}</code>.</p>
<p class="summary">{summary}</p></header>
"#,
        host = escape(&host_name),
        when = timestamp(i.generated),
        agent = escape(&i.agent),
        summary = summary(i, suspects_n),
    );
    s.push_str(&host_section(i));
    s.push_str(&suspects_section(i));
    s.push_str(&pools_section(&i.pools));
    s.push_str(&tasks_section(&i.tasks));
    s.push_str(&oom_section(&i.oom));
    s.push_str(&processes_section(&i.processes));
    s.push_str("</body></html>\n");
    s
}

fn summary(i: &Incident, suspects: usize) -> String {
    let mut parts = vec![match suspects {
        0 => "no process suspected of leaking".to_string(),
        1 => "1 process suspected of leaking".to_string(),
        n => format!("{n} processes suspected of leaking"),
    }];
    if let Ok(p) = &i.pools {
        let n = p.pools.iter().filter(|p| p.leak_suspected).count();
        parts.push(format!("{n} of {} worker pools suspected", p.pools.len()));
    }
    if let Ok(t) = &i.tasks {
        let n = t.tasks.iter().filter(|t| t.leak_suspected).count();
        parts.push(format!("{n} of {} task types suspected", t.tasks.len()));
    }
    if let Ok(o) = &i.oom {
        parts.push(format!("{} recent OOM kills", o.oom_kills.len()));
    }
    parts.join(" · ")
}

fn host_section(i: &Incident) -> String {
    let mut s = String::from(r#"<section id="host"><h2>Agent and host</h2><table class="facts">"#);
    match &i.health {
        Ok(text) => {
            let text = text.trim();
            let (class, shown) = match text.strip_prefix("degraded: ") {
                Some(reasons) => ("degraded", format!("degraded: {reasons}")),
                None => ("ok", text.to_string()),
            };
            let _ = write!(
                s,
                r#"<tr><th>agent health</th><td class="health {class}">{}</td></tr>"#,
                escape(&shown)
            );
        }
        Err(e) => {
            let _ = write!(
                s,
                r#"<tr><th>agent health</th><td class="missing">unknown: {}</td></tr>"#,
                escape(e)
            );
        }
    }
    match &i.host {
        Ok(h) => {
            let m = &h.memory;
            let total = m.total_bytes.max(1) as f64;
            let available = match m.available_bytes {
                Some(a) => format!("{} ({} of total)", bytes(a), percent(a as f64 / total)),
                None => "not reported by this kernel".into(),
            };
            let swap = if m.swap_total_bytes == 0 {
                "none".to_string()
            } else {
                format!(
                    "{} used of {}",
                    bytes(m.swap_total_bytes.saturating_sub(m.swap_free_bytes)),
                    bytes(m.swap_total_bytes)
                )
            };
            let _ = write!(
                s,
                "<tr><th>host</th><td>{}</td></tr><tr><th>host memory</th><td>{} total</td></tr>\
                 <tr><th>available</th><td>{available}</td></tr>\
                 <tr><th>free</th><td>{}</td></tr><tr><th>page cache and buffers</th><td>{}</td></tr>\
                 <tr><th>swap</th><td>{swap}</td></tr>",
                escape(&h.hostname),
                bytes(m.total_bytes),
                bytes(m.free_bytes),
                bytes(m.cached_bytes),
            );
        }
        Err(e) => {
            let _ = write!(
                s,
                r#"<tr><th>host memory</th><td class="missing">unknown: {}</td></tr>"#,
                escape(e)
            );
        }
    }
    s.push_str("</table></section>\n");
    s
}

fn suspects_section(i: &Incident) -> String {
    let mut s = String::from(r#"<section id="suspects"><h2>Suspects</h2>"#);
    if i.suspects.is_empty() {
        s.push_str(
            r#"<p class="empty">No process is suspected of leaking: the detector calls every watched process stable, or has not watched any long enough to judge.</p>"#,
        );
    }
    for suspect in &i.suspects {
        s.push_str(&suspect_card(suspect));
    }
    s.push_str("</section>\n");
    s
}

fn suspect_card(suspect: &Suspect) -> String {
    let p = &suspect.process;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<article class="suspect" id="pid-{pid}"><h3>pid {pid} <code class="comm">{comm}</code> {badge}</h3><p class="names">{names}</p><table class="facts">"#,
        pid = p.pid,
        comm = escape(&p.comm),
        badge = verdict_badge(p.leak.as_ref().map(|l| l.verdict)),
        names = names_html(p),
    );
    let _ = write!(
        s,
        "<tr><th>resident now</th><td>{} (peak {})</td></tr>",
        bytes(p.resident_bytes),
        bytes(p.peak_rss_bytes)
    );
    if let Some(a) = &p.leak {
        let _ = write!(
            s,
            "<tr><th>growth rate</th><td>{}</td></tr>\
             <tr><th>verdict</th><td>{}, {} confidence</td></tr>\
             <tr><th>evidence</th><td>the lowest resident size rose {} over {}, \
             {} of the window's slices rising; {} samples</td></tr>",
            rate(a.rate_bytes_per_sec),
            a.verdict.as_str(),
            percent(a.confidence),
            signed_bytes(a.floor_rise_bytes as i64),
            duration(a.window_secs),
            percent(a.consistency),
            a.samples,
        );
    }
    let _ = write!(
        s,
        "<tr><th>memory limit</th><td>{}</td></tr><tr><th>time to limit</th><td>{}</td></tr></table>",
        limit_text(p),
        time_to_limit_text(p)
    );
    match &suspect.history {
        Ok(h) => match history_chart(p, h).figure() {
            Some(figure) => s.push_str(&figure),
            None => s.push_str(r#"<p class="empty">The agent kept no history for it yet.</p>"#),
        },
        Err(e) => s.push_str(&unavailable("its memory history", e)),
    }
    s.push_str("<h4>Growth flame graph</h4>");
    match &suspect.flame {
        Flame::Svg(svg) => {
            let _ = write!(
                s,
                r#"<p class="note">Widths are bytes: the widest frames added the most memory.</p><img class="flame" alt="growth flame graph of pid {} ({})" src="data:image/svg+xml;base64,{}">"#,
                p.pid,
                escape(&p.comm),
                base64::engine::general_purpose::STANDARD.encode(svg)
            );
        }
        Flame::Missing(why) => {
            let _ = write!(
                s,
                r#"<p class="missing">No flame graph: {}</p>"#,
                escape(why)
            );
        }
    }
    s.push_str("</article>\n");
    s
}

pub fn history_chart(p: &Process, h: &HistoryResponse) -> TimeChart {
    let mut lines = vec![Line {
        label: "resident memory".into(),
        class: "rss",
        points: h
            .points
            .iter()
            .map(|pt| (pt.unix_time_seconds, pt.resident_bytes as f64))
            .collect(),
    }];
    if !h.floors.is_empty() {
        lines.push(Line {
            label: "floor the verdict rests on (lowest size per slice)".into(),
            class: "floor",
            points: h
                .floors
                .iter()
                .flat_map(|f| {
                    [
                        (f.start_unix_time_seconds, f.floor_bytes as f64),
                        (f.end_unix_time_seconds, f.floor_bytes as f64),
                    ]
                })
                .collect(),
        });
    }
    let levels = p
        .memory_limit_bytes
        .map(|l| Level {
            label: format!(
                "limit {} ({})",
                bytes(l),
                limit_source(p.memory_limit_source)
            ),
            class: "limit",
            bytes: l as f64,
        })
        .into_iter()
        .collect();
    TimeChart {
        title: format!("resident memory of pid {} ({})", p.pid, p.comm),
        y_title: "resident memory".into(),
        lines,
        markers: Vec::new(),
        levels,
    }
}

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

fn pools_section(pools: &Fetched<PoolsResponse>) -> String {
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
            r#"<p class="empty">No worker pool has recycled a child since the agent started.</p>"#,
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

fn tasks_section(tasks: &Fetched<TasksResponse>) -> String {
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

fn oom_section(oom: &Fetched<OomResponse>) -> String {
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

fn processes_section(r: &ProcessesResponse) -> String {
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

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d232b;margin:0 auto;max-width:1240px;padding:16px 24px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:2px solid #d8dee6;padding-bottom:4px;margin-top:28px}
h3{font-size:16px;margin:8px 0}h4{font-size:14px;margin:14px 0 4px}
.meta,.note,.muted{color:#5b6673}.summary{font-weight:600}
code{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f2f4f7;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;margin:6px 0}th,td{text-align:left;padding:3px 10px 3px 0;vertical-align:top}
table.list th{border-bottom:1px solid #c9d1db}table.list td{border-bottom:1px solid #eef1f4}
table.facts th{font-weight:500;color:#5b6673;width:170px}
article{border:1px solid #d8dee6;border-radius:6px;padding:10px 14px;margin:12px 0}
.verdict{font-size:12px;font-weight:600;padding:1px 7px;border-radius:9px;vertical-align:middle}
.verdict.leaking{background:#fde2e1;color:#a4161a}.verdict.growing{background:#fff1cc;color:#8a5a00}
.verdict.stable{background:#ddf4e4;color:#1b6b35}.verdict.none{background:#eef1f4;color:#5b6673}
.name{display:inline-block;background:#eef3fb;border-radius:4px;padding:0 6px;margin:0 4px 2px 0}.name .k{color:#5b6673;font-size:12px}
.missing{color:#a4161a}.empty{color:#5b6673;font-style:italic}.health.ok{color:#1b6b35}.health.degraded{color:#a4161a}
figure{margin:8px 0}svg.chart{max-width:100%;height:auto;font:11px system-ui,sans-serif}
svg .grid{stroke:#e6eaef}svg .frame{fill:none;stroke:#9aa5b1}svg .tick{fill:#3d4753}svg .axis-title{fill:#3d4753;font-weight:600}
svg .series{fill:none;stroke-width:2}svg .series.rss{stroke:#1f6feb}svg .series.floor{stroke:#e8590c;stroke-dasharray:5 3}
svg .level.limit{stroke:#a4161a;stroke-width:1.5;stroke-dasharray:8 4}
svg .marker{stroke:#fff;stroke-width:1}
svg .marker.memory{fill:#e8590c}svg .marker.oom{fill:#a4161a}svg .marker.crash{fill:#7048e8}svg .marker.clean{fill:#2f9e44}
.legend .key{margin-right:16px;font-size:12px}.legend .key::before{content:"";display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}
.key.rss::before{background:#1f6feb}.key.floor::before{background:#e8590c}.key.limit::before{background:#a4161a}
.key.memory::before{background:#e8590c}.key.oom::before{background:#a4161a}.key.crash::before{background:#7048e8}.key.clean::before{background:#2f9e44}
img.flame{max-width:100%;border:1px solid #d8dee6}
"#;

#[cfg(test)]
mod tests {
    use leakscope_api::{
        Assessment, HistoryPoint, HostMemory, Job, MarkerCounters, OomKill, OomVictim, Overflow,
        PoolExit, Retained, RssBytes, RssSources, Runtime, Series, Source, Task, TaskVerdict,
        processes::ContainerName,
    };

    use super::*;

    const MIB: u64 = 1 << 20;
    const T0: f64 = 1_700_000_000.0;

    fn process(pid: u32, comm: &str, verdict: Option<Verdict>) -> Process {
        Process {
            pid,
            ppid: 1,
            comm: comm.into(),
            start_time_seconds: T0,
            cgroup_id: 1,
            cgroup: None,
            runtime: Runtime::Docker,
            container_id: Some("ab".repeat(32)),
            container: Some(ContainerName {
                name: "shop-worker-1".into(),
                image: "shop:1".into(),
                compose_project: Some("shop".into()),
                compose_service: Some("worker".into()),
            }),
            pod_uid: None,
            pod: None,
            qos: None,
            unit: None,
            rss_bytes: RssBytes::default(),
            resident_bytes: 300 * MIB,
            peak_rss_bytes: 310 * MIB,
            leak: verdict.map(|verdict| Assessment {
                verdict,
                confidence: 0.9,
                rate_bytes_per_sec: (10 * MIB) as f64 / 60.0,
                window_secs: 600.0,
                floor_rise_bytes: (100 * MIB) as f64,
                consistency: 1.0,
                samples: 600,
            }),
            memory_limit_bytes: Some(1 << 30),
            memory_limit_source: Some(LimitSource::Cgroup),
            time_to_limit_seconds: verdict.map(|_| 4380.0),
            pool: None,
            source: RssSources {
                anon: Source::Kernel,
                file: Source::Kernel,
                shmem: Source::Kernel,
                swap: Source::Kernel,
            },
            series: Series::Own,
            threads: None,
            growth_sampled: false,
        }
    }

    fn history(pid: u32) -> HistoryResponse {
        HistoryResponse {
            pid,
            comm: "celery".into(),
            start_time_seconds: T0,
            points: (0..60)
                .map(|i| HistoryPoint {
                    unix_time_seconds: T0 + 10.0 * i as f64,
                    resident_bytes: (200 + i) * MIB,
                    min_resident_bytes: (200 + i) * MIB,
                    samples: 1,
                })
                .collect(),
            floors: Vec::new(),
            rate_bytes_per_sec: Some(1.0),
            verdict: Some(Verdict::Leaking),
        }
    }

    fn hostile_task() -> Task {
        Task {
            task: "<script>alert(1)</script>".into(),
            runs: 40,
            failed_runs: 0,
            abandoned_jobs: 0,
            leak_suspected: true,
            retained_bytes_per_run: (MIB / 2) as i64,
            retained_bytes: Retained {
                runs: 40,
                median: 1,
                mean: 1.0,
                p90: 1,
                min: 0,
                max: 1,
                last: None,
            },
            verdict: TaskVerdict {
                leak_suspected: true,
                runs_considered: 40,
                retaining_runs: 40,
                median_retained_bytes: 1,
                retained_total_bytes: 40,
                floor_rise_bytes: 40,
                evidence: "kept <b>512 KiB</b> & more".into(),
            },
            recent_jobs: Vec::<Job>::new(),
        }
    }

    fn incident() -> Incident {
        let leaking = process(7, "<img src=x>", Some(Verdict::Leaking));
        Incident {
            agent: "http://127.0.0.1:9633".into(),
            generated: T0 + 700.0,
            health: Ok("ok\n".into()),
            host: Ok(HostResponse {
                hostname: "node-1".into(),
                memory: HostMemory {
                    total_bytes: 8 << 30,
                    free_bytes: 1 << 30,
                    available_bytes: Some(2 << 30),
                    cached_bytes: 1 << 30,
                    swap_total_bytes: 0,
                    swap_free_bytes: 0,
                },
            }),
            processes: ProcessesResponse {
                processes: vec![leaking.clone(), process(8, "steady", Some(Verdict::Stable))],
                overflow: Overflow::default(),
            },
            suspects: vec![Suspect {
                process: leaking,
                history: Ok(history(7)),
                flame: Flame::Missing(
                    "profiling is off: start the agent with --enable-profiling".into(),
                ),
            }],
            pools: Ok(PoolsResponse {
                pools: Vec::new(),
                overflow_recycles: 0,
            }),
            tasks: Ok(TasksResponse {
                socket: None,
                markers: MarkerCounters {
                    received: 0,
                    dropped: Default::default(),
                    queue_full: 0,
                    abandoned: 0,
                    tid_unverified: 0,
                    names_refused: Default::default(),
                },
                open_jobs: 0,
                tasks: vec![hostile_task()],
            }),
            oom: Ok(OomResponse {
                oom_kills: Vec::new(),
            }),
        }
    }

    #[test]
    fn names_from_the_agent_render_as_text_never_as_markup() {
        let html = render(&incident());
        // The page has no script of its own, so any `<script` would be an injected one.
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("kept &lt;b&gt;512 KiB&lt;/b&gt; &amp; more"));
        assert!(!html.contains("<img src=x>"));
        assert!(html.contains("&lt;img src=x&gt;"));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn the_page_loads_nothing_from_anywhere() {
        let html = render(&incident());
        assert!(html.contains("default-src 'none'"));
        for fetch in ["src=\"http", "href=", "url(", "@import", "<link", "<iframe"] {
            assert!(!html.contains(fetch), "{fetch} in the page");
        }
    }

    #[test]
    fn a_suspect_shows_its_names_evidence_limit_and_chart() {
        let html = render(&incident());
        for want in [
            "pid 7",
            "compose</span> shop/worker",
            "container</span> shop-worker-1",
            "+10.0 MiB/min",
            "leaking, 90% confidence",
            "rose 100.0 MiB over 10m00s",
            "1.0 GiB (memory cgroup limit)",
            "1h13m at the current rate, to the 1.0 GiB memory cgroup limit",
            "resident memory (MiB)",
            ">240 MiB</text>",
            "limit 1.0 GiB (memory cgroup limit) (above the chart)",
            "No flame graph: profiling is off",
            "available</th><td>2.0 GiB (25% of total)",
            "1 process suspected of leaking",
        ] {
            assert!(html.contains(want), "{want} missing from:\n{html}");
        }
        // The stable process is listed, but is not a suspect.
        assert!(!html.contains("id=\"pid-8\""));
        assert!(html.contains("<td>8</td>"));
    }

    #[test]
    fn empty_and_unreadable_sections_say_so() {
        let mut i = incident();
        i.suspects.clear();
        i.tasks = Err("403 Forbidden: the process API is served on loopback only".into());
        i.oom = Ok(OomResponse {
            oom_kills: Vec::new(),
        });
        i.host = Err("404 Not Found".into());
        let html = render(&i);
        for want in [
            "No process is suspected of leaking",
            "No worker pool has recycled a child",
            "Could not read the task verdicts from the agent: 403 Forbidden: the process API",
            "No OOM kill recorded",
            "host memory</th><td class=\"missing\">unknown: 404 Not Found",
        ] {
            assert!(html.contains(want), "{want} missing from:\n{html}");
        }
    }

    #[test]
    fn a_flame_graph_is_embedded_as_an_image_and_its_script_cannot_run() {
        let mut i = incident();
        i.suspects[0].flame = Flame::Svg(b"<svg><script>x()</script></svg>".to_vec());
        let html = render(&i);
        assert!(html.contains("<img class=\"flame\""));
        assert!(html.contains("src=\"data:image/svg+xml;base64,"));
        assert!(!html.contains("<script"));
    }

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
            }],
            overflow_recycles: 0,
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
        };
        assert!(recycles_chart(&pool).figure().is_none());
        let html = pools_section(&Ok(PoolsResponse {
            pools: vec![pool],
            overflow_recycles: 0,
        }));
        assert!(!html.contains("<svg"), "{html}");
        assert!(html.contains("<td>11</td><td>unknown time</td>"), "{html}");
    }

    #[test]
    fn suspects_are_leaking_first_then_soonest_to_their_limit() {
        let mut growing = process(1, "a", Some(Verdict::Growing));
        growing.time_to_limit_seconds = Some(10.0);
        let mut late = process(2, "b", Some(Verdict::Leaking));
        late.time_to_limit_seconds = Some(9000.0);
        let mut soon = process(3, "c", Some(Verdict::Leaking));
        soon.time_to_limit_seconds = Some(600.0);
        let stable = process(4, "d", Some(Verdict::Stable));
        let unjudged = process(5, "e", None);
        let all = [growing, late, soon, stable, unjudged];
        let order: Vec<u32> = suspects(&all).iter().map(|p| p.pid).collect();
        assert_eq!(order, [3, 2, 1]);
    }
}
