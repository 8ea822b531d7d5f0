//! Draws an [`App`] with ratatui: a title line, the current screen, a line of keys. Every
//! state draws something: before the first answer, "connecting"; without an agent, the
//! client's message saying how to start one.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{
        Block, Borders, Cell, Paragraph, Row as TableRow, Sparkline, Table, TableState, Wrap,
    },
};

use super::{
    app::{App, Connection, Profile, Screen},
    detail,
    view::{self, COLUMNS, Row},
};

pub fn draw(frame: &mut Frame, app: &mut App) {
    let [title, body, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(title_line(app)), title);
    frame.render_widget(
        Paragraph::new(keys_line(app)).style(Style::default().add_modifier(Modifier::REVERSED)),
        keys,
    );
    app.page = usize::from(body.height.saturating_sub(2)).max(1);
    match (&app.snapshot, &app.connection) {
        (None, Connection::Connecting) => message(
            frame,
            body,
            &[format!("connecting to the agent at {} …", app.agent)],
        ),
        (None, Connection::NotRunning) => {
            message(frame, body, &detail::not_running(&app.agent, &app.every))
        }
        (None, Connection::Failed(why)) => message(
            frame,
            body,
            &[
                why.clone(),
                String::new(),
                format!("Trying again every {}; q quits.", app.every),
            ],
        ),
        _ => match app.screen().clone() {
            Screen::Table => list(frame, body, app, &[]),
            Screen::Group(kind, name) => {
                let head = app
                    .snapshot
                    .as_ref()
                    .map(|s| detail::group(s, kind, &name))
                    .unwrap_or_default();
                list(frame, body, app, &head);
            }
            Screen::Process(pid) => process(frame, body, app, pid),
            Screen::Profile(pid) => profile(frame, body, app, pid),
            Screen::Help => {
                let lines: Vec<String> = detail::HELP.iter().map(|s| s.to_string()).collect();
                scrolled(frame, body, app, lines);
            }
        },
    }
}

fn title_line(app: &App) -> Line<'static> {
    let status = match &app.connection {
        Connection::Connecting => "connecting".to_string(),
        Connection::Ok => {
            let s = app.snapshot.as_ref();
            let n = s.map_or(0, |s| s.processes.len());
            let more = s.map_or(0, |s| s.overflow_processes);
            if more > 0 {
                format!("{n} procs (+{more} overflow)")
            } else {
                format!("{n} procs")
            }
        }
        // The data shown is from the last answer; say that it is stale.
        Connection::Failed(_) | Connection::NotRunning if app.snapshot.is_some() => {
            "AGENT UNREACHABLE, data is old".into()
        }
        Connection::NotRunning => "no agent".into(),
        Connection::Failed(_) => "agent error".into(),
    };
    let arrow = if app.reverse { "↓" } else { "↑" };
    let mut line = format!(
        "leakscope · {} · {status} · sort {}{arrow}",
        app.agent,
        app.sort.header()
    );
    if app.editing_filter || !app.filter.is_empty() {
        line.push_str(&format!(" · /{}", app.filter));
        if app.editing_filter {
            line.push('_');
        }
    }
    Line::from(view::printable(&line))
}

fn keys_line(app: &App) -> String {
    if app.editing_filter {
        return "type words to match · Enter keep · Esc clear".into();
    }
    match app.screen() {
        Screen::Table | Screen::Group(..) => {
            "q quit ? help Enter open p profile / filter t m g v n sort r rev".into()
        }
        Screen::Process(_) => "q quit ? help Esc back p growth profile ↑↓ scroll".into(),
        Screen::Profile(_) => "q quit ? help Esc back p again ↑↓ scroll".into(),
        Screen::Help => "q quit ? or Esc close help".into(),
    }
}

fn message(frame: &mut Frame, area: Rect, lines: &[String]) {
    let text: Vec<Line> = lines
        .iter()
        .map(|l| Line::from(view::printable(l)))
        .collect();
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL)),
        area,
    );
}

/// A text screen, scrolled to `first`.
fn text(frame: &mut Frame, area: Rect, lines: Vec<String>, first: usize) {
    let shown = usize::from(area.height);
    let first = first.min(lines.len().saturating_sub(shown));
    let text: Vec<Line> = lines
        .into_iter()
        .skip(first)
        .map(|l| Line::from(view::printable(&l)))
        .collect();
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }), area);
}

/// A text screen scrolled by the arrows (the app's selection is its first line shown).
fn scrolled(frame: &mut Frame, area: Rect, app: &mut App, lines: Vec<String>) {
    app.clamp_scroll(lines.len().saturating_sub(usize::from(area.height)));
    text(frame, area, lines, app.selected());
}

/// The table of rows, under `head` lines; problems of the snapshot at the bottom.
fn list(frame: &mut Frame, area: Rect, app: &App, head: &[String]) {
    let problems = app
        .snapshot
        .as_ref()
        .map(|s| s.problems.clone())
        .unwrap_or_default();
    let head_height = (head.len() as u16).min(area.height / 2);
    let [head_area, table_area, problem_area] = Layout::vertical([
        Constraint::Length(head_height),
        Constraint::Min(2),
        Constraint::Length(problems.len().min(2) as u16),
    ])
    .areas(area);
    text(frame, head_area, head.to_vec(), 0);
    text(frame, problem_area, problems, 0);
    let rows = app.rows();
    if rows.is_empty() {
        let why = if !app.filter.is_empty() {
            format!("Nothing matches /{} (Esc clears the filter).", app.filter)
        } else if matches!(app.screen(), Screen::Group(..)) {
            "No process of this group is listed now (its children are not selected by the \
             agent's --match, or have all exited)."
                .to_string()
        } else {
            "The agent watches no process yet (see its --match and selection).".to_string()
        };
        frame.render_widget(Paragraph::new(why).wrap(Wrap { trim: false }), table_area);
        return;
    }
    frame.render_stateful_widget(
        table(&rows, app),
        table_area,
        &mut TableState::default().with_selected(Some(app.selected())),
    );
}

fn table<'a>(rows: &[Row], app: &App) -> Table<'a> {
    let widths: Vec<Constraint> = COLUMNS
        .iter()
        .map(|(_, w, _)| {
            if *w == 0 {
                Constraint::Min(8)
            } else {
                Constraint::Length(*w)
            }
        })
        .collect();
    let sorted = app.sort.header();
    let header = TableRow::new(COLUMNS.iter().map(|(h, w, right)| {
        let h = if *h == sorted {
            format!("{h}{}", if app.reverse { "↓" } else { "↑" })
        } else {
            h.to_string()
        };
        cell(&h, *w, *right)
    }))
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let body = rows.iter().map(|r| {
        let style = match r.verdict {
            Some(leakscope_api::Verdict::Leaking) => Style::default().add_modifier(Modifier::BOLD),
            _ => Style::default(),
        };
        TableRow::new(
            view::cells(r)
                .iter()
                .zip(COLUMNS)
                .map(|(c, (_, w, right))| cell(c, w, right)),
        )
        .style(style)
    });
    Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        // Also a symbol: the selection must show without colours or reverse video.
        .highlight_symbol(SELECTED)
        .highlight_spacing(ratatui::widgets::HighlightSpacing::Always)
}

/// Marks the selected row, before its KIND.
pub const SELECTED: &str = ">";

fn cell<'a>(text: &str, width: u16, right: bool) -> Cell<'a> {
    let text = view::printable(text);
    if right && width > 0 {
        Cell::from(format!("{text:>w$}", w = usize::from(width)))
    } else {
        Cell::from(text)
    }
}

fn process(frame: &mut Frame, area: Rect, app: &mut App, pid: u32) {
    let Some(snapshot) = &app.snapshot else {
        return;
    };
    let mut lines = detail::process(snapshot, pid, app.profile_seconds);
    let history = match &app.history {
        Some((p, Ok(h))) if *p == pid && !h.points.is_empty() => Some(h),
        Some((p, Ok(h))) if *p == pid => {
            lines.push(detail::history(h));
            None
        }
        Some((p, Err(e))) if *p == pid => {
            lines.push(format!("history: {e}"));
            None
        }
        _ => None,
    };
    let Some(h) = history.cloned() else {
        scrolled(frame, area, app, lines);
        return;
    };
    let [spark, caption, rest] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Min(1),
    ])
    .areas(area);
    // The newest points, as many as columns fit.
    let data: Vec<u64> = h.points.iter().map(|p| p.resident_bytes).collect();
    let from = data.len().saturating_sub(usize::from(spark.width));
    let low = data[from..].iter().min().copied().unwrap_or(0);
    let high = data[from..].iter().max().copied().unwrap_or(0);
    // Drawn above the lowest point, so a rise of a few MiB on hundreds is visible; but a
    // wobble of less than 5% stays a flat line rather than filling the box.
    let shifted: Vec<u64> = data[from..].iter().map(|v| v - low + 1).collect();
    let max = (high - low).max(high / 20) + 1;
    frame.render_widget(Sparkline::default().data(&shifted).max(max), spark);
    frame.render_widget(Paragraph::new(detail::history(&h)), caption);
    scrolled(frame, rest, app, lines);
}

fn profile(frame: &mut Frame, area: Rect, app: &mut App, pid: u32) {
    let lines = match &app.profile {
        Some((p, state)) if *p == pid => match state {
            Profile::Running {
                seconds: Some(seconds),
            } => vec![format!(
                "taking a growth profile of pid {pid} for {seconds}s (page faults that add RSS, \
                 by stack) …"
            )],
            Profile::Running { seconds: None } => vec![format!(
                "reading the growth stacks the agent has sampled of pid {pid} …"
            )],
            Profile::Done(body) => {
                let mut out = vec![format!("growth profile of pid {pid}, top stacks:")];
                out.extend(body.lines().map(str::to_string));
                out
            }
            Profile::Failed(why) => vec![format!("no profile of pid {pid}:"), why.clone()],
        },
        _ => vec![format!("press p to take a growth profile of pid {pid}")],
    };
    scrolled(frame, area, app, lines);
}

#[cfg(test)]
mod tests {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::{Terminal, backend::TestBackend};

    use super::{super::view::tests::snapshot, *};

    fn screen(app: &mut App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn never_a_blank_screen() {
        let mut app = App::new("http://127.0.0.1:1", 5);
        assert!(screen(&mut app).contains("connecting to the agent at http://127.0.0.1:1"));
        app.set_not_running();
        let s = screen(&mut app);
        assert!(
            s.contains("No leakscope agent is listening at http://127.0.0.1:1."),
            "{s}"
        );
        assert!(s.contains("sudo leakscope run"), "{s}");
        assert!(s.contains("no agent"), "{s}");
        app.set_failure("the agent at x asks for credentials".into());
        let s = screen(&mut app);
        assert!(s.contains("asks for credentials"), "{s}");
        app.set_snapshot(Default::default());
        let s = screen(&mut app);
        assert!(s.contains("watches no process yet"), "{s}");
    }

    #[test]
    fn the_table_fits_80_by_24() {
        let mut app = App::new("http://127.0.0.1:9633", 5);
        app.set_snapshot(snapshot());
        let s = screen(&mut app);
        for want in [
            "KIND",
            "TO LIMIT↑",
            "LIMIT",
            "shop/worker",
            "100/celery",
            "leaking",
            "5m00s",
            "cgroup",
            "90%",
        ] {
            assert!(s.contains(want), "{want:?} not on screen:\n{s}");
        }
        // The process with the soonest limit is the first process row.
        let first_proc = s
            .lines()
            .find(|l| {
                l.trim_start_matches(SELECTED)
                    .trim_start()
                    .starts_with("proc")
            })
            .unwrap();
        assert!(first_proc.contains("101"), "{s}");
        app.set_failure("gone".into());
        assert!(screen(&mut app).contains("AGENT UNREACHABLE"));
    }

    #[test]
    fn drill_down_screens_draw() {
        let mut app = App::new("a", 5);
        app.set_snapshot(snapshot());
        let pool_at = app
            .rows()
            .iter()
            .position(|r| r.name == "100/celery")
            .unwrap();
        for _ in 0..pool_at {
            app.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        }
        app.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        let s = screen(&mut app);
        assert!(s.contains("3 recycles"), "{s}");
        app.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        let s = screen(&mut app);
        assert!(s.contains("verdict leaking 90%"), "{s}");
        app.key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE));
        assert!(screen(&mut app).contains("taking a growth profile of pid 101"));
        app.profile = Some((
            101,
            Profile::Failed("profiling is off: start the agent with --enable-profiling".into()),
        ));
        assert!(screen(&mut app).contains("--enable-profiling"));
        app.key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE));
        assert!(screen(&mut app).contains("growth profile of the process"));
    }
}
