//! Loads the kernel object, hands it the tracepoint layouts, and attaches each program on its
//! own: a probe the kernel refuses is reported and the others carry on.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Program, ProgramError, RawTracePoint, TracePoint},
};
use monitor_common::{
    COUNTERS_MAP, Counter, ExitOffsets, KernelLayout, MM_OWNERS_MAP, MarkVictimOffsets,
    NewTaskOffsets, PROCS_MAP, ProcStats, RssStatOffsets,
};

use crate::{
    error::chain,
    tracefs::{Format, TracefsError},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the kernel refused the BPF object: {}", chain(.0))]
    Object(aya::EbpfError),
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {}", chain(.cause))]
    Map {
        name: &'static str,
        cause: aya::maps::MapError,
    },
}

impl From<aya::EbpfError> for LoadError {
    fn from(e: aya::EbpfError) -> Self {
        Self::Object(e)
    }
}

/// One program, the tracepoint it needs, and what the agent does without it.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    pub name: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// The raw-tracepoint variant, preferred where the kernel has BTF: it builds no trace
    /// record, which is most of a classic tracepoint's cost on hot paths.
    pub raw: Option<&'static str>,
    pub fallback: &'static str,
}

pub const PROBES: [ProbeSpec; 4] = [
    ProbeSpec {
        name: "rss_stat",
        category: "kmem",
        tracepoint: "rss_stat",
        raw: Some("rss_stat_btf"),
        fallback: "RSS is polled from /proc/<pid>/status every interval (not kernel-exact)",
    },
    ProbeSpec {
        name: "sched_newtask",
        category: "task",
        tracepoint: "task_newtask",
        raw: Some("sched_newtask_btf"),
        fallback: "new processes are found through their first RSS change",
    },
    ProbeSpec {
        name: "sched_exec",
        category: "sched",
        tracepoint: "sched_process_exec",
        raw: None,
        fallback: "names are not refreshed after exec",
    },
    ProbeSpec {
        name: "sched_exit",
        category: "sched",
        tracepoint: "sched_process_exit",
        raw: Some("sched_exit_btf"),
        fallback: "exited processes are found by checking /proc every interval",
    },
];

pub const OOM_PROBE: ProbeSpec = ProbeSpec {
    name: "oom_mark_victim",
    category: "oom",
    tracepoint: "mark_victim",
    raw: None,
    fallback: "OOM kills are not reported",
};

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeStatus {
    pub name: &'static str,
    pub tracepoint: String,
    pub attached: bool,
    /// Why the probe is off, in words an operator can act on.
    pub error: Option<String>,
    pub fallback: &'static str,
}

pub struct Options<'a> {
    pub tracefs: Result<&'a Path, &'a TracefsError>,
    /// Struct layout for the BTF variant of the rss program, or why there is none.
    pub btf: Result<KernelLayout, String>,
    pub max_kernel_processes: u32,
    /// Probe names to attach to a tracepoint that does not exist, so tests can watch the agent
    /// survive a probe the kernel refuses.
    pub break_probes: &'a [String],
    /// Capacity of the kernel's per-thread map (THREADS) and of the set of processes with
    /// per-thread accounting (THREAD_WANT).
    pub max_kernel_threads: u32,
    pub max_thread_processes: u32,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
    /// Per-thread syscall programs, loaded, to attach on demand.
    pub syscalls: Option<crate::threads::SyscallProbes>,
}

/// Offsets for every probe, or the reason a probe cannot be used on this kernel.
struct Layouts {
    rss: Result<RssStatOffsets, String>,
    newtask: Result<NewTaskOffsets, String>,
    exit: Result<ExitOffsets, String>,
    oom: Result<MarkVictimOffsets, String>,
    exec: Result<(), String>,
}

fn read_layouts(root: &Path) -> Layouts {
    let fmt = |c: &str, n: &str| Format::read(root, c, n).map_err(|e| e.to_string());
    let rss = fmt("kmem", "rss_stat").and_then(|f| {
        Ok(RssStatOffsets {
            mm_id: f.offset("mm_id").map_err(|e| e.to_string())?,
            curr: f.offset("curr").map_err(|e| e.to_string())?,
            member: f.offset("member").map_err(|e| e.to_string())?,
            size: f.offset("size").map_err(|e| e.to_string())?,
        })
    });
    let newtask = fmt("task", "task_newtask").and_then(|f| {
        Ok(NewTaskOffsets {
            pid: f.offset("pid").map_err(|e| e.to_string())?,
            comm: f.offset("comm").map_err(|e| e.to_string())?,
            clone_flags: f.offset("clone_flags").map_err(|e| e.to_string())?,
            _pad: 0,
        })
    });
    let exit = fmt("sched", "sched_process_exit").and_then(|f| {
        Ok(ExitOffsets {
            pid: f.offset("pid").map_err(|e| e.to_string())?,
            group_dead: f.offset("group_dead").unwrap_or(u32::MAX),
        })
    });
    let oom = fmt("oom", "mark_victim").and_then(|f| {
        Ok(MarkVictimOffsets {
            pid: f.offset("pid").map_err(|e| e.to_string())?,
            total_vm: f.offset("total_vm").map_err(|e| e.to_string())?,
            anon_rss: f.offset("anon_rss").map_err(|e| e.to_string())?,
            file_rss: f.offset("file_rss").map_err(|e| e.to_string())?,
            shmem_rss: f.offset("shmem_rss").map_err(|e| e.to_string())?,
            _pad: 0,
        })
    });
    let exec = fmt("sched", "sched_process_exec").map(|_| ());
    Layouts {
        rss,
        newtask,
        exit,
        oom,
        exec,
    }
}

pub fn load(object: &[u8], opts: &Options<'_>) -> Result<Loaded, LoadError> {
    let layouts = match opts.tracefs {
        Ok(root) => read_layouts(root),
        Err(e) => {
            let why = e.to_string();
            Layouts {
                rss: Err(why.clone()),
                newtask: Err(why.clone()),
                exit: Err(why.clone()),
                oom: Err(why.clone()),
                exec: Err(why),
            }
        }
    };
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(PROCS_MAP, opts.max_kernel_processes)
        .map_max_entries(MM_OWNERS_MAP, opts.max_kernel_processes);
    // Globals keep their compiled-in defaults when the layout is unknown; the probe stays off.
    if let Ok(o) = &layouts.rss {
        loader.override_global("RSS_STAT_OFFSETS", o, true);
    }
    if let Ok(l) = &opts.btf {
        loader.override_global("KERNEL_LAYOUT", l, true);
    }
    if let Ok(o) = &layouts.newtask {
        loader.override_global("NEWTASK_OFFSETS", o, true);
    }
    if let Ok(o) = &layouts.exit {
        loader.override_global("EXIT_OFFSETS", o, true);
    }
    if let Ok(o) = &layouts.oom {
        loader.override_global("MARK_VICTIM_OFFSETS", o, true);
    }
    // Per-thread accounting (threads.rs owns these probes and maps).
    let mem_layout = crate::threads::read_layout(opts.tracefs);
    if let Ok(o) = &mem_layout {
        loader.override_global("SYSCALL_OFFSETS", o, true);
    }
    loader
        .map_max_entries(monitor_common::THREADS_MAP, opts.max_kernel_threads)
        .map_max_entries(monitor_common::THREAD_WANT_MAP, opts.max_thread_processes);
    crate::investigate::tracer::configure(
        &mut loader,
        &crate::investigate::endpoint::AGENT_CAPACITY,
    );
    let mut ebpf = loader.load(object)?;

    let ready = |spec: &ProbeSpec| -> Result<(), String> {
        match spec.name {
            "rss_stat" => layouts.rss.as_ref().map(|_| ()).map_err(Clone::clone),
            "sched_newtask" => layouts.newtask.as_ref().map(|_| ()).map_err(Clone::clone),
            "sched_exit" => layouts.exit.as_ref().map(|_| ()).map_err(Clone::clone),
            "sched_exec" => layouts.exec.clone(),
            _ => layouts.oom.as_ref().map(|_| ()).map_err(Clone::clone),
        }
    };
    let broken = |name: &str| opts.break_probes.iter().any(|b| b == name);
    let mut probes = Vec::new();
    for spec in PROBES.iter().chain([&OOM_PROBE]) {
        let classic = format!("{}:{}", spec.category, spec.tracepoint);
        let attach_classic = |ebpf: &mut Ebpf| {
            ready(spec).and_then(|()| {
                attach_tracepoint(
                    ebpf,
                    spec.name,
                    spec.category,
                    spec.tracepoint,
                    broken(spec.name),
                )
            })
        };
        let raw = spec.raw.map(|program| {
            opts.btf
                .clone()
                .and_then(|layout| {
                    if spec.name == "sched_newtask" && !layout.knows_new_tasks() {
                        Err("kernel BTF lacks task_struct.pid or .comm".to_string())
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| attach_raw(&mut ebpf, program, spec.tracepoint, broken(spec.name)))
        });
        let (tracepoint, result) = match raw {
            Some(Ok(())) => (format!("raw_tracepoint:{} (BTF)", spec.tracepoint), Ok(())),
            Some(Err(why)) => {
                log::warn!(
                    "raw tracepoint {} unavailable ({why}); trying {classic}",
                    spec.tracepoint
                );
                let result =
                    attach_classic(&mut ebpf).map_err(|e| format!("{e} (BTF variant: {why})"));
                (classic, result)
            }
            None => (classic, attach_classic(&mut ebpf)),
        };
        probes.push(ProbeStatus {
            name: spec.name,
            tracepoint,
            attached: result.is_ok(),
            error: result.err(),
            fallback: spec.fallback,
        });
    }
    let (status, syscalls) = crate::threads::prepare(&mut ebpf, &mem_layout, opts.break_probes);
    probes.push(status);
    Ok(Loaded {
        ebpf,
        probes,
        syscalls,
    })
}

/// Where fault injection sends a probe: a tracepoint no kernel has.
pub const NO_SUCH_TRACEPOINT: (&str, &str) = ("leakscope_fault_injection", "no_such_tracepoint");

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
    broken: bool,
) -> Result<(), String> {
    let prog: &mut TracePoint = self::program(ebpf, program)?;
    prog.load()
        .map_err(|e| format!("the verifier rejected {program}: {}", verifier_summary(&e)))?;
    let (category, name) = if broken {
        NO_SUCH_TRACEPOINT
    } else {
        (category, name)
    };
    prog.attach(category, name)
        .map(|_| ())
        .map_err(|e| format!("attaching to {category}:{name} failed: {e}"))
}

fn attach_raw(ebpf: &mut Ebpf, program: &str, name: &str, broken: bool) -> Result<(), String> {
    let prog: &mut RawTracePoint = self::program(ebpf, program)?;
    prog.load()
        .map_err(|e| format!("the verifier rejected {program}: {}", verifier_summary(&e)))?;
    let name = if broken { NO_SUCH_TRACEPOINT.1 } else { name };
    prog.attach(name)
        .map(|_| ())
        .map_err(|e| format!("attaching to raw tracepoint {name} failed: {e}"))
}

/// The verifier log is long; the lines before its closing statistics say why.
/// The object's program `name`, as the program type it was built as.
pub fn program<'e, P>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut P, String>
where
    &'e mut P: TryFrom<&'e mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}

fn verifier_summary(e: &aya::programs::ProgramError) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push('\n');
        text.push_str(&s.to_string());
        source = s.source();
    }
    log::debug!("verifier log: {text}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("verification time") && !l.starts_with("stack depth"))
        .filter(|l| !l.starts_with("processed ") && !l.starts_with("max_states_per_insn"))
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Handles to the maps the agent reads every interval.
pub struct KernelMaps {
    procs: BpfHashMap<MapData, u32, ProcStats>,
    counters: PerCpuArray<MapData, u64>,
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
        };
        let procs =
            BpfHashMap::try_from(take(ebpf, PROCS_MAP)?).map_err(|source| LoadError::Map {
                name: PROCS_MAP,
                cause: source,
            })?;
        let counters =
            PerCpuArray::try_from(take(ebpf, COUNTERS_MAP)?).map_err(|source| LoadError::Map {
                name: COUNTERS_MAP,
                cause: source,
            })?;
        Ok(Self { procs, counters })
    }

    /// Every process entry; entries that vanish while iterating are skipped.
    pub fn procs(&self) -> std::collections::HashMap<u32, ProcStats> {
        self.procs.iter().filter_map(Result::ok).collect()
    }

    /// One process's entry, read now (the task listener reads it when a marker arrives).
    pub fn proc_stats(&self, pid: u32) -> Option<ProcStats> {
        self.procs.get(&pid, 0).ok()
    }

    pub fn counters(&self) -> [u64; Counter::COUNT as usize] {
        let mut out = [0; Counter::COUNT as usize];
        for c in Counter::ALL {
            if let Ok(per_cpu) = self.counters.get(&(c as u32), 0) {
                out[c as usize] = per_cpu.iter().sum();
            }
        }
        out
    }
}
