//! Benchmarks, reported as ratios against a baseline run side by side in the same run.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::{setup, util};

// Declared here rather than in main.rs: `bench` owns the benchmark subcommands.
#[path = "bench_alloc.rs"]
mod bench_alloc;
#[path = "bench_metrics.rs"]
mod bench_metrics;
#[path = "detection.rs"]
mod detection;

#[derive(Debug, Subcommand)]
pub enum Which {
    /// Workload slowdown with and without the agent (page faults, fork/exit), interleaved.
    Overhead {
        /// Interleaved rounds (each: baseline run, then a run under the agent).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// Leak detection on the scenario corpus (scenarios/scenarios.toml), all scenarios under
    /// one agent: time to the first `leaking` verdict against each target, precision, recall.
    Detection {
        /// Time scale F: scenarios get `--time-scale F` and the agent
        /// `--detector-time-scale F`, so 0.1 replays the real-time run ten times faster.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Nominal seconds to run [default: the largest target + 60].
        #[arg(long)]
        duration: Option<f64>,
        /// Run only these scenarios (names from scenarios.toml).
        #[arg(long, num_args = 1.., value_name = "NAME")]
        only: Vec<String>,
    },
    /// `leakscope investigate` against an allocator-heavy microbenchmark and a page-fault
    /// workload: its slowdown per mode, interleaved with untraced runs and a bpftrace baseline.
    Alloc {
        /// Interleaved rounds (each: every variant once, in rotated order).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// /metrics with many tracked processes (real `sleep`s, each with series of its own):
    /// exposition size and scrape time against the targets (< 4 MiB, median < 50 ms).
    Metrics {
        /// Tracked processes.
        #[arg(long, default_value_t = 1000)]
        processes: usize,
        /// Scrapes measured.
        #[arg(long, default_value_t = 30)]
        scrapes: usize,
    },
}

pub fn run(which: Which) -> Result<()> {
    setup::run(false)?;
    match which {
        Which::Overhead { rounds } => overhead(rounds),
        Which::Detection {
            time_scale,
            duration,
            only,
        } => detection::run(detection::Opts {
            time_scale,
            duration,
            only,
        }),
        Which::Alloc { rounds } => bench_alloc::run(bench_alloc::Opts { rounds }),
        Which::Metrics { processes, scrapes } => {
            bench_metrics::run(bench_metrics::Opts { processes, scrapes })
        }
    }
}

struct Workload {
    name: &'static str,
    args: &'static [&'static str],
}

const PAGE_FAULTS: Workload = Workload {
    name: "page faults (256 MiB x 8 touch+unmap)",
    args: &["faults", "256", "8"],
};

const WORKLOADS: [Workload; 2] = [
    PAGE_FAULTS,
    Workload {
        name: "fork/exit (3000 children)",
        args: &["forks", "3000"],
    },
];

fn overhead(rounds: usize) -> Result<()> {
    if !util::is_root() {
        bail!("the overhead benchmark loads BPF programs: run it as root");
    }
    let agent_bin = util::build_agent(true)?;
    let workload = build_workload(&agent_bin)?;

    // Warm caches and the page allocator before measuring.
    for w in &WORKLOADS {
        time_workload(&workload, w.args)?;
    }
    let mut base = vec![Vec::new(); WORKLOADS.len()];
    let mut traced = vec![Vec::new(); WORKLOADS.len()];
    let mut agent_cpu = Vec::new();
    let mut agent_peak = 0u64;
    for round in 0..rounds {
        for (i, w) in WORKLOADS.iter().enumerate() {
            base[i].push(time_workload(&workload, w.args)?);
        }
        let agent = RunningAgent::start(&agent_bin)?;
        for (i, w) in WORKLOADS.iter().enumerate() {
            traced[i].push(time_workload(&workload, w.args)?);
        }
        let (cpu, peak) = agent.stop()?;
        agent_cpu.push(cpu);
        agent_peak = agent_peak.max(peak);
        eprintln!("round {}/{rounds} done", round + 1);
    }
    println!();
    println!("overhead: {rounds} interleaved rounds, median wall seconds per workload run");
    println!(
        "{:<40} {:>10} {:>12} {:>9}",
        "workload", "baseline", "with agent", "ratio"
    );
    for (i, w) in WORKLOADS.iter().enumerate() {
        let b = median(&mut base[i]);
        let t = median(&mut traced[i]);
        println!("{:<40} {:>10.4} {:>12.4} {:>8.3}x", w.name, b, t, t / b);
    }
    println!(
        "agent CPU per round (both workloads under it): median {:.3} s; agent peak RSS {:.1} MiB",
        median(&mut agent_cpu),
        agent_peak as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Builds the `workload` binary (tests/src/bin/workload.rs) next to the release agent.
fn build_workload(agent_bin: &Path) -> Result<PathBuf> {
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "integration-tests",
        "--bin",
        "workload",
    ])?;
    Ok(agent_bin.with_file_name("workload"))
}

fn time_workload(bin: &Path, args: &[&str]) -> Result<f64> {
    let out = util::output(Command::new(bin).args(args))?;
    out.trim()
        .parse()
        .with_context(|| format!("workload printed {out:?}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct RunningAgent {
    child: Child,
}

impl RunningAgent {
    fn start(bin: &PathBuf) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(bin)
            .args([
                "run",
                "--no-task-socket",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the agent")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("agent did not start serving within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Serving happens after the probes are attached; give the first interval time to run.
        std::thread::sleep(Duration::from_millis(1200));
        Ok(Self { child })
    }

    /// Stops the agent; returns its CPU seconds and peak RSS bytes.
    fn stop(mut self) -> Result<(f64, u64)> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        self.child.wait()?;
        let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let hwm_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Ok((ticks / hz, hwm_kb * 1024))
    }
}
