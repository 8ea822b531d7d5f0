//! The agent's always-on probes: each attached on its own, so a probe the kernel refuses is
//! reported with what the agent does without it, and the others carry on. Where the kernel
//! has BTF, the raw-tracepoint variant is tried first.

use super::{BpfError, Kernel, Link, NO_SUCH_TRACEPOINT, layout::Layout};

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
        raw: Some("sched_exec_btf"),
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

/// The agent's probes once attached: their status for /healthz and the metrics, and the
/// links that keep them attached for as long as this lives.
pub struct AgentProbes {
    pub statuses: Vec<ProbeStatus>,
    _links: Vec<Link>,
}

/// The per-change probes: a program on every RSS change (each page fault) and every fork.
/// They cost the host even when nothing is selected, so they run only with `--rss-events`;
/// the task iterator reads the same numbers on demand otherwise.
pub const PER_CHANGE_PROBES: [&str; 2] = ["rss_stat", "sched_newtask"];

/// Attaches every probe of [`PROBES`] and [`OOM_PROBE`], the per-change ones only when
/// `rss_events` asks for them (left out of the statuses otherwise: off by choice is not a
/// degradation). `break_probes` names probes to attach to a tracepoint that does not exist,
/// so tests can watch the agent survive a probe the kernel refuses; a raw variant's program
/// name breaks that variant alone, so the classic one stands in.
pub fn attach_agent(
    kernel: &Kernel,
    layout: &Layout,
    break_probes: &[String],
    rss_events: bool,
) -> AgentProbes {
    let ready = |spec: &ProbeSpec| -> Result<(), String> {
        match spec.name {
            "rss_stat" => layout.rss.as_ref().map(|_| ()).map_err(Clone::clone),
            "sched_newtask" => layout.newtask.as_ref().map(|_| ()).map_err(Clone::clone),
            "sched_exit" => layout.exit.as_ref().map(|_| ()).map_err(Clone::clone),
            "sched_exec" => layout.exec.clone(),
            _ => layout.oom.as_ref().map(|_| ()).map_err(Clone::clone),
        }
    };
    let broken = |name: &str| break_probes.iter().any(|b| b == name);
    let mut statuses = Vec::new();
    let mut links = Vec::new();
    let wanted = |spec: &&ProbeSpec| rss_events || !PER_CHANGE_PROBES.contains(&spec.name);
    for spec in PROBES.iter().chain([&OOM_PROBE]).filter(wanted) {
        let classic = format!("{}:{}", spec.category, spec.tracepoint);
        let attach_classic = || {
            ready(spec).and_then(|()| {
                let (category, name) = if broken(spec.name) {
                    NO_SUCH_TRACEPOINT
                } else {
                    (spec.category, spec.tracepoint)
                };
                kernel
                    .attach_tracepoint(spec.name, category, name)
                    .map_err(|e| e.to_string())
            })
        };
        let raw = spec.raw.map(|program| {
            layout
                .btf
                .clone()
                .and_then(|btf| {
                    if spec.name == "sched_newtask" && !btf.knows_new_tasks() {
                        Err("kernel BTF lacks task_struct.pid or .comm".to_string())
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| {
                    // The raw variant alone is broken by its program's name.
                    let tracepoint = if broken(spec.name) || broken(program) {
                        NO_SUCH_TRACEPOINT.1
                    } else {
                        spec.tracepoint
                    };
                    kernel
                        .attach_raw_tracepoint(program, tracepoint)
                        .map_err(|e: BpfError| e.to_string())
                })
        });
        let (tracepoint, result) = match raw {
            Some(Ok(link)) => (
                format!("raw_tracepoint:{} (BTF)", spec.tracepoint),
                Ok(link),
            ),
            Some(Err(why)) => {
                log::warn!(
                    "raw tracepoint {} unavailable ({why}); trying {classic}",
                    spec.tracepoint
                );
                let result = attach_classic().map_err(|e| format!("{e} (BTF variant: {why})"));
                (classic, result)
            }
            None => (classic, attach_classic()),
        };
        statuses.push(ProbeStatus {
            name: spec.name,
            tracepoint,
            attached: result.is_ok(),
            error: result.as_ref().err().cloned(),
            fallback: spec.fallback,
        });
        if let Ok(link) = result {
            links.push(link);
        }
    }
    AgentProbes {
        statuses,
        _links: links,
    }
}
