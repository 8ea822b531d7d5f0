//! The incident report as one HTML page, from what the agent's API returned. Pure functions of
//! their input: the page has no script, loads nothing (its Content-Security-Policy forbids it
//! should anything slip through), and every string that came from the agent is escaped.
//! The suspects are drawn in [`super::suspects`], the other sections in [`super::sections`].

use std::fmt::Write as _;

use leakscope_api::{
    HistoryResponse, HostResponse, LimitSource, OomResponse, PoolsResponse, Process,
    ProcessesResponse, TasksResponse, Verdict,
};

use super::{
    format::{bytes, escape, percent, timestamp},
    sections, suspects,
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

pub(super) fn names_html(p: &Process) -> String {
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

pub(super) fn verdict_badge(v: Option<Verdict>) -> String {
    match v {
        Some(v) => format!(r#"<span class="verdict {0}">{0}</span>"#, v.as_str()),
        None => r#"<span class="verdict none">not judged yet</span>"#.into(),
    }
}

pub(super) fn limit_source(s: Option<LimitSource>) -> &'static str {
    match s {
        Some(LimitSource::Cgroup) => "memory cgroup limit",
        Some(LimitSource::Configured) => "--limit given to the agent",
        None => "limit of unknown source",
    }
}

/// The agent's answer to a section, or a line saying why it is missing.
pub(super) fn unavailable(what: &str, why: &str) -> String {
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
    s.push_str(&suspects::section(&i.suspects));
    s.push_str(&sections::pools(&i.pools));
    s.push_str(&sections::tasks(&i.tasks));
    s.push_str(&sections::oom(&i.oom));
    s.push_str(&sections::processes(&i.processes));
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

const STYLE: &str = include_str!("style.css");

#[cfg(test)]
mod tests {
    use leakscope_api::OomResponse;

    use super::*;
    use crate::report::fixtures::incident;

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
            "No worker pool: no parent runs two or more same-named workers",
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
}
