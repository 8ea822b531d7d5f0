//! The state of the live view and what each key does to it, without a terminal: the event loop
//! (`mod.rs`) feeds it keys and the agent's answers, `tui.rs` draws it.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use leakscope_api::HistoryResponse;

use super::view::{self, GroupKind, Row, RowKey, Snapshot, SortBy};

/// A screen of the view; drill-downs push one, Esc pops it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screen {
    /// Groups, then processes.
    Table,
    /// A group's processes (a pool's children, with its recycles).
    Group(GroupKind, String),
    /// One process: its numbers, verdict evidence and task types.
    Process(u32),
    /// A growth profile of one process, taken on request.
    Profile(u32),
    Help,
}

#[derive(Clone, Debug)]
struct Level {
    screen: Screen,
    /// Selected row of a list, or first line shown of a text screen.
    selected: usize,
}

/// How the last request for the table went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// No answer yet.
    Connecting,
    Ok,
    /// Nothing listens at the address: no agent runs there.
    NotRunning,
    /// The last refresh failed, with the client's message (which says how to start an agent
    /// when none listens).
    Failed(String),
}

/// A profile's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// For `seconds`; None reads what the agent sampled on its own (`--auto-growth`).
    Running {
        seconds: Option<u64>,
    },
    Done(String),
    Failed(String),
}

/// What the event loop must do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Take a growth profile of this pid, for `seconds` (None: what the agent has sampled).
    Profile {
        pid: u32,
        seconds: Option<u64>,
    },
    /// Fetch this pid's RSS history.
    History(u32),
}

pub struct App {
    pub agent: String,
    pub snapshot: Option<Snapshot>,
    pub connection: Connection,
    pub sort: SortBy,
    pub reverse: bool,
    pub filter: String,
    /// `/` was pressed: keys go to the filter until Enter or Esc.
    pub editing_filter: bool,
    levels: Vec<Level>,
    pub profile: Option<(u32, Profile)>,
    pub history: Option<(u32, Result<HistoryResponse, String>)>,
    pub profile_seconds: u64,
    /// Rows a page key moves by; set by the drawing from the terminal's height.
    pub page: usize,
    /// The refresh interval, in words, for the screen without an agent.
    pub every: String,
}

impl App {
    pub fn new(agent: &str, profile_seconds: u64) -> Self {
        Self {
            agent: agent.to_string(),
            snapshot: None,
            connection: Connection::Connecting,
            sort: SortBy::TimeToLimit,
            reverse: false,
            filter: String::new(),
            editing_filter: false,
            levels: vec![Level {
                screen: Screen::Table,
                selected: 0,
            }],
            profile: None,
            history: None,
            profile_seconds,
            page: 10,
            every: "2s".into(),
        }
    }

    pub fn screen(&self) -> &Screen {
        &self
            .levels
            .last()
            .expect("the table is never popped")
            .screen
    }

    /// The selected row of a list screen, or the first line shown of a text screen.
    pub fn selected(&self) -> usize {
        self.levels.last().map_or(0, |l| l.selected)
    }

    /// The rows of the current list screen (empty on text screens).
    pub fn rows(&self) -> Vec<Row> {
        let Some(snapshot) = &self.snapshot else {
            return Vec::new();
        };
        match self.screen() {
            Screen::Table => view::table(snapshot, self.sort, self.reverse, &self.filter),
            Screen::Group(kind, name) => {
                let mut rows = view::filter(view::members(snapshot, *kind, name), &self.filter);
                view::sort(&mut rows, self.sort, self.reverse);
                rows
            }
            _ => Vec::new(),
        }
    }

    pub fn selected_row(&self) -> Option<Row> {
        self.rows().into_iter().nth(self.selected())
    }

    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
        self.connection = Connection::Ok;
        self.clamp();
    }

    pub fn set_failure(&mut self, message: String) {
        self.connection = Connection::Failed(message);
    }

    /// Nothing listens at the agent's address.
    pub fn set_not_running(&mut self) {
        self.connection = Connection::NotRunning;
    }

    fn is_list(&self) -> bool {
        matches!(self.screen(), Screen::Table | Screen::Group(..))
    }

    /// Keeps the selection on a row after the list shrank.
    fn clamp(&mut self) {
        if self.is_list() {
            let n = self.rows().len();
            if let Some(level) = self.levels.last_mut() {
                level.selected = level.selected.min(n.saturating_sub(1));
            }
        }
    }

    /// Keeps a text screen's scroll within its text: the drawing knows how long it is.
    pub fn clamp_scroll(&mut self, last_first_line: usize) {
        if !self.is_list()
            && let Some(level) = self.levels.last_mut()
        {
            level.selected = level.selected.min(last_first_line);
        }
    }

    fn push(&mut self, screen: Screen) {
        self.levels.push(Level {
            screen,
            selected: 0,
        });
    }

    fn pop(&mut self) {
        if self.levels.len() > 1 {
            self.levels.pop();
            self.clamp();
        }
    }

    fn move_by(&mut self, delta: isize) {
        let limit = if self.is_list() {
            self.rows().len().saturating_sub(1)
        } else {
            // Text screens scroll; the drawing stops at their last line.
            usize::MAX / 2
        };
        if let Some(level) = self.levels.last_mut() {
            level.selected = level.selected.saturating_add_signed(delta).min(limit);
        }
    }

    /// Opens what the selected row stands for.
    fn drill_down(&mut self) -> Action {
        let Some(row) = self.selected_row() else {
            return Action::None;
        };
        match row.key {
            RowKey::Group(kind, name) => {
                self.push(Screen::Group(kind, name));
                Action::None
            }
            RowKey::Process(pid) => {
                self.push(Screen::Process(pid));
                Action::History(pid)
            }
        }
    }

    /// The process a profile key would profile: the one shown, or the selected row's.
    fn profile_target(&self) -> Option<u32> {
        match self.screen() {
            Screen::Process(pid) | Screen::Profile(pid) => Some(*pid),
            _ => self.selected_row().and_then(|r| r.pid()),
        }
    }

    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.chars().count() < 64 => {
                    self.filter.push(c);
                }
                _ => {}
            }
            if let Some(level) = self.levels.last_mut() {
                level.selected = 0;
            }
            return Action::None;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') | KeyCode::F(1) => {
                if *self.screen() == Screen::Help {
                    self.pop();
                } else {
                    self.push(Screen::Help);
                }
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') => {
                if self.levels.len() == 1 && !self.filter.is_empty() {
                    self.filter.clear();
                } else {
                    self.pop();
                }
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::PageUp => self.move_by(-(self.page as isize)),
            KeyCode::PageDown | KeyCode::Char(' ') => self.move_by(self.page as isize),
            KeyCode::Home => self.move_by(isize::MIN / 2),
            KeyCode::End => self.move_by(isize::MAX / 2),
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') if self.is_list() => {
                return self.drill_down();
            }
            KeyCode::Char('/') if self.is_list() => {
                self.editing_filter = true;
            }
            KeyCode::Char('p') => {
                if let Some(pid) = self.profile_target() {
                    if *self.screen() != Screen::Profile(pid) {
                        self.push(Screen::Profile(pid));
                    }
                    // A profile already running for it is not asked for twice.
                    if !matches!(&self.profile, Some((p, Profile::Running { .. })) if *p == pid) {
                        // A process the agent samples already is answered from its samples.
                        let sampled = self.snapshot.as_ref().is_some_and(|s| {
                            s.processes.iter().any(|p| p.pid == pid && p.growth_sampled)
                        });
                        let seconds = (!sampled).then_some(self.profile_seconds);
                        self.profile = Some((pid, Profile::Running { seconds }));
                        return Action::Profile { pid, seconds };
                    }
                }
            }
            KeyCode::Char('r') if self.is_list() => self.reverse = !self.reverse,
            KeyCode::Char(c) if self.is_list() => {
                if let Some(by) = SortBy::from_key(c) {
                    if self.sort == by {
                        self.reverse = !self.reverse;
                    } else {
                        self.sort = by;
                        self.reverse = false;
                    }
                }
            }
            _ => {}
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::{super::view::tests::snapshot, *};

    fn press(app: &mut App, keys: &str) -> Vec<Action> {
        keys.chars()
            .map(|c| {
                let code = match c {
                    '\n' => KeyCode::Enter,
                    '\x1b' => KeyCode::Esc,
                    '\x08' => KeyCode::Backspace,
                    '↓' => KeyCode::Down,
                    '↑' => KeyCode::Up,
                    c => KeyCode::Char(c),
                };
                app.key(KeyEvent::new(code, KeyModifiers::NONE))
            })
            .collect()
    }

    fn app() -> App {
        let mut app = App::new("http://127.0.0.1:9633", 5);
        app.set_snapshot(snapshot());
        app
    }

    #[test]
    fn keys_sort_filter_and_quit() {
        let mut app = app();
        assert_eq!(app.sort, SortBy::TimeToLimit);
        press(&mut app, "m");
        assert_eq!((app.sort, app.reverse), (SortBy::Rss, false));
        press(&mut app, "m");
        assert!(app.reverse, "the same key again reverses");
        press(&mut app, "/gunic");
        assert!(app.editing_filter);
        // Keys that are commands elsewhere are text in the filter.
        assert_eq!(app.sort, SortBy::Rss);
        press(&mut app, "\x08corn\n");
        assert_eq!(app.filter, "gunicorn");
        let rows = app.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].pid(), Some(200));
        press(&mut app, "\x1b");
        assert!(app.filter.is_empty());
        assert_eq!(press(&mut app, "q"), [Action::Quit]);
    }

    #[test]
    fn drill_down_from_a_pool_to_a_child_and_its_profile() {
        let mut app = app();
        // Find the pool row and open it.
        let at = app
            .rows()
            .iter()
            .position(|r| r.name == "100/celery")
            .unwrap();
        for _ in 0..at {
            press(&mut app, "↓");
        }
        press(&mut app, "\n");
        assert_eq!(
            *app.screen(),
            Screen::Group(GroupKind::Pool, "100/celery".into())
        );
        assert_eq!(
            app.rows().iter().filter_map(Row::pid).collect::<Vec<_>>(),
            [101, 102],
            "children, soonest limit first"
        );
        assert_eq!(press(&mut app, "\n"), [Action::History(101)]);
        assert_eq!(*app.screen(), Screen::Process(101));
        assert_eq!(
            press(&mut app, "p"),
            [Action::Profile {
                pid: 101,
                seconds: Some(5)
            }]
        );
        assert_eq!(*app.screen(), Screen::Profile(101));
        // Pressed again while running: no second request.
        assert_eq!(press(&mut app, "p"), [Action::None]);
        app.profile = Some((101, Profile::Done("stacks".into())));
        let mut sampled = snapshot();
        sampled.processes[1].growth_sampled = true;
        app.set_snapshot(sampled);
        assert_eq!(
            press(&mut app, "p"),
            [Action::Profile {
                pid: 101,
                seconds: None
            }],
            "a new one, from what the agent sampled"
        );
        press(&mut app, "\x1b\x1b");
        assert_eq!(
            *app.screen(),
            Screen::Group(GroupKind::Pool, "100/celery".into())
        );
        press(&mut app, "\x1b\x1b\x1b");
        assert_eq!(*app.screen(), Screen::Table);
    }

    #[test]
    fn help_toggles_and_the_selection_survives_a_shrinking_list() {
        let mut app = app();
        press(&mut app, "?");
        assert_eq!(*app.screen(), Screen::Help);
        press(&mut app, "?");
        assert_eq!(*app.screen(), Screen::Table);
        for _ in 0..50 {
            press(&mut app, "↓");
        }
        assert_eq!(app.selected(), app.rows().len() - 1);
        let mut smaller = snapshot();
        smaller.processes.truncate(1);
        smaller.pools.clear();
        app.set_snapshot(smaller);
        assert!(app.selected() < app.rows().len());
        // A group row has no pid to profile.
        press(&mut app, "\x1b");
        let mut app = App::new("x", 5);
        assert_eq!(
            press(&mut app, "p\n"),
            [Action::None, Action::None],
            "no data yet"
        );
    }
}
