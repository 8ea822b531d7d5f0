//! `leakscope top --once`: the table as plain text, for a pipe, a ticket or a script.

use std::fmt::Write as _;

use super::view::{self, COLUMNS, Snapshot, SortBy};

/// Widest NAME column in text: long unit and Compose names stay readable, the line bounded.
const MAX_NAME: usize = 40;

/// One snapshot: a header line, the table (groups, then processes, soonest limit first),
/// then what the agent could not give.
pub fn render(agent: &str, snapshot: &Snapshot, filter: &str) -> String {
    let rows = view::table(snapshot, SortBy::TimeToLimit, false, filter);
    let mut out = String::new();
    let _ = write!(
        out,
        "leakscope top · {agent} · {} processes",
        snapshot.processes.len()
    );
    if snapshot.overflow_processes > 0 {
        let _ = write!(out, " (+{} in overflow)", snapshot.overflow_processes);
    }
    out.push('\n');
    let cells: Vec<[String; 9]> = rows.iter().map(view::cells).collect();
    let name_width = cells
        .iter()
        .map(|c| c[1].chars().count())
        .chain([4])
        .max()
        .unwrap_or(4)
        .min(MAX_NAME);
    let line = |cells: &[String]| -> String {
        let mut l = String::new();
        for (i, (cell, (_, width, right))) in cells.iter().zip(COLUMNS).enumerate() {
            let width = if width == 0 {
                name_width
            } else {
                usize::from(width)
            };
            let cell = view::fit(&view::printable(cell), width);
            if i > 0 {
                l.push(' ');
            }
            if right {
                let _ = write!(l, "{cell:>width$}");
            } else {
                let _ = write!(l, "{cell:<width$}");
            }
        }
        l.trim_end().to_string()
    };
    let header: Vec<String> = COLUMNS.iter().map(|(h, ..)| h.to_string()).collect();
    out.push_str(&line(&header));
    out.push('\n');
    if rows.is_empty() {
        out.push_str("(the agent watches no process yet)\n");
    }
    for c in &cells {
        out.push_str(&line(c));
        out.push('\n');
    }
    for p in &snapshot.problems {
        let _ = writeln!(out, "note: {}", view::printable(p));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{super::view::tests::snapshot, *};

    #[test]
    fn one_snapshot_as_aligned_text() {
        let text = render("http://127.0.0.1:9633", &snapshot(), "");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "leakscope top · http://127.0.0.1:9633 · 4 processes"
        );
        assert!(lines[1].starts_with("KIND NAME"), "{text}");
        assert!(lines[1].ends_with("TO LIMIT LIMIT"), "{text}");
        let leaking = lines
            .iter()
            .find(|l| l.starts_with("proc") && l.contains(" 101 "))
            .unwrap();
        for want in [
            "celery", "400M", "+2.0M/s", "leaking", "90%", "5m00s", "cgroup",
        ] {
            assert!(leaking.contains(want), "{want:?} not in {leaking:?}");
        }
        // Groups first, the soonest limit first among processes.
        let first_proc = lines.iter().position(|l| l.starts_with("proc")).unwrap();
        assert!(lines[first_proc].contains(" 101 "), "{text}");
        assert!(lines[2..first_proc].iter().all(|l| !l.starts_with("proc")));
        // Columns line up: every PID ends where the header's does.
        let pid_end = lines[1].find("PID").unwrap() + 3;
        assert!(leaking[..pid_end].ends_with("101"), "{text}");
        let filtered = render("x", &snapshot(), "gunicorn");
        assert_eq!(filtered.lines().count(), 3, "{filtered}");
        let mut evil = snapshot();
        evil.processes[0].comm = "x\x1b[2Jy".into();
        assert!(!render("x", &evil, "").contains('\x1b'));
        let empty = render("x", &Snapshot::default(), "");
        assert!(empty.contains("watches no process yet"), "{empty}");
    }
}
