//! Command-line interface of the `leakscope` binary.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{model::limits::ConfiguredLimit, model::select::Matcher};

#[derive(Debug, Parser)]
#[command(
    name = "leakscope",
    version,
    about = "Finds memory leaks in worker processes, from the kernel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: trace every process's memory and serve /metrics, /api/v1/processes, /healthz.
    Run(Box<RunArgs>),
    /// Find the code paths a process's memory grows from: growth stacks (any allocator) and/or
    /// allocator tracing. Prints a ranked table; --out also writes pprof and flame graphs.
    Investigate(InvestigateArgs),
    /// Write a self-contained HTML incident report from a running agent: suspects with their
    /// memory history, evidence and growth flame graphs, pools, task verdicts, OOM kills, and
    /// the host's memory.
    Report(ReportArgs),
    /// A live terminal view of a running agent: groups and processes by time to their memory
    /// limit, with verdicts, drill-downs and growth profiles. --once prints one snapshot.
    Top(crate::top::TopArgs),
    /// For `cargo xtask bench overhead`: hold empty programs on the agent's hot tracepoints.
    #[command(hide = true)]
    BenchFloor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InvestigateMode {
    /// Stacks of page faults that add RSS (sampled) and of mmap/brk growth: cheap, works
    /// with any allocator.
    Growth,
    /// uprobes on the process's allocator: outstanding allocations by stack and age. Costs
    /// 1-5 µs per allocator call while attached.
    Alloc,
    Both,
}

#[derive(Debug, Clone, Args)]
pub struct InvestigateArgs {
    /// The process to investigate.
    #[arg(long)]
    pub pid: u32,

    /// How long to trace (Ctrl-C stops early and still reports).
    #[arg(long, default_value = "60s", value_parser = parse_trace_duration)]
    pub duration: Duration,

    #[arg(long, value_enum, default_value_t = InvestigateMode::Growth)]
    pub mode: InvestigateMode,

    /// Directory for growth.pb.gz / alloc.pb.gz (pprof), *.svg (flame graphs) and
    /// report.json; created if missing.
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,

    /// Stacks shown in the table (0: all).
    #[arg(long, default_value_t = 20)]
    pub top: usize,

    /// Growth: sample one page fault in this many, on average.
    #[arg(long, default_value_t = monitor_common::stacks::DEFAULT_SAMPLE_PERIOD, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sample_period: u32,

    /// Alloc: only blocks at least this old at the end count (short-lived ones are not leaks).
    #[arg(long, default_value = "5s", value_parser = parse_window)]
    pub min_age: Duration,

    /// Alloc: sample one block per this many bytes allocated, on average (bytes and counts
    /// are then unbiased estimates); 0 traces every block, exactly, at a stack walk per call.
    #[arg(long, default_value_t = monitor_common::stacks::DEFAULT_ALLOC_SAMPLE_BYTES,
          value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub sample_bytes: u64,

    /// Alloc: detach after this many allocator calls, bounding the cost on a busy process.
    #[arg(long, default_value_t = 100_000_000)]
    pub max_calls: u64,

    /// Alloc: capacity of the kernel's table of outstanding blocks (full: counted, not evicted).
    #[arg(long, default_value_t = monitor_common::stacks::DEFAULT_MAX_ALLOCS,
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_allocations: u32,

    /// Print the reports as JSON instead of tables.
    #[arg(long)]
    pub json: bool,

    /// How native stacks are unwound: `dwarf` copies the registers and 16 KiB of user stack
    /// per sample and unwinds them with the modules' call-frame information (right through
    /// code without frame pointers, like Debian's libc and CPython); `fp` walks frame
    /// pointers in the kernel only (cheaper, misses callers of such code).
    #[arg(long, value_enum, default_value_t = UnwindArg::Dwarf)]
    pub unwind: UnwindArg,

    /// Fold rows: `user-entry` makes one row per user entry frame, the outermost frame of
    /// your Python code that a framework or the standard library called (the task function
    /// under Celery, RQ or Dramatiq; a script's outermost frame), and per task.
    #[arg(long, value_enum, value_name = "HOW")]
    pub fold: Option<FoldArg>,

    /// Do not walk CPython's frames: native stacks only, and a cheaper sample of a Python
    /// process (`cargo xtask bench alloc` measures by how much).
    #[arg(long)]
    pub no_python_frames: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindArg {
    Dwarf,
    Fp,
}

impl From<UnwindArg> for crate::investigate::unwind::UnwindMode {
    fn from(a: UnwindArg) -> Self {
        match a {
            UnwindArg::Dwarf => Self::Dwarf,
            UnwindArg::Fp => Self::Fp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FoldArg {
    UserEntry,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub client: crate::client::ClientOptions,

    /// The HTML file to write. An existing file is replaced; a symbolic link at that name is
    /// replaced too, never written through.
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,

    /// Seconds of growth profile to take of each suspect the agent does not sample already
    /// (--auto-growth); 0 takes none.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=crate::http::profile::MAX_SECONDS))]
    pub profile_seconds: u64,
}

impl From<ReportArgs> for crate::report::Options {
    fn from(a: ReportArgs) -> Self {
        Self {
            client: a.client,
            out: a.out,
            profile_seconds: a.profile_seconds,
        }
    }
}

impl From<InvestigateArgs> for crate::investigate::command::Options {
    fn from(a: InvestigateArgs) -> Self {
        use crate::investigate::command::Mode;
        Self {
            pid: a.pid,
            duration: a.duration,
            mode: match a.mode {
                InvestigateMode::Growth => Mode::Growth,
                InvestigateMode::Alloc => Mode::Alloc,
                InvestigateMode::Both => Mode::Both,
            },
            out: a.out,
            top: a.top,
            sample_period: a.sample_period,
            min_age: a.min_age,
            sample_bytes: a.sample_bytes,
            max_calls: a.max_calls,
            max_allocations: a.max_allocations,
            json: a.json,
            unwind: a.unwind.into(),
            fold: a.fold.map(|f| match f {
                FoldArg::UserEntry => crate::investigate::fold::Fold::UserEntry,
            }),
            python_frames: !a.no_python_frames,
        }
    }
}

fn parse_trace_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 5m)"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}` is out of range: use 1s to 1h"));
    }
    Ok(d)
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address to serve on; the default keeps the agent on loopback.
    #[arg(long, default_value = "127.0.0.1:9633")]
    pub listen: SocketAddr,

    /// Processes that get series of their own (any may match): comm=REGEX, cmdline=REGEX,
    /// cgroup=REGEX (cgroup v2 path) or pid=N. Default: every process.
    #[arg(long = "match", value_name = "KEY=VALUE")]
    pub matchers: Vec<Matcher>,

    /// At most this many processes get series of their own, largest first; the rest are summed
    /// into one pid="overflow" series.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_processes: u32,

    /// How often the agent reads every process's RSS (a task iterator; each scrape also
    /// reads it, at most once per 200 ms), or the kernel's per-process map with --rss-events.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Capacity of the kernel's per-process maps (LRU; evictions are counted).
    #[arg(long, default_value_t = monitor_common::DEFAULT_MAX_PROCS,
          value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub max_kernel_processes: u32,

    /// History the leak detector looks at, per process: 90s (the least it judges) to 24h.
    #[arg(long, default_value = "10m", value_parser = parse_leak_window)]
    pub leak_window: Duration,

    /// Growth this soon after start or exec is warm-up, not a leak.
    #[arg(long, default_value = "60s", value_parser = parse_window)]
    pub leak_warmup: Duration,

    /// Multiplies every detector duration (and divides its rate thresholds): 0.1 replays
    /// recorded behaviour ten times faster. For tests and benchmarks.
    #[arg(long, default_value_t = 1.0, value_parser = parse_time_scale)]
    pub detector_time_scale: f64,

    /// A per-worker memory limit, like Celery's --max-memory-per-child:
    /// MATCHER:SIZE, e.g. 'comm=^celery$:2GiB'. Time to limit uses the nearest of this and
    /// the process's cgroup limit.
    #[arg(long = "limit", value_name = "MATCHER:SIZE")]
    pub limits: Vec<ConfiguredLimit>,

    /// At most this many worker pools are tracked; the processes of one uid own at most a
    /// quarter of them (at least 4).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_pools: u32,

    /// TLS and basic auth for every endpoint but /healthz, from a file in the Prometheus
    /// exporter-toolkit format (tls_server_config: {cert_file, key_file},
    /// basic_auth_users: {USER: BCRYPT_HASH}).
    #[arg(long, value_name = "PATH")]
    pub web_config_file: Option<std::path::PathBuf>,

    /// Unix datagram socket workers send task markers to (integrations/PROTOCOL.md); its
    /// directory is created (root-owned, 0755). An existing directory must be owned by root
    /// and writable by nobody else, or be sticky like /tmp; a symlink is never followed. A
    /// directory that fails the check turns task markers off, with the reason in /healthz.
    /// Workers find the socket through LEAKSCOPE_SOCKET.
    #[arg(long, value_name = "PATH", default_value = crate::tasks::socket::DEFAULT_PATH)]
    pub task_socket: std::path::PathBuf,

    /// Do not open the task socket (no per-job numbers).
    #[arg(long)]
    pub no_task_socket: bool,

    /// Permissions of the task socket. 0666 lets any local user's workers (also those in
    /// other containers) send markers, which is safe: the sender's pid and uid come from the
    /// kernel, and each uid (and cgroup) has a bounded share of the agent's marker rate and
    /// tables. Use 0660 with --task-socket-group to allow one group only.
    #[arg(long, value_name = "OCTAL", default_value = "0666", value_parser = parse_mode)]
    pub task_socket_mode: u32,

    /// Group (name or gid) that owns the task socket file: with --task-socket-mode 0660, only
    /// root and members of this group may send markers. Workers in containers need this gid
    /// among their supplementary groups (e.g. Kubernetes securityContext.supplementalGroups).
    /// Only the socket file gets the group; its directory stays root's and must not be
    /// group-writable.
    #[arg(long, value_name = "GROUP")]
    pub task_socket_group: Option<String>,

    /// Datagrams the task socket queues. The kernel's default (net.unix.max_dgram_qlen) is 10;
    /// the agent raises the sysctl only while creating its socket, then puts it back.
    /// 0 keeps the system's value.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub task_queue_len: u32,

    /// Task markers per second each uid may send, however many processes it runs, in bursts
    /// of as many; each cgroup (where the agent knows the sender's) twice that. Beyond, they
    /// are dropped and counted
    /// (leakscope_markers_dropped_total{reason="uid_rate_limited"|"cgroup_rate_limited"}).
    #[arg(long, value_name = "N", default_value_t = crate::tasks::listener::DEFAULT_MARKER_RATE,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub marker_rate: u32,

    /// At most this many task names get series of their own; runs of others are summed into
    /// task="(overflow)" (a name idle for an hour gives its place up). One uid registers at
    /// most a quarter of them (at least 16), one cgroup twice that.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_tasks: u32,

    /// Per-thread accounting for processes that match (same syntax as --match). Each such
    /// process gets uprobes on its own libc mmap/munmap/mremap/brk (a trap per call, in that
    /// process only; 8 perf events), so it is never turned on by task markers alone: see
    /// --threads-for-uid.
    #[arg(long = "threads-for", value_name = "KEY=VALUE")]
    pub threads_for: Vec<Matcher>,

    /// Per-thread accounting for task-marker senders whose uid (from the kernel) is UID, and
    /// for their worker pool. Repeat for more uids. Markers from other uids are measured from
    /// their process's RSS only and never turn per-thread accounting on.
    #[arg(long = "threads-for-uid", value_name = "UID")]
    pub threads_for_uid: Vec<u32>,

    /// At most this many processes get per-thread accounting; one uid at most a quarter of
    /// them (at least 8), one cgroup twice that.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_thread_processes: u32,

    /// Capacity of the kernel's per-thread map (LRU; evictions are counted).
    #[arg(long, default_value_t = monitor_common::DEFAULT_MAX_THREADS,
          value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub max_kernel_threads: u32,

    /// Threads per process shown in /api/v1/processes and exported as
    /// leakscope_thread_* series.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub top_threads: u32,

    /// Serve the process API (/api/v1/*) to non-loopback peers too. Without it, peers on the
    /// network get /metrics and /healthz only. Pair it with basic auth (--web-config-file).
    #[arg(long)]
    pub expose_api: bool,

    /// Serve growth profiles at /debug/pprof/growth. Profiles show a process's code paths:
    /// without credentials they go only to a local user (over loopback) for their own
    /// processes, root for any; network peers need a web-config user named in
    /// profiling_users.
    #[arg(long)]
    pub enable_profiling: bool,

    /// Sample growth stacks (page faults, as `investigate --mode growth`) of processes whose
    /// verdict becomes leaking, until they stop leaking or exit; served at
    /// /debug/pprof/growth?pid=PID.
    #[arg(long, requires = "enable_profiling")]
    pub auto_growth: bool,

    /// --auto-growth: the longest one process is sampled on the agent's own behalf (every
    /// page fault on the host pays for the sampling program while any process is sampled).
    #[arg(long, default_value = "30m", value_parser = parse_auto_growth_duration)]
    pub auto_growth_max_duration: Duration,

    /// --auto-growth: one page fault sampled in this many, on average.
    #[arg(long, default_value_t = monitor_common::stacks::DEFAULT_SAMPLE_PERIOD,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub auto_growth_period: u32,

    /// --auto-growth: at most this many processes sampled at once (the fastest leakers).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub auto_growth_max: u32,

    /// How the native stacks of growth profiles (/debug/pprof/growth, --auto-growth) are
    /// unwound, as `investigate --unwind`: `dwarf` (stack copies unwound with call-frame
    /// information) or `fp` (frame pointers only).
    #[arg(long, value_enum, default_value_t = UnwindArg::Dwarf)]
    pub profile_unwind: UnwindArg,

    /// Track RSS at every change of the kernel's counters (a program on each page fault
    /// and each fork), for every transient peak between two intervals. Off by default: the
    /// agent reads every process's RSS with a task iterator once per --interval and at each
    /// scrape, at no cost between reads. Measured on a 2-vCPU VM (`cargo xtask bench overhead`,
    /// median of 15 paired rounds): a page-fault loop runs 1.07x slower with this flag (0.99x
    /// without), a fork/exit loop 1.07x (1.01x without).
    #[arg(long)]
    pub rss_events: bool,

    /// Fault injection for tests: attach this probe to a tracepoint that does not exist.
    #[arg(long, hide = true, value_name = "PROBE")]
    pub break_probe: Vec<String>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 500ms, 1s, 2m)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}` is out of range: use 100ms to 1h"));
    }
    Ok(d)
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 60s, 10m)"))?;
    if d > Duration::from_secs(24 * 3600) {
        return Err(format!("`{s}` is out of range: at most 24h"));
    }
    Ok(d)
}

fn parse_auto_growth_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30m, 2h)"))?;
    if d < Duration::from_secs(10) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("`{s}` is out of range: use 10s to 24h"));
    }
    Ok(d)
}

/// Refuses what could never give a verdict. The minimum history and the window are both
/// multiplied by --detector-time-scale, so comparing nominal values holds at any scale; what
/// the sampling interval adds is checked at start-up (`DetectorConfig::check_sampling`).
fn parse_leak_window(s: &str) -> Result<Duration, String> {
    let d = parse_window(s)?;
    let min = crate::model::detector::MIN_HISTORY_SECS;
    if d.is_zero() {
        return Err(format!(
            "`{s}` would keep no history (an unlimited window is not offered): use {min}s to 24h"
        ));
    }
    if d.as_secs_f64() < min {
        return Err(format!(
            "`{s}` is shorter than the {min}s of history the detector needs for any verdict: \
             use {min}s to 24h"
        ));
    }
    Ok(d)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("`{s}` is not an octal mode (e.g. 0666, 0660)"))?;
    if mode > 0o777 {
        return Err(format!(
            "`{s}` is out of range: permission bits only (at most 0777)"
        ));
    }
    Ok(mode)
}

fn parse_time_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.001..=1000.0).contains(&v) {
        return Err(format!("`{s}` is out of range: use 0.001 to 1000"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("leakscope").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_loopback_and_every_process() {
        let Command::Run(run) = parse(&["run"]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(run.listen.to_string(), "127.0.0.1:9633");
        assert!(run.matchers.is_empty());
        assert_eq!(run.interval, Duration::from_secs(1));
        assert!(
            !run.enable_profiling && !run.expose_api,
            "off the network by default"
        );
    }

    #[test]
    fn top_defaults_to_the_local_agent_and_refuses_bad_values() {
        let Command::Top(top) = parse(&["top"]).unwrap().command else {
            panic!("not top")
        };
        assert_eq!(top.client.agent, "http://127.0.0.1:9633");
        assert_eq!(top.client.timeout, Duration::from_secs(10));
        assert_eq!(
            (top.interval, top.profile_seconds),
            (Duration::from_secs(2), 10)
        );
        assert!(!top.once && top.client.user.is_none());
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&["top", "--interval", "10ms"]).contains("out of range"));
        assert!(err(&["top", "--timeout", "0s"]).contains("out of range"));
        assert!(err(&["top", "--profile-seconds", "0"]).contains("not in 1..=120"));
        assert!(err(&["top", "--password", "x"]).contains("unexpected argument"));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let err = |a: &[&str]| parse(a).unwrap_err().to_string();
        assert!(err(&["run", "--bogus"]).contains("--bogus"));
        assert!(err(&["run", "--listen", "nowhere"]).contains("invalid socket address"));
        assert!(err(&["run", "--match", "user=x"]).contains("unknown match key"));
        assert!(err(&["run", "--interval", "1ms"]).contains("out of range"));
        assert!(err(&["run", "--interval", "soon"]).contains("soon"));
        assert!(err(&["run", "--max-processes", "0"]).contains("0"));
        assert!(err(&["run", "--limit", "comm=x"]).contains("MATCHER:SIZE"));
        assert!(err(&["run", "--detector-time-scale", "0"]).contains("out of range"));
        assert!(err(&["run", "--leak-window", "forever"]).contains("forever"));
        assert!(err(&["run", "--task-socket-mode", "999"]).contains("octal"));
        assert!(err(&["run", "--task-socket-mode", "01777"]).contains("out of range"));
        assert!(err(&["run", "--threads-for", "who=x"]).contains("unknown match key"));
        assert!(err(&["run", "--auto-growth"]).contains("--enable-profiling"));
        assert!(err(&["run", "--auto-growth-max-duration", "1s"]).contains("out of range"));
    }

    #[test]
    fn a_leak_window_that_could_never_give_a_verdict_is_refused() {
        let window = |w: &str| match parse(&["run", "--leak-window", w]).map(|c| c.command) {
            Ok(Command::Run(run)) => Ok(run.leak_window),
            Ok(_) => panic!("not run"),
            Err(e) => Err(e.to_string()),
        };
        let zero = window("0s").unwrap_err();
        assert!(
            zero.contains("no history") && zero.contains("90s to 24h"),
            "{zero}"
        );
        let short = window("89s").unwrap_err();
        assert!(short.contains("shorter than the 90s"), "{short}");
        assert_eq!(window("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(window("10m"), Ok(Duration::from_secs(600)));
        assert!(window("25h").unwrap_err().contains("at most 24h"));
        // The warm-up may be zero.
        assert!(parse(&["run", "--leak-warmup", "0s"]).is_ok());
    }

    #[test]
    fn task_socket_defaults() {
        let Command::Run(run) = parse(&["run"]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(run.task_socket.to_str(), Some("/run/leakscope/tasks.sock"));
        assert_eq!(run.task_socket_mode, 0o666);
        assert!(!run.no_task_socket && run.threads_for.is_empty());
        let Command::Run(run) = parse(&["run", "--task-socket-mode", "0660"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert_eq!(run.task_socket_mode, 0o660);
    }

    #[test]
    fn investigate_defaults_and_bad_values() {
        let Command::Investigate(inv) = parse(&["investigate", "--pid", "42"]).unwrap().command
        else {
            panic!("not investigate")
        };
        assert_eq!((inv.pid, inv.mode), (42, InvestigateMode::Growth));
        assert_eq!(inv.duration, Duration::from_secs(60));
        assert!(inv.out.is_none() && !inv.json);
        let err = |a: &[&str]| parse(a).unwrap_err().to_string();
        assert!(err(&["investigate"]).contains("--pid"));
        assert!(err(&["investigate", "--pid", "x"]).contains("invalid value"));
        assert!(err(&["investigate", "--pid", "1", "--mode", "deep"]).contains("growth"));
        assert!(err(&["investigate", "--pid", "1", "--duration", "2h"]).contains("out of range"));
        assert!(err(&["investigate", "--pid", "1", "--sample-period", "0"]).contains("0"));
    }

    #[test]
    fn unwinding_is_dwarf_unless_told_fp() {
        let Command::Investigate(inv) = parse(&["investigate", "--pid", "42"]).unwrap().command
        else {
            panic!("not investigate")
        };
        assert_eq!(inv.unwind, UnwindArg::Dwarf);
        let Command::Investigate(inv) = parse(&["investigate", "--pid", "42", "--unwind", "fp"])
            .unwrap()
            .command
        else {
            panic!("not investigate")
        };
        assert_eq!(inv.unwind, UnwindArg::Fp);
        let Command::Run(run) = parse(&["run", "--profile-unwind", "fp"]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(run.profile_unwind, UnwindArg::Fp);
        let err = parse(&["investigate", "--pid", "1", "--unwind", "lbr"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("dwarf") && err.contains("fp"), "{err}");
    }
}
