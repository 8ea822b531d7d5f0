//! `cargo xtask bench detection`: runs the leak scenario corpus (`scenarios/scenarios.toml`)
//! under one agent and scores the detector against the ground truth.
//!
//! All scenarios run concurrently, each in its own process group, with `--time-scale F`; the
//! agent runs with `--detector-time-scale F`, so a run at F = 0.1 gives the verdicts of the
//! real-time run ten times faster. Times are reported in *nominal* seconds: real seconds since
//! the scenario started, divided by F.
//!
//! Every `max(0.2, F)` real seconds the driver reads `/api/v1/processes` and `/api/v1/pools`.
//! A scenario's verdict at a poll is, for `scope = "process"`, the `leak.verdict` of its pid
//! and, for `scope = "pool"`, `leaking` if the pool whose `parent_pid` is the scenario's pid has
//! `leak_suspected` (else `stable`).
//!
//! Scoring:
//! - a leak counts as **flagged** if its verdict was `leaking` at any poll of the run (how fast
//!   is judged separately, by its target);
//! - a non-leak counts as **flagged** (a false positive) if its verdict was `leaking` at any
//!   poll at or after its `not_leaking_after_secs` (a `leaking` verdict before that is
//!   tolerated: e.g. a cache that fills like a leak);
//! - precision = flagged leaks / all flagged, recall = flagged leaks / all leaks.
//!
//! Targets: every leak `leaking` by its `detect_within_secs`, no non-leak `leaking` at or
//! after its `not_leaking_after_secs`, and in particular the 10 MiB/min leaks (process scope)
//! within 180 s. Missed targets are printed as `MISSED` lines; they do not fail the command
//! (it is a benchmark): only harness errors do (agent or scenario failing, a scenario never
//! listed by the agent, the scenarios' total RSS above [`RSS_BUDGET`], an interrupt).

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    fmt::Write as _,
    fs::File,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use dev_agent::{Agent, Launch, Stopped};
use leakscope_api::{PoolsResponse, ProcessesResponse, TasksResponse, paths};
use serde::Deserialize;

use crate::util;

/// Abort (harness error) if the scenarios together hold more than this. At the default
/// duration they peak around 3.5 GiB, most of it `leak_linear_100` (~1.1 GiB after 11 min) and
/// the task workers' leaks (~1 GiB together).
const RSS_BUDGET: u64 = 6 << 30;
/// Margin on the scenarios' own `--duration`, so they stop by themselves if the driver dies.
const SCENARIO_SELF_STOP_MARGIN_SECS: f64 = 30.0;
/// Polls in a row that may fail before the run is abandoned.
const MAX_FAILED_POLLS: u32 = 10;
/// The headline target: a 10 MiB/min leak is flagged within this many nominal seconds.
const HEADLINE_RATE_MIB_PER_MIN: f64 = 10.0;
const HEADLINE_WITHIN_SECS: f64 = 180.0;

pub struct Opts {
    pub time_scale: f64,
    pub duration: Option<f64>,
    pub only: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Scenario corpus

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Process,
    Pool,
    /// One task type of a worker that sends task markers: its verdict in `/api/v1/tasks`.
    Task,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// argv, placeholders substituted by [`parse_scenarios`].
    pub command: Vec<String>,
    pub leaking: bool,
    pub expected: String,
    pub rate_mib_per_min: f64,
    pub detect_within_secs: Option<f64>,
    pub not_leaking_after_secs: Option<f64>,
    pub scope: Scope,
    /// Scope `task`: the task name scored.
    #[serde(default)]
    pub task: Option<String>,
    /// Scope `task`: bytes one run of the task keeps, in KiB (0 for a clean type).
    #[serde(default)]
    pub retains_kib_per_run: f64,
    /// `{bin}/NAME` in the unsubstituted command[0]: a compiled scenario, matched by comm.
    #[serde(skip)]
    compiled: Option<String>,
}

impl Scenario {
    /// Nominal seconds: by when a leak must be flagged, or from when a non-leak must not be.
    pub fn target_secs(&self) -> f64 {
        if self.leaking {
            self.detect_within_secs.unwrap_or(0.0)
        } else {
            self.not_leaking_after_secs.unwrap_or(0.0)
        }
    }

    /// The agent `--match` selecting this scenario's processes: comm for compiled scenarios
    /// (truncated like the kernel's 15-byte comm), else the script path in the command line.
    fn matcher(&self) -> Result<String> {
        if let Some(name) = &self.compiled {
            let comm: String = name.chars().take(15).collect();
            return Ok(format!("comm=^{}$", regex_escape(&comm)));
        }
        let script = self
            .command
            .iter()
            .skip(1)
            .find(|a| a.contains('/'))
            .with_context(|| format!("{}: no script path to match in its command", self.name))?;
        Ok(format!("cmdline={}", regex_escape(script)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    scenario: Vec<Scenario>,
}

/// Parses `scenarios.toml`, substituting `{bin}` and `{dir}`, and checks each entry.
pub fn parse_scenarios(text: &str, bin: &Path, dir: &Path) -> Result<Vec<Scenario>> {
    let corpus: Corpus = toml::from_str(text).context("parsing scenarios.toml")?;
    let (bin, dir) = (bin.to_string_lossy(), dir.to_string_lossy());
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for mut s in corpus.scenario {
        ensure!(
            names.insert(s.name.clone()),
            "duplicate scenario {}",
            s.name
        );
        ensure!(!s.command.is_empty(), "{}: empty command", s.name);
        ensure!(
            ["stable", "growing", "leaking"].contains(&s.expected.as_str()),
            "{}: expected = {:?} is not a verdict",
            s.name,
            s.expected
        );
        ensure!(
            (s.scope == Scope::Task) == s.task.is_some(),
            "{}: `task` names the task scored, with scope = \"task\" and only then",
            s.name
        );
        if s.leaking {
            let size = if s.scope == Scope::Task {
                s.retains_kib_per_run
            } else {
                s.rate_mib_per_min
            };
            ensure!(
                s.detect_within_secs.is_some() && size > 0.0,
                "{}: a leak needs detect_within_secs and rate_mib_per_min > 0 (a task leak: \
                 retains_kib_per_run > 0)",
                s.name
            );
        } else {
            ensure!(
                s.not_leaking_after_secs.is_some(),
                "{}: a non-leak needs not_leaking_after_secs",
                s.name
            );
        }
        s.compiled = s.command[0].strip_prefix("{bin}/").map(str::to_string);
        for arg in &mut s.command {
            *arg = arg.replace("{bin}", &bin).replace("{dir}", &dir);
            ensure!(
                !arg.contains('{'),
                "{}: unknown placeholder in {arg:?}",
                s.name
            );
        }
        out.push(s);
    }
    Ok(out)
}

fn select(all: Vec<Scenario>, only: &[String]) -> Result<Vec<Scenario>> {
    if only.is_empty() {
        return Ok(all);
    }
    for name in only {
        if !all.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
            bail!("no scenario named {name:?}; known: {}", known.join(", "));
        }
    }
    Ok(all.into_iter().filter(|s| only.contains(&s.name)).collect())
}

/// The largest target plus a minute.
pub fn default_duration(scenarios: &[Scenario]) -> f64 {
    scenarios
        .iter()
        .map(Scenario::target_secs)
        .fold(0.0, f64::max)
        + 60.0
}

/// Escapes the characters `regex` treats as meta (same set as `regex::escape`).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Time scaling

/// Nominal seconds for `real` elapsed time at time scale `f`.
pub fn nominal_secs(real: Duration, time_scale: f64) -> f64 {
    real.as_secs_f64() / time_scale
}

/// Real time between API polls: one nominal second, but at least 200 ms.
pub fn poll_interval(time_scale: f64) -> Duration {
    Duration::from_secs_f64(time_scale.max(0.2))
}

/// The agent's sampling `--interval`: one nominal second, within the agent's 100 ms floor.
pub fn agent_interval_ms(time_scale: f64) -> u64 {
    ((time_scale * 1000.0).round() as u64).clamp(100, 3_600_000)
}

// ---------------------------------------------------------------------------------------------
// Outcomes and scoring

/// What the driver saw of one scenario over the run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Nominal seconds of the first and last poll with a `leaking` verdict.
    pub first_leaking: Option<f64>,
    pub last_leaking: Option<f64>,
    /// Verdict at the last poll that listed the scenario.
    pub final_verdict: Option<String>,
    /// `leaking` → something else transitions after the first `leaking`.
    pub flickers: u32,
    /// Last rate estimate, real bytes per second (process scope).
    pub rate_bytes_per_sec: Option<f64>,
    pub polls_seen: u32,
    /// Pool scope: recycles (for memory) at the last poll.
    pub recycles: Option<(u64, u64)>,
    /// Pool scope: the agent's evidence, the last time it gave one.
    pub evidence: Option<String>,
    /// Set if the scenario exited before the end of the run.
    pub exited: Option<String>,
    /// Task scope: runs of the task at the last poll, and at the first `leaking` one.
    pub runs: Option<u64>,
    pub runs_at_flag: Option<u64>,
}

impl Outcome {
    /// Records one poll: `verdict` is None when the agent did not list the scenario.
    pub fn observe(&mut self, t: f64, verdict: Option<&str>) {
        let Some(v) = verdict else { return };
        self.polls_seen += 1;
        if v == "leaking" {
            self.first_leaking.get_or_insert(t);
            self.last_leaking = Some(t);
        } else if self.final_verdict.as_deref() == Some("leaking") {
            self.flickers += 1;
        }
        self.final_verdict = Some(v.to_string());
    }

    /// See the module documentation.
    pub fn flagged(&self, s: &Scenario) -> bool {
        if s.leaking {
            self.first_leaking.is_some()
        } else {
            self.last_leaking.is_some_and(|t| t >= s.target_secs())
        }
    }

    /// Whether the scenario meets its own target.
    pub fn on_target(&self, s: &Scenario) -> bool {
        if s.leaking {
            self.first_leaking.is_some_and(|t| t <= s.target_secs())
        } else {
            !self.flagged(s)
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    pub true_pos: usize,
    pub false_pos: usize,
    pub false_neg: usize,
    pub true_neg: usize,
}

impl Score {
    pub fn of<'a>(rows: impl IntoIterator<Item = (&'a Scenario, &'a Outcome)>) -> Self {
        let mut s = Self::default();
        for (sc, o) in rows {
            match (sc.leaking, o.flagged(sc)) {
                (true, true) => s.true_pos += 1,
                (true, false) => s.false_neg += 1,
                (false, true) => s.false_pos += 1,
                (false, false) => s.true_neg += 1,
            }
        }
        s
    }

    /// None when nothing was flagged.
    pub fn precision(&self) -> Option<f64> {
        let flagged = self.true_pos + self.false_pos;
        (flagged > 0).then(|| self.true_pos as f64 / flagged as f64)
    }

    /// None when there was no leak.
    pub fn recall(&self) -> Option<f64> {
        let leaks = self.true_pos + self.false_neg;
        (leaks > 0).then(|| self.true_pos as f64 / leaks as f64)
    }

    pub fn summary(&self) -> String {
        format!(
            "precision {} recall {} (flagged leaks {}, missed leaks {}, false positives {}, \
             clean non-leaks {})",
            ratio(self.precision()),
            ratio(self.recall()),
            self.true_pos,
            self.false_neg,
            self.false_pos,
            self.true_neg
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn secs(t: Option<f64>) -> String {
    t.map_or_else(|| "-".to_string(), |t| format!("{t:.0} s"))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}"))
}

/// The results table, the MISSED lines and the summary, as printed.
pub fn render_report(rows: &[(Scenario, Outcome)], time_scale: f64, duration: f64) -> String {
    let header = [
        "scenario",
        "ground truth",
        "target",
        "final verdict",
        "first leaking",
        "last leaking",
        "on target",
        "flickers",
        "est. rate",
        "notes",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for (s, o) in rows {
        let pool = s.scope == Scope::Pool;
        let task = s.scope == Scope::Task;
        let truth = match (s.leaking, s.scope) {
            (true, Scope::Process) => format!("leak {} MiB/min", s.rate_mib_per_min),
            (true, Scope::Pool) => format!("pool leak {} MiB/min/child", s.rate_mib_per_min),
            (true, Scope::Task) => format!("task keeps {} KiB/run", s.retains_kib_per_run),
            (false, Scope::Task) => "task keeps nothing".to_string(),
            (false, _) => "no leak".to_string(),
        };
        let target = if s.leaking {
            format!("leaking by {:.0} s", s.target_secs())
        } else {
            format!("not leaking from {:.0} s", s.target_secs())
        };
        let mut verdict = o.final_verdict.clone().unwrap_or_else(|| "-".into());
        if pool {
            verdict.push_str(" (pool)");
        } else if task {
            verdict.push_str(" (task)");
        }
        if o.final_verdict.as_deref() != Some(s.expected.as_str()) {
            let _ = write!(verdict, " [exp. {}]", s.expected);
        }
        // The agent measures real bytes per second; nominal = real x F.
        let rate = o
            .rate_bytes_per_sec
            .filter(|_| s.scope == Scope::Process)
            .map_or("-".to_string(), |r| {
                format!("{:.1} MiB/min", r * time_scale * 60.0 / (1 << 20) as f64)
            });
        let mut notes = Vec::new();
        match (o.runs_at_flag, o.runs) {
            (Some(at), _) => notes.push(format!("flagged after {at} runs")),
            (None, Some(runs)) => notes.push(format!("{runs} runs")),
            (None, None) => {}
        }
        if let Some((all, memory)) = o.recycles {
            notes.push(format!("{all} recycles ({memory} for memory)"));
        }
        if let Some(e) = &o.evidence {
            notes.push(e.clone());
        }
        if o.polls_seen == 0 {
            notes.push("never listed by the agent".into());
        }
        if let Some(e) = &o.exited {
            notes.push(e.clone());
        }
        table.push(vec![
            s.name.clone(),
            truth,
            target,
            verdict,
            secs(o.first_leaking),
            secs(o.last_leaking),
            if o.on_target(s) { "yes" } else { "MISSED" }.into(),
            if s.scope != Scope::Process || o.flickers == 0 {
                "-".into()
            } else {
                o.flickers.to_string()
            },
            rate,
            notes.join("; "),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "detection: {} scenarios, {duration:.0} nominal s at time scale {time_scale} \
         ({:.0} real s); times in nominal s since each scenario started",
        rows.len(),
        duration * time_scale
    );
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }

    let mut missed = Vec::new();
    for (s, o) in rows {
        if o.on_target(s) {
            continue;
        }
        let line = if s.leaking {
            match o.first_leaking {
                Some(t) => format!(
                    "MISSED {}: first `leaking` at {t:.0} s, target {:.0} s",
                    s.name,
                    s.target_secs()
                ),
                None => format!(
                    "MISSED {}: never `leaking` in {duration:.0} s, target {:.0} s",
                    s.name,
                    s.target_secs()
                ),
            }
        } else {
            format!(
                "MISSED {}: `leaking` at {} s, after its {:.0} s grace (false positive)",
                s.name,
                o.last_leaking.map_or("?".into(), |t| format!("{t:.0}")),
                s.target_secs()
            )
        };
        missed.push(line);
    }
    for line in &missed {
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(
        out,
        "flagged = leak: `leaking` at any poll; non-leak: `leaking` at or after its \
         not_leaking_after_secs"
    );
    let processes = Score::of(
        rows.iter()
            .filter(|(s, _)| s.scope != Scope::Task)
            .map(|(s, o)| (s, o)),
    );
    let _ = writeln!(out, "processes and pools: {}", processes.summary());
    let tasks: Vec<&(Scenario, Outcome)> = rows
        .iter()
        .filter(|(s, _)| s.scope == Scope::Task)
        .collect();
    if !tasks.is_empty() {
        let score = Score::of(tasks.iter().map(|(s, o)| (s, o)));
        let runs: Vec<String> = tasks
            .iter()
            .filter(|(s, _)| s.leaking)
            .map(|(s, o)| {
                let at = o.runs_at_flag.map_or("never".into(), |r| r.to_string());
                format!("{} {at}", s.name)
            })
            .collect();
        let _ = writeln!(
            out,
            "per task: {}; runs to verdict: {}",
            score.summary(),
            runs.join(", ")
        );
    }
    let headline: Vec<&(Scenario, Outcome)> = rows
        .iter()
        .filter(|(s, _)| {
            s.leaking
                && s.scope == Scope::Process
                && s.rate_mib_per_min == HEADLINE_RATE_MIB_PER_MIN
        })
        .collect();
    let headline_ok = headline
        .iter()
        .all(|(_, o)| o.first_leaking.is_some_and(|t| t <= HEADLINE_WITHIN_SECS));
    let headline_text = if headline.is_empty() {
        "not run".to_string()
    } else {
        let each: Vec<String> = headline
            .iter()
            .map(|(s, o)| format!("{} {}", s.name, secs(o.first_leaking)))
            .collect();
        format!(
            "{} ({})",
            if headline_ok { "yes" } else { "NO" },
            each.join(", ")
        )
    };
    let all_ok = missed.is_empty() && headline_ok;
    let _ = writeln!(
        out,
        "targets hold: {} — leaks flagged by detect_within_secs, no non-leak `leaking` from \
         not_leaking_after_secs, {HEADLINE_RATE_MIB_PER_MIN} MiB/min leak within \
         {HEADLINE_WITHIN_SECS} s: {headline_text}",
        if all_ok {
            "YES".to_string()
        } else {
            format!("NO ({} missed)", missed.len())
        }
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The run

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run(opts: Opts) -> Result<()> {
    let f = opts.time_scale;
    ensure!(
        f.is_finite() && f > 0.0,
        "--time-scale must be a positive number"
    );
    if !util::is_root() {
        bail!("the detection benchmark loads BPF programs: run it as root");
    }
    let root = util::workspace_root();
    let scenarios_dir = root.join("scenarios");
    let bin_dir = util::target_dir().join("scenarios");
    let logs = util::target_dir().join("detection-logs");
    let toml_path = scenarios_dir.join("scenarios.toml");
    let text = std::fs::read_to_string(&toml_path)
        .with_context(|| format!("reading {}", toml_path.display()))?;
    let scenarios = select(
        parse_scenarios(&text, &bin_dir, &scenarios_dir)?,
        &opts.only,
    )?;
    let duration = opts
        .duration
        .unwrap_or_else(|| default_duration(&scenarios));
    ensure!(
        duration.is_finite() && duration > 0.0,
        "--duration must be positive"
    );

    let agent_bin = util::build_agent(true)?;
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&scenarios_dir)
        .arg(format!("OUT={}", bin_dir.display()));
    util::check(make)?;
    std::fs::create_dir_all(&logs)?;

    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_interrupt as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }

    let mut matchers = Vec::new();
    for s in &scenarios {
        let m = s.matcher()?;
        if !matchers.contains(&m) {
            matchers.push(m);
        }
    }
    // Task scenarios send markers to a socket of this run's own, in a directory only root
    // writes to (the agent refuses any other).
    let tasks = scenarios.iter().any(|s| s.scope == Scope::Task);
    let socket = tasks.then(|| logs.join("task-socket").join("tasks.sock"));
    let mut agent = start_agent(
        &agent_bin,
        f,
        &matchers,
        socket.as_deref(),
        &logs.join("agent.log"),
    )?;
    eprintln!(
        "detection: agent on {} (log {}); starting {} scenarios for {duration:.0} nominal s \
         ({:.0} real s)",
        agent.url(""),
        agent.log_path().display(),
        scenarios.len(),
        duration * f
    );

    let mut running = Vec::new();
    let pythonpath = root.join("integrations/python/src");
    for s in &scenarios {
        running.push(Running::start(
            s,
            f,
            duration,
            &logs,
            &pythonpath,
            socket.as_deref(),
        )?);
    }
    let result = observe(&mut agent, &mut running, &scenarios, f, duration, tasks);
    for r in &mut running {
        r.stop();
    }
    let agent_status = stop_agent(agent);
    let outcomes = result?;

    let rows: Vec<(Scenario, Outcome)> = scenarios.into_iter().zip(outcomes).collect();
    println!();
    print!("{}", render_report(&rows, f, duration));
    println!("scenario and agent logs: {}", logs.display());
    agent_status?;

    let unseen: Vec<&str> = rows
        .iter()
        .filter(|(_, o)| o.polls_seen == 0)
        .map(|(s, _)| s.name.as_str())
        .collect();
    ensure!(
        unseen.is_empty(),
        "the agent never listed {} (check --match and the agent log)",
        unseen.join(", ")
    );
    let exited: Vec<&str> = rows
        .iter()
        .filter(|(_, o)| o.exited.is_some())
        .map(|(s, _)| s.name.as_str())
        .collect();
    ensure!(
        exited.is_empty(),
        "scenarios exited before the end of the run: {} (see their logs)",
        exited.join(", ")
    );
    Ok(())
}

/// Polls until `duration` nominal seconds have passed; returns one outcome per scenario.
fn observe(
    agent: &mut Agent,
    running: &mut [Running],
    scenarios: &[Scenario],
    f: f64,
    duration: f64,
    tasks: bool,
) -> Result<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::default(); running.len()];
    let interval = poll_interval(f);
    let start = running
        .iter()
        .map(|r| r.start)
        .min()
        .unwrap_or_else(Instant::now);
    let end = start + Duration::from_secs_f64(duration * f);
    let mut next = Instant::now();
    let mut failed = 0u32;
    let mut peak_rss = 0u64;
    let mut last_progress = Instant::now();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited ({status}); log:\n{}", agent.log_tail(30));
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next += interval;
        if next < now {
            next = now + interval;
        }

        for (r, o) in running.iter_mut().zip(outcomes.iter_mut()) {
            if o.exited.is_none()
                && let Some(status) = r.child.try_wait()?
            {
                let t = nominal_secs(r.child_exit_time(), f);
                o.exited = Some(format!("exited at {t:.0} s ({status})"));
            }
        }
        let rss = group_rss(&running.iter().map(|r| r.pid).collect::<Vec<_>>());
        let total: u64 = rss.values().sum();
        peak_rss = peak_rss.max(total);
        if total > RSS_BUDGET {
            bail!(
                "scenarios hold {} MiB, above the {} MiB budget",
                total >> 20,
                RSS_BUDGET >> 20
            );
        }

        let snapshot = match snapshot(agent, tasks) {
            Ok(s) => {
                failed = 0;
                s
            }
            Err(e) if failed < MAX_FAILED_POLLS => {
                failed += 1;
                eprintln!("detection: poll failed ({failed}/{MAX_FAILED_POLLS}): {e:#}");
                continue;
            }
            Err(e) => return Err(e.context("polling the agent")),
        };
        let at = Instant::now();
        for ((r, o), s) in running.iter().zip(outcomes.iter_mut()).zip(scenarios) {
            let t = nominal_secs(at.saturating_duration_since(r.start), f);
            match s.scope {
                Scope::Process => {
                    let leak = snapshot
                        .processes
                        .iter()
                        .find(|p| p.pid == r.pid)
                        .and_then(|p| p.leak.as_ref());
                    if let Some(l) = leak {
                        // A NaN estimate (served as null) keeps the last real one.
                        o.rate_bytes_per_sec = Some(l.rate_bytes_per_sec)
                            .filter(|r| r.is_finite())
                            .or(o.rate_bytes_per_sec);
                    }
                    o.observe(t, leak.map(|l| l.verdict.as_str()));
                }
                Scope::Pool => {
                    let pool = snapshot.pools.iter().find(|p| p.parent_pid == r.pid);
                    if let Some(p) = pool {
                        o.recycles = Some((p.recycles, p.recycles_for_memory));
                        o.evidence = p.evidence.clone().or(o.evidence.take());
                    }
                    o.observe(
                        t,
                        pool.map(|p| {
                            if p.leak_suspected {
                                "leaking"
                            } else {
                                "stable"
                            }
                        }),
                    );
                }
                Scope::Task => {
                    let task = snapshot
                        .tasks
                        .iter()
                        .find(|k| Some(&k.task) == s.task.as_ref());
                    if let Some(k) = task {
                        o.runs = Some(k.runs);
                        if k.leak_suspected && o.runs_at_flag.is_none() {
                            o.runs_at_flag = Some(k.runs);
                        }
                        o.evidence = Some(k.verdict.evidence.clone());
                    }
                    o.observe(
                        t,
                        task.map(|k| {
                            if k.leak_suspected {
                                "leaking"
                            } else {
                                "stable"
                            }
                        }),
                    );
                }
            }
        }
        if at.duration_since(last_progress) >= Duration::from_secs(10) {
            last_progress = at;
            let flagged = outcomes
                .iter()
                .filter(|o| o.first_leaking.is_some())
                .count();
            eprintln!(
                "detection: {:.0}/{duration:.0} nominal s, {flagged} scenarios flagged so far, \
                 scenarios' RSS {} MiB",
                nominal_secs(at.saturating_duration_since(start), f),
                total >> 20
            );
        }
    }
    eprintln!(
        "detection: done; scenarios' peak total RSS {} MiB",
        peak_rss >> 20
    );
    Ok(outcomes)
}

/// Resident bytes per process group (keyed by group id), summed over its live members.
fn group_rss(pgids: &[u32]) -> HashMap<u32, u64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the comm: state, ppid, pgrp, ... rss is the 22nd.
        let (Some(pgrp), Some(rss)) = (
            fields.get(2).and_then(|v| v.parse::<u32>().ok()),
            fields.get(21).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if pgids.contains(&pgrp) {
            *out.entry(pgrp).or_default() += rss * page;
        }
    }
    out
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Agent API

struct Snapshot {
    processes: Vec<leakscope_api::Process>,
    pools: Vec<leakscope_api::Pool>,
    tasks: Vec<leakscope_api::Task>,
}

/// The agent for the whole run: every scenario's `--match`, durations scaled by `f`, task
/// markers at `socket` (none without).
fn start_agent(
    bin: &Path,
    f: f64,
    matchers: &[String],
    socket: Option<&Path>,
    log: &Path,
) -> Result<Agent> {
    let mut launch = match socket {
        Some(path) => Launch::new(bin).args([OsStr::new("--task-socket"), path.as_os_str()]),
        None => Launch::new(bin).arg("--no-task-socket"),
    };
    launch = launch
        .args(["--interval", &format!("{}ms", agent_interval_ms(f))])
        .args(["--detector-time-scale", &f.to_string()])
        .log(log);
    for m in matchers {
        launch = launch.args(["--match", m]);
    }
    let agent = launch.start()?;
    // Fail now, not after the run, if the agent lacks an endpoint.
    snapshot(&agent, socket.is_some()).context("first poll of the agent")?;
    Ok(agent)
}

fn get_json<T: serde::de::DeserializeOwned>(agent: &Agent, path: &str) -> Result<T> {
    let url = agent.url(path);
    let (status, body) = agent.get(path).with_context(|| format!("GET {url}"))?;
    ensure!(status == 200, "GET {url}: HTTP {status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("decoding {path}"))
}

fn snapshot(agent: &Agent, tasks: bool) -> Result<Snapshot> {
    let p: ProcessesResponse = get_json(agent, paths::PROCESSES)?;
    let q: PoolsResponse = get_json(agent, paths::POOLS)?;
    let tasks = if tasks {
        let t: TasksResponse = get_json(agent, paths::TASKS)?;
        ensure!(
            t.socket.is_some(),
            "the agent serves no task socket; see its log"
        );
        t.tasks
    } else {
        Vec::new()
    };
    Ok(Snapshot {
        processes: p.processes,
        pools: q.pools,
        tasks,
    })
}

/// SIGTERM, then SIGKILL after 10 s; an error if it did not exit cleanly.
fn stop_agent(mut agent: Agent) -> Result<()> {
    match agent.stop(Duration::from_secs(10)) {
        Stopped::Exited(status) if status.success() => Ok(()),
        Stopped::Exited(status) => bail!(
            "the agent exited with {status} on SIGTERM:\n{}",
            agent.log_tail(30)
        ),
        Stopped::AlreadyExited(status) => {
            bail!("the agent had exited ({status}):\n{}", agent.log_tail(30))
        }
        Stopped::Killed => bail!("the agent did not stop within 10 s of SIGTERM; killed"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario processes

/// One scenario process, leader of its own process group; the group is killed on drop.
struct Running {
    child: Child,
    pid: u32,
    start: Instant,
    exit_seen: Option<Instant>,
    stopped: bool,
}

impl Running {
    fn start(
        s: &Scenario,
        f: f64,
        duration: f64,
        logs: &Path,
        pythonpath: &Path,
        socket: Option<&Path>,
    ) -> Result<Self> {
        let log = logs.join(format!("{}.log", s.name));
        let mut cmd = Command::new(&s.command[0]);
        // Python scenarios import leakscope's package from the checkout (standard library only).
        cmd.env("PYTHONPATH", pythonpath);
        if let Some(socket) = socket {
            cmd.env("LEAKSCOPE_SOCKET", socket);
        }
        cmd.args(&s.command[1..])
            .args(["--time-scale", &f.to_string()])
            .args([
                "--duration",
                &format!("{:.3}", duration * f + SCENARIO_SELF_STOP_MARGIN_SECS),
            ])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{}: starting {cmd:?}", s.name))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the JSON line, then drains stdout until the scenario exits.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut running = Self {
            pid: child.id(),
            child,
            start,
            exit_seen: None,
            stopped: false,
        };
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => bail!(
                "{}: no JSON line on stdout within 10 s; log:\n{}",
                s.name,
                tail(&log, 20)
            ),
        };
        let header: serde_json::Value = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "{}: stdout line {line:?} is not JSON; log:\n{}",
                s.name,
                tail(&log, 20)
            )
        })?;
        let pid = header["pid"]
            .as_u64()
            .with_context(|| format!("{}: no pid in {line:?}", s.name))? as u32;
        if pid != running.pid {
            eprintln!(
                "detection: {}: reports pid {pid}, spawned {}; using {pid}",
                s.name, running.pid
            );
            running.pid = pid;
        }
        Ok(running)
    }

    /// Real time from start to when the exit was first noticed.
    fn child_exit_time(&mut self) -> Duration {
        let at = *self.exit_seen.get_or_insert_with(Instant::now);
        at.saturating_duration_since(self.start)
    }

    /// SIGTERM to the whole group, SIGKILL after 5 s; reaps the leader.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pgid = self.child.id() as i32;
        // SAFETY: signals to the process group we created for this scenario.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let _ = self.child.try_wait();
            // SAFETY: signal 0 only checks whether the group still has members.
            let alive = unsafe { libc::kill(-pgid, 0) } == 0;
            if !alive {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Scenario> {
        let dir = util::workspace_root().join("scenarios");
        let text = std::fs::read_to_string(dir.join("scenarios.toml")).unwrap();
        parse_scenarios(&text, Path::new("/t/bin"), &dir).unwrap()
    }

    #[test]
    fn the_real_corpus_parses_with_placeholders_substituted() {
        let all = corpus();
        assert_eq!(all.len(), 17);
        let dir = util::workspace_root().join("scenarios");
        for s in &all {
            for arg in &s.command {
                assert!(!arg.contains('{'), "{}: {arg}", s.name);
            }
            assert_eq!(s.leaking, s.expected == "leaking", "{}", s.name);
            let m = s.matcher().unwrap();
            if s.command[0].starts_with("/t/bin/") {
                assert!(m.starts_with("comm=^"), "{m}");
            } else {
                assert_eq!(s.command[0], "python3");
                assert!(
                    Path::new(&s.command[1]).starts_with(&dir),
                    "{:?}",
                    s.command
                );
                assert!(m.starts_with("cmdline=") && m.contains("python"), "{m}");
            }
        }
        let l10 = all.iter().find(|s| s.name == "leak_linear_10").unwrap();
        assert_eq!(
            l10.command,
            ["/t/bin/leak_linear", "--rate-mib-per-min", "10"]
        );
        assert_eq!(l10.matcher().unwrap(), "comm=^leak_linear$");
        assert_eq!(l10.target_secs(), 180.0);
        let pool = all
            .iter()
            .find(|s| s.name == "python_prefork_pool")
            .unwrap();
        assert_eq!(pool.scope, Scope::Pool);
        let cache = all
            .iter()
            .find(|s| s.name == "cache_plateau_50mib_3min")
            .unwrap();
        assert_eq!(cache.target_secs(), 300.0);
        assert_eq!(default_duration(&all), 660.0);
        let small = all.iter().find(|s| s.name == "task_small_leak").unwrap();
        assert_eq!(
            (
                small.scope,
                small.task.as_deref(),
                small.retains_kib_per_run
            ),
            (Scope::Task, Some("small.leaky"), 256.0)
        );
        assert_eq!(select(all.clone(), &["steady_c".into()]).unwrap().len(), 1);
        assert!(select(all, &["nope".into()]).is_err());
    }

    #[test]
    fn malformed_entries_are_refused() {
        let base = "[[scenario]]\nname = \"x\"\ncommand = [\"{bin}/x\"]\nrate_mib_per_min = 1.0\n\
                    scope = \"process\"\n";
        let bad = |extra: &str| {
            parse_scenarios(&format!("{base}{extra}"), Path::new("/b"), Path::new("/d")).is_err()
        };
        assert!(!bad(
            "leaking = true\nexpected = \"leaking\"\ndetect_within_secs = 10\n"
        ));
        assert!(bad("leaking = true\nexpected = \"leaking\"\n"));
        assert!(bad("leaking = false\nexpected = \"stable\"\n"));
        assert!(bad(
            "leaking = true\nexpected = \"leaky\"\ndetect_within_secs = 1\n"
        ));
        assert!(bad(
            "leaking = true\nexpected = \"leaking\"\ndetect_within_secs = 1\nbogus = 1\n"
        ));
        // `task` goes with scope "task", and a task leak says what a run keeps.
        assert!(bad(
            "leaking = true\nexpected = \"leaking\"\ndetect_within_secs = 1\ntask = \"t\"\n"
        ));
        let task = |extra: &str| {
            let text = format!(
                "[[scenario]]\nname = \"t\"\ncommand = [\"x\"]\nrate_mib_per_min = 0.0\n\
                 scope = \"task\"\nleaking = true\nexpected = \"leaking\"\n\
                 detect_within_secs = 10\n{extra}"
            );
            parse_scenarios(&text, Path::new("/b"), Path::new("/d"))
        };
        assert!(task("task = \"a.b\"\nretains_kib_per_run = 64.0\n").is_ok());
        assert!(task("task = \"a.b\"\n").is_err(), "no size");
        assert!(
            task("retains_kib_per_run = 64.0\n").is_err(),
            "no task name"
        );
    }

    #[test]
    fn nominal_time_divides_by_the_time_scale() {
        assert_eq!(nominal_secs(Duration::from_secs(6), 0.1), 60.0);
        assert_eq!(nominal_secs(Duration::from_millis(1500), 1.0), 1.5);
        assert_eq!(nominal_secs(Duration::from_secs(1), 2.0), 0.5);
        assert_eq!(poll_interval(1.0), Duration::from_secs(1));
        assert_eq!(poll_interval(0.1), Duration::from_millis(200));
        assert_eq!(agent_interval_ms(1.0), 1000);
        assert_eq!(agent_interval_ms(0.1), 100);
        assert_eq!(agent_interval_ms(0.01), 100);
    }

    fn scenario(name: &str, leaking: bool, target: f64) -> Scenario {
        Scenario {
            name: name.into(),
            command: vec!["/x".into()],
            leaking,
            expected: if leaking { "leaking" } else { "stable" }.into(),
            rate_mib_per_min: if leaking { 10.0 } else { 0.0 },
            detect_within_secs: leaking.then_some(target),
            not_leaking_after_secs: (!leaking).then_some(target),
            scope: Scope::Process,
            task: None,
            retains_kib_per_run: 0.0,
            compiled: None,
        }
    }

    fn outcome(verdicts: &[(f64, &str)]) -> Outcome {
        let mut o = Outcome::default();
        for (t, v) in verdicts {
            o.observe(*t, Some(v));
        }
        o
    }

    #[test]
    fn flagging_precision_and_recall() {
        let rows = [
            // Leak flagged in time, flickers once: TP, on target.
            (
                scenario("fast", true, 180.0),
                outcome(&[
                    (10.0, "growing"),
                    (100.0, "leaking"),
                    (110.0, "growing"),
                    (120.0, "leaking"),
                ]),
            ),
            // Leak flagged late: TP (flagged), but off target.
            (
                scenario("late", true, 180.0),
                outcome(&[(100.0, "growing"), (200.0, "leaking")]),
            ),
            // Leak never flagged: FN.
            (
                scenario("missed", true, 600.0),
                outcome(&[(100.0, "growing"), (700.0, "stable")]),
            ),
            // Non-leak flagged during its grace only: TN.
            (
                scenario("cache", false, 300.0),
                outcome(&[(100.0, "leaking"), (299.0, "leaking"), (300.0, "stable")]),
            ),
            // Non-leak flagged after its grace: FP.
            (
                scenario("fp", false, 0.0),
                outcome(&[(50.0, "leaking"), (60.0, "stable")]),
            ),
            // Non-leak never listed: TN.
            (scenario("unseen", false, 0.0), Outcome::default()),
        ];
        let o = |i: usize| &rows[i].1;
        assert_eq!(o(0).first_leaking, Some(100.0));
        assert_eq!(o(0).last_leaking, Some(120.0));
        assert_eq!(o(0).flickers, 1);
        assert_eq!(o(0).final_verdict.as_deref(), Some("leaking"));
        let on: Vec<bool> = rows.iter().map(|(s, o)| o.on_target(s)).collect();
        assert_eq!(on, [true, false, false, true, false, true]);

        let score = Score::of(rows.iter().map(|(s, o)| (s, o)));
        assert_eq!(
            score,
            Score {
                true_pos: 2,
                false_pos: 1,
                false_neg: 1,
                true_neg: 2
            }
        );
        assert_eq!(score.precision(), Some(2.0 / 3.0));
        assert_eq!(score.recall(), Some(2.0 / 3.0));
        assert_eq!(Score::default().precision(), None);
        assert_eq!(Score::default().recall(), None);

        let report = render_report(&rows, 0.1, 660.0);
        assert!(
            report.contains("MISSED late: first `leaking` at 200 s, target 180 s"),
            "{report}"
        );
        assert!(
            report.contains("MISSED missed: never `leaking`"),
            "{report}"
        );
        assert!(report.contains("MISSED fp: `leaking` at 50 s"), "{report}");
        assert!(!report.contains("MISSED cache"), "{report}");
        assert!(report.contains("precision 0.67 recall 0.67"), "{report}");
        assert!(report.contains("targets hold: NO (3 missed)"), "{report}");
        // The made-up leaks are all 10 MiB/min: only "fast" is within 180 s.
        assert!(
            report.contains("within 180 s: NO (fast 100 s, late 200 s, missed -)"),
            "{report}"
        );
    }

    #[test]
    fn task_rows_are_scored_apart_with_runs_to_verdict() {
        let task = |name: &str, leaking: bool| Scenario {
            scope: Scope::Task,
            task: Some(format!("{name}.t")),
            retains_kib_per_run: if leaking { 256.0 } else { 0.0 },
            rate_mib_per_min: 0.0,
            ..scenario(name, leaking, if leaking { 600.0 } else { 0.0 })
        };
        let mut flagged = outcome(&[(100.0, "stable"), (300.0, "leaking")]);
        (flagged.runs, flagged.runs_at_flag) = (Some(700), Some(412));
        let mut clean = outcome(&[(100.0, "stable"), (300.0, "stable")]);
        clean.runs = Some(690);
        let rows = [
            (
                scenario("proc", true, 180.0),
                outcome(&[(100.0, "leaking")]),
            ),
            (task("small", true), flagged),
            (task("missed", true), outcome(&[(300.0, "stable")])),
            (task("clean", false), clean),
        ];
        let report = render_report(&rows, 0.1, 660.0);
        assert!(
            report.contains("processes and pools: precision 1.00 recall 1.00"),
            "{report}"
        );
        assert!(
            report.contains(
                "per task: precision 1.00 recall 0.50 (flagged leaks 1, missed leaks 1, \
                 false positives 0, clean non-leaks 1); runs to verdict: small 412, missed never"
            ),
            "{report}"
        );
        assert!(report.contains("task keeps 256 KiB/run"), "{report}");
        assert!(report.contains("flagged after 412 runs"), "{report}");
        assert!(report.contains("690 runs"), "{report}");
    }

    #[test]
    fn all_targets_met_reads_yes() {
        let rows = [
            (scenario("leak", true, 180.0), outcome(&[(90.0, "leaking")])),
            (scenario("ok", false, 0.0), outcome(&[(90.0, "stable")])),
        ];
        let report = render_report(&rows, 1.0, 240.0);
        assert!(report.contains("precision 1.00 recall 1.00"), "{report}");
        assert!(report.contains("targets hold: YES"), "{report}");
        assert!(!report.contains("MISSED"), "{report}");
    }

    #[test]
    fn regex_escape_covers_meta_characters() {
        assert_eq!(regex_escape("/a/b.py"), "/a/b\\.py");
        assert_eq!(regex_escape("x+(y)"), "x\\+\\(y\\)");
    }
}
