//! `leakscope top`: a live terminal view of what a running agent knows, for one engineer on one
//! host during an incident. Groups (Compose services, containers, systemd units, pods, worker
//! pools) then processes, with RSS, growth, verdict and time to limit; drill-downs and growth
//! profiles on keys. `--once` (or a stdout that is not a terminal) prints one snapshot as text.
//!
//! Layout: `view` (rows, sort, filter, cells) and `detail` (drill-down text) are plain
//! functions; `app` is the state and what keys do; `tui` draws; `text` is `--once`; this file
//! fetches from the agent and runs the event loop.

pub mod app;
pub mod detail;
pub mod text;
pub mod tui;
pub mod view;

use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;
use crossterm::event::{self, Event as TermEvent};
use leakscope_api::{HistoryResponse, PoolsResponse, ProcessesResponse, TasksResponse, paths};
use tokio::sync::mpsc;

use crate::client::{AgentClient, ClientError, ClientOptions};
use app::{Action, App, Profile};
use view::Snapshot;

/// The longest profile `p` may ask for (the agent's own bound is larger).
const MAX_PROFILE_SECONDS: u64 = 120;

#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    /// Print one snapshot as text and exit (also what happens when stdout is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// How often the view asks the agent again.
    #[arg(long, value_name = "DURATION", default_value = "2s",
          value_parser = parse_interval)]
    pub interval: Duration,
    /// How long a growth profile (key p) samples the process.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PROFILE_SECONDS))]
    pub profile_seconds: u64,
    /// Start with this filter (words to match, as `/` takes them).
    #[arg(long, value_name = "WORDS", default_value = "")]
    pub filter: String,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 1s, 5s)"))?;
    if d < Duration::from_millis(200) || d > Duration::from_secs(3600) {
        return Err(format!(
            "`{s}` is out of range: use 200ms (the agent samples no faster) to 1h"
        ));
    }
    Ok(d)
}

/// One snapshot: the processes (required), pools and tasks (shown without them, with a note,
/// when the agent cannot give them).
pub async fn fetch(client: &AgentClient) -> Result<Snapshot, ClientError> {
    let (processes, pools, tasks) = tokio::join!(
        client.get_json::<ProcessesResponse>(paths::PROCESSES),
        client.get_json::<PoolsResponse>(paths::POOLS),
        client.get_json::<TasksResponse>(paths::TASKS),
    );
    let processes = processes?;
    let mut problems = Vec::new();
    let pools = pools.map_or_else(
        |e| {
            problems.push(format!("no pools: {e}"));
            Vec::new()
        },
        |p| p.pools,
    );
    let tasks = tasks.map_or_else(
        |e| {
            problems.push(format!("no task types: {e}"));
            Vec::new()
        },
        |t| t.tasks,
    );
    Ok(Snapshot {
        overflow_processes: processes.overflow.processes,
        processes: processes.processes,
        pools,
        tasks,
        problems,
    })
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let client = AgentClient::new(&args.client)?;
    if args.once || !std::io::stdout().is_terminal() {
        let snapshot = fetch(&client).await?;
        print!("{}", text::render(client.url(), &snapshot, &args.filter));
        return Ok(());
    }
    live(client, args).await
}

/// What the event loop waits for.
enum Event {
    Key(event::KeyEvent),
    Redraw,
    Snapshot(Result<Snapshot, ClientError>),
    Profile(u32, Result<String, String>),
    History(u32, Result<HistoryResponse, String>),
}

async fn live(client: AgentClient, args: TopArgs) -> anyhow::Result<()> {
    let mut app = App::new(client.url(), args.profile_seconds);
    app.every = humantime::format_duration(args.interval).to_string();
    app.filter = args.filter.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keys = {
        let (tx, stop) = (tx.clone(), stop.clone());
        // crossterm's reads block: a thread of their own, polling so it sees `stop`.
        std::thread::spawn(move || read_terminal(&tx, &stop))
    };
    let refresh = {
        let (tx, client, every) = (tx.clone(), client.clone(), args.interval);
        tokio::spawn(async move {
            loop {
                if tx.send(Event::Snapshot(fetch(&client).await)).is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    let result = async {
        loop {
            terminal.draw(|f| tui::draw(f, &mut app))?;
            let Some(event) = rx.recv().await else {
                return Ok(());
            };
            match event {
                Event::Key(key) => match app.key(key) {
                    Action::Quit => return Ok(()),
                    Action::None => {}
                    Action::Profile { pid, seconds } => spawn_profile(&client, &tx, pid, seconds),
                    Action::History(pid) => spawn_history(&client, &tx, pid),
                },
                Event::Redraw => {}
                Event::Snapshot(Ok(s)) => {
                    app.set_snapshot(s);
                    // The history on screen follows the table's refreshes.
                    if let app::Screen::Process(pid) = app.screen() {
                        spawn_history(&client, &tx, *pid);
                    }
                }
                Event::Snapshot(Err(e)) if e.is_not_running() => app.set_not_running(),
                Event::Snapshot(Err(e)) => app.set_failure(e.to_string()),
                Event::Profile(pid, result) => {
                    app.profile = Some((
                        pid,
                        match result {
                            Ok(text) => Profile::Done(text),
                            Err(why) => Profile::Failed(why),
                        },
                    ));
                }
                Event::History(pid, h) => app.history = Some((pid, h)),
            }
        }
    }
    .await;
    ratatui::restore();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    refresh.abort();
    let _ = keys.join();
    result.map_err(|e: std::io::Error| anyhow::anyhow!("drawing the terminal: {e}"))
}

fn read_terminal(tx: &mpsc::UnboundedSender<Event>, stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return,
        }
        let sent = match event::read() {
            Ok(TermEvent::Key(key)) => tx.send(Event::Key(key)),
            Ok(TermEvent::Resize(..)) => tx.send(Event::Redraw),
            Ok(_) => Ok(()),
            Err(_) => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Asks for `/debug/pprof/growth` as text (the table `investigate` prints: top stacks), over
/// `seconds`, or without them for a process the agent samples already (answered at once).
fn spawn_profile(
    client: &AgentClient,
    tx: &mpsc::UnboundedSender<Event>,
    pid: u32,
    seconds: Option<u64>,
) {
    let (client, tx) = (client.clone(), tx.clone());
    tokio::spawn(async move {
        let path = match seconds {
            Some(s) => format!("/debug/pprof/growth?pid={pid}&seconds={s}&format=txt"),
            None => format!("/debug/pprof/growth?pid={pid}&format=txt"),
        };
        // The agent answers after `seconds`, plus the time to symbolize.
        let within = Duration::from_secs(seconds.unwrap_or(0)) + Duration::from_secs(60);
        let result = client
            .get_bytes_within(&path, within)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            // The agent's reason says what is off (profiling, who may profile what).
            .map_err(|e| e.to_string());
        let _ = tx.send(Event::Profile(pid, result));
    });
}

fn spawn_history(client: &AgentClient, tx: &mpsc::UnboundedSender<Event>, pid: u32) {
    let (client, tx) = (client.clone(), tx.clone());
    tokio::spawn(async move {
        let result = client
            .get_json::<HistoryResponse>(&paths::process_history(pid))
            .await
            .map_err(|e| e.to_string());
        let _ = tx.send(Event::History(pid, result));
    });
}
