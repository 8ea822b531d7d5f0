//! `cargo xtask bench alloc`: what `leakscope investigate` costs the process it traces.
//!
//! Two workloads, each started paused (it prints a first line, then waits for `go` on stdin)
//! so that a tracer can attach to its pid before the measured part, and kept until its stdin
//! closes, so that the tracer is stopped (SIGINT) while the process still exists, as in a real
//! investigation:
//! - `alloc_bench` (scenarios/c/alloc_bench.c), malloc/free pairs timed in ns per pair:
//!   untraced, under `investigate --mode alloc`, and under the classic bpftrace memleak script,
//!   the baseline an allocator tracer has to beat;
//! - the `overhead` bench's page-fault workload: untraced and under `investigate --mode growth`;
//! - a Python worker's job loop (xtask/scripts/py_worker.py on Debian's CPython, stripped and
//!   without frame pointers): untraced, under growth mode at the default period, under alloc
//!   mode (which adds the `python` allocator family) and under the malloc-only bpftrace script;
//! - the cost of one sample: growth mode sampling one fault in 4, on the C page-fault workload and
//!   on a fault-heavy run of the Python worker (glibc told to mmap its 1 MiB buffer for every
//!   job), with DWARF unwinding (stack copies unwound in user space) and with frame pointers
//!   only, and on the Python worker with and without its Python frames. The target pays the
//!   sample: its extra time over its untraced median, per sample it took, is the cost of one
//!   sample (kernel dispatch, stack walks and copies); the tracer's CPU time per fault is what
//!   user space spends on it (unwinding). The kernel's own per-program accounting would not
//!   do: the program runs on every process's faults, not only the target's.
//!
//! Every round runs every variant once, in an order rotated from round to round, so slow drift
//! (page cache, frequency, other load) spreads over all variants instead of biasing one. Figures
//! are printed against their targets, never asserted.
//!
//! A tracer counts as attached when:
//! - investigate: it prints a line starting `tracing pid P` on stderr, which it does once all
//!   its probes are attached;
//! - bpftrace: the kernel lists its three libc uprobes with their programs (`bpftool perf
//!   list`). Its own output makes no promise: `Attaching N probes...` is printed before
//!   attaching, and 0.17 runs BEGIN before attaching the rest (BEGIN's printf happens to reach
//!   stdout later, from the event loop: an implementation detail). Its uprobes are perf events,
//!   absent from tracefs's uprobe_events, and a fixed sleep would be a guess about how long
//!   LLVM takes to compile the script.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;

use super::rotated;
use crate::{setup, util};

pub struct Opts {
    pub rounds: usize,
}

/// leakscope's alloc mode should reach this multiple of bpftrace's malloc/free throughput.
const TARGET_THROUGHPUT_VS_BPFTRACE: f64 = 2.0;
/// Growth mode should slow the page-fault workload by at most this factor.
const TARGET_GROWTH_SLOWDOWN: f64 = 1.05;
/// Growth mode at its default period should slow a Python worker by at most this factor.
const TARGET_PYTHON_GROWTH_SLOWDOWN: f64 = 1.02;
/// Jobs per run of the Python worker (about 1.5 ms each): 1.5 s untraced.
const PYTHON_JOBS: &str = "1000";
/// Debian's CPython, statically linked, stripped, without frame pointers: the hard case for
/// stacks (`cargo xtask setup` installs it).
const PYTHON: &str = "/usr/bin/python3.11";
/// Jobs per fault-heavy run of the Python worker (256 faults each).
const PYTHON_FAULTS_JOBS: &str = "1000";
/// Loading BPF, resolving symbols and (bpftrace) compiling with LLVM: seconds on a busy host.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// investigate writes its report after SIGINT; symbolizing every stack takes a while.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longer than any run here, so investigate never stops by itself before it is told to.
const INVESTIGATE_DURATION: &str = "10m";
/// malloc's uprobe and uretprobe, and free's uprobe.
const BPFTRACE_LIBC_PROBES: usize = 3;
/// bpftool lists a probe once its program is set (PERF_EVENT_IOC_SET_BPF); enabling it is
/// bpftrace's next ioctl.
const PROBE_ENABLE_GRACE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    AllocBench,
    PageFaults,
    PythonWorker,
    /// The Python worker with its per-job buffer mapped and unmapped every time.
    PythonFaults,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracer {
    Untraced,
    /// `leakscope investigate` with these arguments (`--mode` and more).
    Investigate(&'static [&'static str]),
    Bpftrace,
}

struct Variant {
    label: &'static str,
    /// Names the variant's run directory.
    slug: &'static str,
    target: Target,
    tracer: Tracer,
    /// Also reports the cost of one sample.
    per_sample: bool,
}

const GROWTH: &[&str] = &["--mode", "growth"];
const GROWTH_FP: &[&str] = &["--mode", "growth", "--unwind", "fp"];
const ALLOC: &[&str] = &["--mode", "alloc"];
/// One fault in 4 for the per-sample costs: every fault would outrun the unwinder's ring on
/// these fault-bound targets, and a dropped record costs less than an unwound one.
const COST_PERIOD: f64 = 4.0;
const COST_DWARF: &[&str] = &["--mode", "growth", "--sample-period", "4"];
const COST_FP: &[&str] = &["--mode", "growth", "--sample-period", "4", "--unwind", "fp"];
const COST_DWARF_NO_PYTHON: &[&str] = &[
    "--mode",
    "growth",
    "--sample-period",
    "4",
    "--no-python-frames",
];
const COST_FP_NO_PYTHON: &[&str] = &[
    "--mode",
    "growth",
    "--sample-period",
    "4",
    "--unwind",
    "fp",
    "--no-python-frames",
];

const VARIANTS: [Variant; 17] = [
    Variant {
        label: "alloc_bench, untraced",
        slug: "alloc-untraced",
        target: Target::AllocBench,
        tracer: Tracer::Untraced,
        per_sample: false,
    },
    Variant {
        label: "alloc_bench + investigate --mode alloc",
        slug: "alloc-leakscope",
        target: Target::AllocBench,
        tracer: Tracer::Investigate(ALLOC),
        per_sample: false,
    },
    Variant {
        label: "alloc_bench + bpftrace memleak",
        slug: "alloc-bpftrace",
        target: Target::AllocBench,
        tracer: Tracer::Bpftrace,
        per_sample: false,
    },
    Variant {
        label: "page faults, untraced",
        slug: "faults-untraced",
        target: Target::PageFaults,
        tracer: Tracer::Untraced,
        per_sample: false,
    },
    Variant {
        label: "page faults + investigate --mode growth",
        slug: "faults-leakscope",
        target: Target::PageFaults,
        tracer: Tracer::Investigate(GROWTH),
        per_sample: false,
    },
    Variant {
        label: "python worker, untraced",
        slug: "python-untraced",
        target: Target::PythonWorker,
        tracer: Tracer::Untraced,
        per_sample: false,
    },
    Variant {
        label: "python worker + investigate --mode growth",
        slug: "python-growth",
        target: Target::PythonWorker,
        tracer: Tracer::Investigate(GROWTH),
        per_sample: false,
    },
    Variant {
        label: "python worker + investigate --mode alloc",
        slug: "python-alloc",
        target: Target::PythonWorker,
        tracer: Tracer::Investigate(ALLOC),
        per_sample: false,
    },
    Variant {
        label: "python worker + bpftrace memleak",
        slug: "python-bpftrace",
        target: Target::PythonWorker,
        tracer: Tracer::Bpftrace,
        per_sample: false,
    },
    Variant {
        label: "python worker + growth --unwind fp",
        slug: "python-growth-fp",
        target: Target::PythonWorker,
        tracer: Tracer::Investigate(GROWTH_FP),
        per_sample: false,
    },
    Variant {
        label: "python worker, mmap per job, untraced",
        slug: "python-faults-untraced",
        target: Target::PythonFaults,
        tracer: Tracer::Untraced,
        per_sample: false,
    },
    Variant {
        label: "sample cost: C, dwarf",
        slug: "cost-c-dwarf",
        target: Target::PageFaults,
        tracer: Tracer::Investigate(COST_DWARF),
        per_sample: true,
    },
    Variant {
        label: "sample cost: C, fp",
        slug: "cost-c-fp",
        target: Target::PageFaults,
        tracer: Tracer::Investigate(COST_FP),
        per_sample: true,
    },
    Variant {
        label: "sample cost: Python, dwarf + py frames",
        slug: "cost-py-dwarf",
        target: Target::PythonFaults,
        tracer: Tracer::Investigate(COST_DWARF),
        per_sample: true,
    },
    Variant {
        label: "sample cost: Python, fp + py frames",
        slug: "cost-py-fp",
        target: Target::PythonFaults,
        tracer: Tracer::Investigate(COST_FP),
        per_sample: true,
    },
    Variant {
        label: "sample cost: Python, dwarf, no py frames",
        slug: "cost-py-dwarf-nopy",
        target: Target::PythonFaults,
        tracer: Tracer::Investigate(COST_DWARF_NO_PYTHON),
        per_sample: true,
    },
    Variant {
        label: "sample cost: Python, fp, no py frames",
        slug: "cost-py-fp-nopy",
        target: Target::PythonFaults,
        tracer: Tracer::Investigate(COST_FP_NO_PYTHON),
        per_sample: true,
    },
];

struct Tools {
    agent: PathBuf,
    alloc_bench: PathBuf,
    workload: PathBuf,
    /// Per-run directories: investigate's report and every tracer's stdout and stderr.
    scratch: PathBuf,
}

pub fn run(opts: Opts) -> Result<()> {
    ensure!(opts.rounds > 0, "--rounds must be at least 1");
    if !util::is_root() {
        bail!("the alloc benchmark loads BPF programs: run it as root");
    }
    setup::ensure_bench_alloc_tools()?;
    ensure!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is missing: `cargo xtask setup` installs Debian's python3.11"
    );
    let tools = prepare()?;

    // Warm caches and the allocator before measuring.
    for v in VARIANTS.iter().filter(|v| v.tracer == Tracer::Untraced) {
        measure(&tools, v, &tools.scratch.join(format!("warmup-{}", v.slug)))?;
    }
    let mut samples = vec![Vec::new(); VARIANTS.len()];
    let mut faults = vec![Vec::new(); VARIANTS.len()];
    let mut tracer_cpu = vec![Vec::new(); VARIANTS.len()];
    for round in 0..opts.rounds {
        for i in rotated(VARIANTS.len(), round) {
            let v = &VARIANTS[i];
            let dir = tools.scratch.join(format!("round{}-{}", round + 1, v.slug));
            let m = measure(&tools, v, &dir)?;
            samples[i].push(m.value);
            faults[i].push(m.faults as f64);
            tracer_cpu[i].extend(m.tracer_cpu_ns.map(|ns| ns as f64));
        }
        eprintln!("round {}/{} done", round + 1, opts.rounds);
    }
    print_report(&samples, &faults, &tracer_cpu, opts.rounds);
    println!("tracer output and reports: {}", tools.scratch.display());
    Ok(())
}

fn prepare() -> Result<Tools> {
    let agent = util::build_agent(true)?;
    let workload = super::build_workload(&agent)?;
    let alloc_bench = build_scenario("alloc_bench")?;
    let scratch =
        std::env::temp_dir().join(format!("leakscope-bench-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    Ok(Tools {
        agent,
        alloc_bench,
        workload,
        scratch,
    })
}

/// Builds the C scenarios where the tests and the detection bench build them.
fn build_scenario(name: &str) -> Result<PathBuf> {
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target"))
        .join("scenarios");
    let mut make = Command::new("make");
    make.args(["-s", "-C"])
        .arg(util::workspace_root().join("scenarios"))
        .arg(format!("OUT={}", out.display()));
    util::check(make)?;
    Ok(out.join(name))
}

struct Measured {
    /// ns per malloc/free pair (alloc_bench) or elapsed seconds (the others).
    value: f64,
    /// Page faults the target took in its measured part.
    faults: u64,
    /// Per-sample variants: the tracer's CPU time over the measured part.
    tracer_cpu_ns: Option<u64>,
}

fn measure(tools: &Tools, v: &Variant, dir: &Path) -> Result<Measured> {
    if v.tracer != Tracer::Untraced {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut target = PausedTarget::spawn(target_command(tools, v.target))?;
    let tracer = match v.tracer {
        Tracer::Untraced => None,
        Tracer::Investigate(args) => {
            Some(start_investigate(&tools.agent, target.pid(), args, dir)?)
        }
        Tracer::Bpftrace => Some(start_bpftrace(target.pid(), dir)?),
    };
    let cpu_before = match &tracer {
        Some(t) if v.per_sample => Some(cpu_ns(t.child.id())?),
        _ => None,
    };
    let faults_before = minor_faults(target.pid())?;
    let result = target.go_and_read_result()?;
    let faults = minor_faults(target.pid())?.saturating_sub(faults_before);
    let tracer_cpu_ns = match (&tracer, cpu_before) {
        (Some(t), Some(before)) => Some(cpu_ns(t.child.id())?.saturating_sub(before)),
        _ => None,
    };
    if let Some(tracer) = tracer {
        tracer.stop()?;
    }
    target.finish()?;
    let value = parse_result(v.target, &result)
        .with_context(|| format!("{}: unexpected output {result:?}", v.label))?;
    Ok(Measured {
        value,
        faults,
        tracer_cpu_ns,
    })
}

fn target_command(tools: &Tools, target: Target) -> Command {
    match target {
        Target::AllocBench => Command::new(&tools.alloc_bench),
        Target::PageFaults => {
            let mut cmd = Command::new(&tools.workload);
            cmd.arg("--wait-go").args(super::PAGE_FAULTS_ARGS);
            cmd
        }
        Target::PythonWorker => {
            let mut cmd = Command::new(PYTHON);
            cmd.arg(util::workspace_root().join("xtask/scripts/py_worker.py"))
                .arg(PYTHON_JOBS);
            cmd
        }
        Target::PythonFaults => {
            let mut cmd = Command::new(PYTHON);
            // A fixed threshold turns off glibc's adaptive one, which would otherwise move
            // above the 1 MiB buffer after the first job and reuse the heap from then on.
            cmd.arg(util::workspace_root().join("xtask/scripts/py_worker.py"))
                .arg(PYTHON_FAULTS_JOBS)
                .env("MALLOC_MMAP_THRESHOLD_", "131072");
            cmd
        }
    }
}

fn parse_result(target: Target, line: &str) -> Result<f64> {
    #[derive(Deserialize)]
    struct AllocBenchResult {
        ns_per_pair: f64,
    }
    Ok(match target {
        Target::AllocBench => serde_json::from_str::<AllocBenchResult>(line)?.ns_per_pair,
        Target::PageFaults | Target::PythonWorker | Target::PythonFaults => line.trim().parse()?,
    })
}

// ---------------------------------------------------------------------------------------------
// /proc/PID/stat

/// The fields of /proc/PID/stat after the command name, which is in parentheses and may hold
/// spaces.
fn stat_fields(pid: u32) -> Result<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    // The state (a letter) reads as 0; the numbers used here come after it.
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

fn stat_field(pid: u32, index: usize) -> Result<u64> {
    stat_fields(pid)?
        .get(index)
        .copied()
        .with_context(|| format!("short /proc/{pid}/stat"))
}

/// Minor page faults so far (stat's field 10, 8th after the name).
fn minor_faults(pid: u32) -> Result<u64> {
    stat_field(pid, 7)
}

/// User plus system CPU time of a process so far (stat's fields 14 and 15).
fn cpu_ns(pid: u32) -> Result<u64> {
    let ticks = stat_field(pid, 11)? + stat_field(pid, 12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_report(samples: &[Vec<f64>], faults: &[Vec<f64>], tracer_cpu: &[Vec<f64>], rounds: usize) {
    let medians: Vec<f64> = samples.iter().map(|s| super::median(s)).collect();
    let untraced_median = |target: Target| {
        VARIANTS
            .iter()
            .position(|v| v.target == target && v.tracer == Tracer::Untraced)
            .map_or(f64::NAN, |i| medians[i])
    };
    println!();
    println!("alloc: {rounds} interleaved rounds, median (min..max) per variant");
    println!(
        "{:<44} {:>16} {:>28} {:>12}",
        "variant", "median", "min..max", "vs untraced"
    );
    for (i, v) in VARIANTS.iter().enumerate() {
        let min = samples[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples[i].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (unit, digits) = match v.target {
            Target::AllocBench => ("ns/pair", 1),
            _ => ("s", 4),
        };
        println!(
            "{:<44} {:>16} {:>28} {:>11.3}x",
            v.label,
            format!("{:.digits$} {unit}", medians[i]),
            format!("{min:.digits$}..{max:.digits$} {unit}"),
            medians[i] / untraced_median(v.target)
        );
    }
    println!();
    println!("the cost of one sample (growth mode, one fault in {COST_PERIOD} sampled), medians:");
    println!(
        "{:<44} {:>12} {:>22} {:>22}",
        "variant", "samples", "target's ns per sample", "tracer's ns per sample"
    );
    for (i, v) in VARIANTS.iter().enumerate().filter(|(_, v)| v.per_sample) {
        let n = (super::median(&faults[i]) / COST_PERIOD).max(1.0);
        let extra = (medians[i] - untraced_median(v.target)) * 1e9 / n;
        let tracer = super::median(&tracer_cpu[i]) / n;
        println!("{:<44} {n:>12.0} {extra:>22.0} {tracer:>22.0}", v.label);
    }
    let median_of = |target: Target, tracer: Tracer| {
        VARIANTS
            .iter()
            .position(|v| v.target == target && v.tracer == tracer && !v.per_sample)
            .map_or(f64::NAN, |i| medians[i])
    };
    println!();
    println!(
        "alloc mode: leakscope runs {:.2}x bpftrace's malloc/free throughput (target >= {:.0}x)",
        median_of(Target::AllocBench, Tracer::Bpftrace)
            / median_of(Target::AllocBench, Tracer::Investigate(ALLOC)),
        TARGET_THROUGHPUT_VS_BPFTRACE
    );
    println!(
        "growth mode: page-fault workload slowed {:.3}x (target <= {:.2}x)",
        median_of(Target::PageFaults, Tracer::Investigate(GROWTH))
            / untraced_median(Target::PageFaults),
        TARGET_GROWTH_SLOWDOWN
    );
    let python = untraced_median(Target::PythonWorker);
    println!(
        "growth mode: Python worker slowed {:.3}x at the default period, {:.3}x with --unwind fp \
         (target <= {:.2}x)",
        median_of(Target::PythonWorker, Tracer::Investigate(GROWTH)) / python,
        median_of(Target::PythonWorker, Tracer::Investigate(GROWTH_FP)) / python,
        TARGET_PYTHON_GROWTH_SLOWDOWN
    );
    println!(
        "alloc mode with the python family: Python worker slowed {:.2}x; bpftrace's malloc-only \
         script {:.2}x",
        median_of(Target::PythonWorker, Tracer::Investigate(ALLOC)) / python,
        median_of(Target::PythonWorker, Tracer::Bpftrace) / python
    );
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A workload that has printed its first line and waits for `go` on stdin; after its result
/// line it waits for stdin to close. Killed on drop unless it ran to the end.
struct PausedTarget {
    child: Child,
    /// Dropped to let the workload exit.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl PausedTarget {
    fn spawn(mut cmd: Command) -> Result<Self> {
        // stderr stays ours: the workloads only write there when something is wrong.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdin = Some(child.stdin.take().context("child stdin")?);
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut target = Self {
            child,
            stdin,
            stdout,
        };
        // The first line comes from main(): the process has exec'd and its libraries are
        // mapped, so a tracer sees the final memory map.
        let mut first = String::new();
        target.stdout.read_line(&mut first)?;
        ensure!(!first.is_empty(), "{cmd:?} exited before it was ready");
        Ok(target)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the measured part; returns the result line it prints at the end.
    fn go_and_read_result(&mut self) -> Result<String> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the workload was already started")?;
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .context("writing go to the workload")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        ensure!(
            !line.is_empty(),
            "workload {} exited without a result",
            self.pid()
        );
        Ok(line)
    }

    /// Closes stdin, the workload's cue to exit, and checks that it exits cleanly.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        std::io::copy(&mut self.stdout, &mut std::io::sink())?;
        let status = self.child.wait()?;
        ensure!(status.success(), "workload {} failed: {status}", self.pid());
        Ok(())
    }
}

impl Drop for PausedTarget {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tracer attached to one workload; killed on drop unless stopped.
struct TracerProcess {
    name: &'static str,
    child: Child,
    stderr_log: PathBuf,
    /// Copies a piped stderr into `stderr_log`; joined once the tracer has exited.
    stderr_copier: Option<JoinHandle<()>>,
}

impl TracerProcess {
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path, stem: &str) -> Result<Self> {
        let stdout = create(&dir.join(format!("{stem}.stdout")))?;
        let stderr_log = dir.join(format!("{stem}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Self {
            name,
            child,
            stderr_log,
            stderr_copier: None,
        })
    }

    /// Starts copying stderr to its log; returns its lines as they come.
    fn follow_stderr(&mut self) -> Result<mpsc::Receiver<String>> {
        let stderr = self.child.stderr.take().context("tracer stderr")?;
        let mut log = create(&self.stderr_log)?;
        let (tx, rx) = mpsc::channel();
        self.stderr_copier = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                // Nobody listens once the tracer is attached; the log still gets every line.
                let _ = tx.send(line);
            }
        }));
        Ok(rx)
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The end of its stderr, for error messages.
    fn log_tail(&mut self) -> String {
        if let Some(copier) = self.stderr_copier.take_if(|c| c.is_finished()) {
            let _ = copier.join();
        }
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "{} (last lines of {}):\n{}",
            self.name,
            self.stderr_log.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// SIGINT (the tracer's normal stop: investigate writes its report), then waits.
    fn stop(mut self) -> Result<()> {
        // SAFETY: a plain signal to our own child; not yet reaped, so its pid is still its own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let name = self.name;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.exited()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{name} did not stop within {STOP_TIMEOUT:?} of SIGINT; killed. {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(copier) = self.stderr_copier.take() {
            let _ = copier.join();
        }
        ensure!(
            status.success(),
            "{name} exited with {status} after SIGINT. {}",
            self.log_tail()
        );
        Ok(())
    }
}

impl Drop for TracerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// leakscope investigate

fn start_investigate(agent: &Path, pid: u32, args: &[&str], dir: &Path) -> Result<TracerProcess> {
    let mut cmd = Command::new(agent);
    cmd.arg("investigate")
        .args(["--pid", &pid.to_string()])
        .args(args)
        .args(["--duration", INVESTIGATE_DURATION])
        .arg("--out")
        .arg(dir.join("report"));
    let mut tracer = TracerProcess::spawn("leakscope investigate", cmd, dir, "investigate")?;
    let lines = tracer.follow_stderr()?;
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if announces_tracing(&line, pid) => return Ok(tracer),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "no `tracing pid {pid}` line within {ATTACH_TIMEOUT:?}. {}",
                tracer.log_tail()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                "investigate closed stderr before tracing pid {pid}. {}",
                tracer.log_tail()
            ),
        }
    }
}

/// investigate's "all probes attached" line: `tracing pid P ...`.
fn announces_tracing(line: &str, pid: u32) -> bool {
    line.trim_start()
        .strip_prefix("tracing pid ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .is_some_and(|n| n == pid.to_string())
}

// ---------------------------------------------------------------------------------------------
// bpftrace

fn start_bpftrace(pid: u32, dir: &Path) -> Result<TracerProcess> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let libc = libc_in_maps(&maps).with_context(|| format!("pid {pid} maps no libc"))?;
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-p", &pid.to_string(), "-e", &memleak_script(&libc, pid)]);
    let mut tracer = TracerProcess::spawn("bpftrace", cmd, dir, "bpftrace")?;
    drop(tracer.follow_stderr()?);
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        if let Some(status) = tracer.exited()? {
            bail!(
                "bpftrace exited ({status}) before attaching. {}",
                tracer.log_tail()
            );
        }
        if libc_uprobes_of(tracer.child.id(), &libc)? >= BPFTRACE_LIBC_PROBES {
            std::thread::sleep(PROBE_ENABLE_GRACE);
            return Ok(tracer);
        }
        if Instant::now() > deadline {
            bail!(
                "bpftrace's uprobes not attached within {ATTACH_TIMEOUT:?}. {}",
                tracer.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The classic allocation tracker: outstanding allocations by address, per-thread size
/// between malloc's entry and return. bpftrace 0.17's `-p` does not restrict uprobes to the
/// process (it opens them for pid -1; newer versions do), hence the predicates. END clears the maps so that the exit does
/// not print them.
fn memleak_script(libc: &Path, pid: u32) -> String {
    let libc = libc.display();
    format!(
        "uprobe:{libc}:malloc /pid == {pid}/ {{ @size[tid] = arg0; }}\n\
         uretprobe:{libc}:malloc /pid == {pid}/ {{ @allocs[retval] = @size[tid]; delete(@size[tid]); }}\n\
         uprobe:{libc}:free /pid == {pid}/ {{ delete(@allocs[arg0]); }}\n\
         END {{ clear(@allocs); clear(@size); }}\n"
    )
}

/// The C library a process mapped (`libc.so.6`, or `libc-2.x.so` on older systems).
fn libc_in_maps(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
        .map(Path::to_path_buf)
}

/// One entry of `bpftool -j perf list`: a BPF program on a perf event, by owning process.
#[derive(Deserialize)]
struct PerfAttachment {
    pid: u32,
    fd_type: String,
    #[serde(default)]
    filename: Option<String>,
}

/// Uprobes and uretprobes on `libc` with a BPF program, held by process `owner`.
fn libc_uprobes_of(owner: u32, libc: &Path) -> Result<usize> {
    let json = util::output(Command::new("bpftool").args(["-j", "perf", "list"]))?;
    let attachments: Vec<PerfAttachment> =
        serde_json::from_str(&json).context("parsing `bpftool -j perf list`")?;
    Ok(count_uprobes(&attachments, owner, libc))
}

fn count_uprobes(attachments: &[PerfAttachment], owner: u32, libc: &Path) -> usize {
    let libc = std::fs::canonicalize(libc).unwrap_or_else(|_| libc.to_path_buf());
    attachments
        .iter()
        .filter(|a| a.pid == owner && matches!(a.fd_type.as_str(), "uprobe" | "uretprobe"))
        .filter_map(|a| a.filename.as_deref())
        .filter(|f| std::fs::canonicalize(f).unwrap_or_else(|_| PathBuf::from(f)) == libc)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_variant_order() {
        assert_eq!(rotated(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotated(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotated(3, 5).collect::<Vec<_>>(), [2, 0, 1]);
    }

    #[test]
    fn the_tracing_line_must_name_the_pid() {
        assert!(announces_tracing("tracing pid 1234 (mode alloc) ...", 1234));
        assert!(announces_tracing("  tracing pid 1234", 1234));
        assert!(!announces_tracing("tracing pid 12345 (mode alloc)", 1234));
        assert!(!announces_tracing("attaching; tracing pid 1234 next", 1234));
        assert!(!announces_tracing("tracing pid", 1234));
    }

    #[test]
    fn libc_is_found_in_the_memory_map() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1 /tmp/alloc_bench
7f1c2a000000-7f1c2a026000 r--p 00000000 fe:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a400000-7f1c2a401000 rw-p 00000000 00:00 0
";
        assert_eq!(
            libc_in_maps(maps),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        let old = "7f00-7f01 r-xp 00000000 08:01 3 /lib/x86_64-linux-gnu/libc-2.31.so\n";
        assert_eq!(
            libc_in_maps(old),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libc-2.31.so"))
        );
        assert_eq!(libc_in_maps("7f00-7f01 r-xp 0 0:0 0 [vdso]\n"), None);
    }

    #[test]
    fn only_the_owners_libc_uprobes_count() {
        let json = r#"[
            {"pid": 10, "fd": 11, "prog_id": 1, "fd_type": "uprobe",
             "filename": "/no/such/libc.so.6", "offset": 1},
            {"pid": 10, "fd": 12, "prog_id": 2, "fd_type": "uretprobe",
             "filename": "/no/such/libc.so.6", "offset": 1},
            {"pid": 10, "fd": 13, "prog_id": 3, "fd_type": "uprobe",
             "filename": "/usr/bin/bpftrace", "offset": 2},
            {"pid": 99, "fd": 4, "prog_id": 4, "fd_type": "uprobe",
             "filename": "/no/such/libc.so.6", "offset": 1},
            {"pid": 10, "fd": 14, "prog_id": 5, "fd_type": "kprobe", "func": "do_exit", "offset": 0}
        ]"#;
        let attachments: Vec<PerfAttachment> = serde_json::from_str(json).unwrap();
        assert_eq!(
            count_uprobes(&attachments, 10, Path::new("/no/such/libc.so.6")),
            2
        );
    }

    #[test]
    fn the_memleak_script_filters_by_pid() {
        let script = memleak_script(Path::new("/lib/libc.so.6"), 42);
        assert!(script.contains("uretprobe:/lib/libc.so.6:malloc /pid == 42/"));
        assert_eq!(script.matches("/pid == 42/").count(), 3);
    }

    #[test]
    fn results_parse() {
        let line = r#"{"pairs":2000000,"elapsed_ns":193749268,"ns_per_pair":96.875}"#;
        assert_eq!(parse_result(Target::AllocBench, line).unwrap(), 96.875);
        assert_eq!(
            parse_result(Target::PageFaults, "1.250000\n").unwrap(),
            1.25
        );
        assert!(parse_result(Target::AllocBench, "ready").is_err());
    }
}
