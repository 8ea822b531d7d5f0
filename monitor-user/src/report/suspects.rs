//! The suspects: processes the detector calls leaking or growing, each with its names,
//! evidence, limit, RSS history chart and growth flame graph.

use std::fmt::Write as _;

use base64::Engine as _;
use leakscope_api::{HistoryResponse, Process, Verdict};

use super::{
    chart::{Level, Line, TimeChart},
    format::{bytes, duration, escape, percent, rate, signed_bytes},
    page::{Flame, Suspect, limit_source, names_html, unavailable, verdict_badge},
};

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

pub fn section(suspects: &[Suspect]) -> String {
    let mut s = String::from(r#"<section id="suspects"><h2>Suspects</h2>"#);
    if suspects.is_empty() {
        s.push_str(
            r#"<p class="empty">No process is suspected of leaking: the detector calls every watched process stable, or has not watched any long enough to judge.</p>"#,
        );
    }
    for suspect in suspects {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::process;

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
