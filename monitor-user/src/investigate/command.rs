//! `leakscope investigate --pid PID`: attach, trace for a while, report.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use monitor_common::stacks::StackCounter;

use super::{
    alloc::AllocTrace,
    allocators,
    collect::{self, Target},
    flame,
    growth::Growth,
    maps_snapshot::{self, MapsError},
    out_dir::OutDir,
    pprof,
    report::{Report, human_duration},
    table, target, tracer,
    unwind::{UnwindMode, Unwinding},
};
use crate::{bpf::object::StackCapacity, host::caps::CapSet, model::state::boot_ns};

const POLL: Duration = Duration::from_millis(200);
const MAPS_REFRESH: Duration = Duration::from_secs(1);
const STACK_CAPACITY: u32 = 16_384;

/// What `leakscope investigate` was asked for (its flags, built at the boundary by cli).
#[derive(Clone, Debug)]
pub struct Options {
    pub pid: u32,
    pub duration: Duration,
    pub mode: Mode,
    pub out: Option<std::path::PathBuf>,
    /// Stacks shown in the table (0: all).
    pub top: usize,
    pub sample_period: u32,
    pub min_age: Duration,
    pub sample_bytes: u64,
    pub max_calls: u64,
    pub max_allocations: u32,
    pub json: bool,
    pub unwind: UnwindMode,
    pub fold: Option<super::fold::Fold>,
    /// Walk CPython's frames in the samplers (off: native stacks only, a cheaper sample).
    pub python_frames: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Growth,
    Alloc,
    Both,
}

pub async fn run(args: Options) -> anyhow::Result<()> {
    let pid = args.pid;
    if pid == std::process::id() {
        bail!("pid {pid} is leakscope itself");
    }
    let comm = target::check(pid)?;
    let missing = CapSet::current()
        .context("reading leakscope's capabilities")?
        .missing_required();
    if !missing.is_empty() {
        let names: Vec<_> = missing.iter().map(|c| c.name).collect();
        bail!("missing capabilities: {}; run as root", names.join(", "));
    }
    crate::bpf::object::present()?;
    // Refused before the run rather than after it; held open, so the directory that passed
    // the checks is the one written to.
    let out = args.out.as_deref().map(OutDir::open).transpose()?;
    crate::bpf::object::raise_memlock();
    let layout = crate::bpf::layout::Layout::read_mounting();
    let capacity = StackCapacity {
        stacks: STACK_CAPACITY,
        allocations: args.max_allocations,
        alloc_sample_bytes: args.sample_bytes,
        unwind_copy_bytes: args.unwind.copy_bytes(),
    };
    let kernel = Arc::new(
        crate::bpf::object::load_for_investigation(&layout, &capacity)
            .context("loading the BPF programs")?,
    );
    let mut shared = tracer::Shared::take(&kernel)?;
    // Draining before any sampler runs, so the first samples find room in the ring.
    let unwinding = match args.unwind {
        UnwindMode::Dwarf => Some(Unwinding::start(&kernel)?),
        UnwindMode::Fp => None,
    };
    let mut mappings = match maps_snapshot::read(pid) {
        Ok(m) => m,
        Err(MapsError::Gone { .. }) => {
            bail!("pid {pid} ({comm}) exited before it could be traced")
        }
        Err(e) => bail!("pid {pid} ({comm}): {e}"),
    };

    // Before any sampler runs, so that every sample of a CPython process has its Python path.
    if args.python_frames {
        shared.python.add(pid, &mappings);
    } else {
        shared.python.skip(
            pid,
            "Python frames off (--no-python-frames): native stacks only",
        );
    }
    let wants_growth = args.mode != Mode::Alloc;
    let wants_alloc = args.mode != Mode::Growth;
    let mut growth = None;
    if wants_growth {
        let mut g = Growth::new(kernel.clone())?;
        g.add(pid, args.sample_period)?;
        growth = Some(g);
    }
    let mut alloc = None;
    if wants_alloc {
        let found = allocators::discover(pid, &mappings)?;
        let mut trace = AllocTrace::new(kernel.clone())?;
        trace.attach(pid, &found)?;
        log::info!("allocator probes: {}", trace.attached.join(", "));
        for off in &trace.off {
            log::warn!("allocator probe off: {off}");
        }
        alloc = Some(trace);
    }
    let mode = match args.mode {
        Mode::Growth => "growth",
        Mode::Alloc => "alloc",
        Mode::Both => "growth+alloc",
    };
    // Harnesses wait for this line: every probe is in place once it is printed.
    eprintln!(
        "tracing pid {pid} ({comm}) mode {mode} for {}; Ctrl-C stops early",
        human_duration(args.duration)
    );

    let started = Instant::now();
    let mut last_maps = Instant::now();
    let mut exited = None;
    let mut budget_note = None;
    let mut interrupt =
        crate::shutdown::Signals::install().context("installing the signal handlers")?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = interrupt.recv() => break,
        }
        if !crate::host::proc::running(pid) {
            exited = Some(started.elapsed());
            break;
        }
        if last_maps.elapsed() >= MAPS_REFRESH {
            if let Ok(m) = maps_snapshot::read(pid) {
                mappings = m;
            }
            if let Some(g) = &growth {
                shared
                    .python
                    .warm(pid, g.collect(pid).into_iter().map(|(k, _)| k.py_stack));
            }
            last_maps = Instant::now();
        }
        if let Some(trace) = alloc.as_mut().filter(|t| t.is_attached()) {
            let calls =
                shared.counter(StackCounter::AllocCalls) + shared.counter(StackCounter::FreeCalls);
            if calls >= args.max_calls {
                trace.detach();
                let note = format!(
                    "allocator probes detached after {calls} calls ({} in): --max-calls spent",
                    human_duration(started.elapsed())
                );
                log::warn!("{note}");
                budget_note = Some(note);
                if growth.is_none() {
                    break;
                }
            }
        }
        if started.elapsed() >= args.duration {
            break;
        }
    }
    let traced = started.elapsed();
    // Stop the probes before reading: the process no longer pays while we symbolize.
    if let Some(trace) = alloc.as_mut() {
        trace.detach();
    }
    // Growth too: a page sampled after the unwinding ring's last drain would keep its
    // frame-pointer stack.
    if let Some(g) = growth.as_mut() {
        g.detach();
    }
    // What is still in the ring is unwound before the reports are read.
    let unwound = unwinding.map(Unwinding::finish);
    let now = boot_ns();
    let alive = exited.is_none();
    if alive && let Ok(m) = maps_snapshot::read(pid) {
        mappings = m;
    }
    let target = Target {
        pid,
        comm: &comm,
        alive,
        mappings: &mappings,
    };
    let mut reports = Vec::new();
    if let Some(g) = &growth {
        reports.push(collect::growth_report(
            &target,
            g,
            &shared,
            unwound.as_ref(),
            traced,
            args.sample_period,
        ));
    }
    if let Some(trace) = &alloc {
        let window = collect::AllocWindow {
            duration: traced,
            min_age: args.min_age,
            now_ns: now,
            sample_bytes: args.sample_bytes,
        };
        let mut r = collect::alloc_report(&target, trace, &shared, unwound.as_ref(), window);
        r.notes.extend(budget_note.clone());
        reports.push(r);
    }
    if let Some(after) = exited {
        for r in &mut reports {
            r.notes.push(format!(
                "pid {pid} exited {} into the run: symbolized from the files its mappings \
                 named, as seen from the host",
                human_duration(after)
            ));
        }
    }
    if let Some(how) = args.fold {
        for r in &mut reports {
            super::fold::fold(r, how);
        }
    }
    print(&reports, &args)?;
    if let Some(out) = &out {
        write_out(out, &reports)?;
        eprintln!("wrote {}", out.shown());
    }
    if let Some(after) = exited {
        bail!(
            "pid {pid} ({comm}) exited {} into the {} run; the report covers what it did until then",
            human_duration(after),
            human_duration(args.duration)
        );
    }
    Ok(())
}

fn print(reports: &[Report], args: &Options) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(reports)?);
    } else {
        for r in reports {
            println!("{}", table::render(r, args.top));
        }
    }
    Ok(())
}

fn write_out(out: &OutDir, reports: &[Report]) -> anyhow::Result<()> {
    for r in reports {
        let mode = r.mode.as_str();
        out.write(&format!("{mode}.pb.gz"), &pprof::encode(r))?;
        out.write(&format!("{mode}.svg"), &flame::svg(r)?)?;
        out.write(&format!("{mode}.txt"), table::render(r, 0).as_bytes())?;
    }
    out.write(
        "report.json",
        serde_json::to_string_pretty(reports)?.as_bytes(),
    )?;
    Ok(())
}
