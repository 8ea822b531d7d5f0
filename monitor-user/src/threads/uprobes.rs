//! The address-space probes of per-thread accounting: uprobes on each target's own libc
//! `mmap`/`munmap`/`mremap`/`brk` (probes/mem.rs), attached to that process alone.
//!
//! A uprobe scoped to one process puts its breakpoint in that process's pages only, so every
//! other process on the host runs as if nothing were attached; `syscalls:*` tracepoints,
//! which this replaces, sent every syscall on the host through the kernel's slow path (a
//! `dd bs=1` loop ran 14% slower). Each target costs [`LINKS_PER_TARGET`] perf events (file
//! descriptors); the number of targets is bounded by `--max-thread-processes` and each
//! uid's share of it (mod.rs).

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::Path,
    sync::Arc,
};

use crate::bpf::{Kernel, Link, probes::ProbeStatus};
use crate::host::wrappers::{Resolver, SiteError};

pub const PROBE_NAME: &str = "mem_uprobes";

/// Entry program of each wrapper; one return program serves all four.
const ENTRY_PROGRAMS: [(&str, &str); 4] = [
    ("mmap", "mem_mmap_enter"),
    ("munmap", "mem_munmap_enter"),
    ("mremap", "mem_mremap_enter"),
    ("brk", "mem_brk_enter"),
];
const RETURN_PROGRAM: &str = "mem_call_return";

/// Perf events held per target at most: an entry and a return probe per wrapper.
pub const LINKS_PER_TARGET: usize = 2 * ENTRY_PROGRAMS.len();

const FALLBACK: &str = "per-thread mapped/unmapped bytes are not counted (page faults still are, \
                        through rss_stat)";

/// Loads (verifies) the programs; they are attached per target by [`TargetProbes::follow`].
pub fn prepare(
    kernel: Arc<Kernel>,
    break_probes: &[String],
) -> (ProbeStatus, Option<TargetProbes>) {
    let result = std::iter::once(RETURN_PROGRAM)
        .chain(ENTRY_PROGRAMS.iter().map(|(_, p)| *p))
        .try_for_each(|p| kernel.load_uprobe(p))
        .map_err(|e| e.to_string());
    if let Err(e) = &result {
        log::debug!("per-thread uprobes off: {e}");
    }
    raise_open_files();
    let status = ProbeStatus {
        name: PROBE_NAME,
        tracepoint: "uprobes on each per-thread target's own libc mmap, munmap, mremap and brk \
                     (that process only)"
            .into(),
        attached: result.is_ok(),
        error: result.as_ref().err().cloned(),
        fallback: FALLBACK,
    };
    let probes = result.ok().map(|()| TargetProbes {
        kernel,
        broken: break_probes.iter().any(|b| b == PROBE_NAME),
        resolver: Resolver::default(),
        attached: HashMap::new(),
        off: HashMap::new(),
    });
    (status, probes)
}

/// Each target holds [`LINKS_PER_TARGET`] descriptors: a service's default soft limit (1024)
/// would run out at about a hundred targets, so the soft limit goes up to the hard one.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::debug!(
                    "cannot raise RLIMIT_NOFILE: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// The probes of each target process; dropping a target's links detaches them.
pub struct TargetProbes {
    kernel: Arc<Kernel>,
    /// Fault injection: attach to a file that does not exist.
    broken: bool,
    resolver: Resolver,
    attached: HashMap<u32, Vec<Link>>,
    /// Targets whose probes could not be attached, and why; not retried while they stay
    /// targets (a static binary stays one).
    off: HashMap<u32, String>,
}

/// What one [`TargetProbes::follow`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// (pid, the object probed)
    pub attached: Vec<(u32, String)>,
    pub detached: Vec<u32>,
    /// (pid, why its mapped bytes are not counted)
    pub off: Vec<(u32, String)>,
}

impl TargetProbes {
    /// Targets with probes attached now.
    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// Attaches to the targets in `wanted` that have no probes yet and detaches from the
    /// others (exited, or no longer targets).
    pub fn follow(&mut self, wanted: &HashSet<u32>) -> Changes {
        let mut changes = Changes::default();
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|pid| !wanted.contains(pid))
            .copied()
            .collect();
        for pid in gone {
            self.attached.remove(&pid);
            changes.detached.push(pid);
        }
        self.off.retain(|pid, _| wanted.contains(pid));
        let new: Vec<u32> = wanted
            .iter()
            .filter(|pid| !self.attached.contains_key(pid) && !self.off.contains_key(pid))
            .copied()
            .collect();
        for pid in new {
            match self.attach(pid) {
                Ok((links, module)) => {
                    self.attached.insert(pid, links);
                    changes.attached.push((pid, module));
                }
                // Exited before it could be probed: the interval loop forgets it.
                Err(AttachError::Site(SiteError::Gone(_))) => {}
                Err(e) => {
                    let why = e.to_string();
                    self.off.insert(pid, why.clone());
                    changes.off.push((pid, why));
                }
            }
        }
        changes
    }

    /// Why `pid`'s mapped bytes are not counted, when it is a target without probes.
    pub fn off_reason(&self, pid: u32) -> Option<&str> {
        self.off.get(&pid).map(String::as_str)
    }

    /// Return probes first, then entries: an entry is recorded only once its return is
    /// watched. All or nothing for the required wrappers.
    fn attach(&mut self, pid: u32) -> Result<(Vec<Link>, String), AttachError> {
        let one = NonZeroU32::new(pid).ok_or(AttachError::Site(SiteError::Gone(pid)))?;
        let site = self.resolver.site(pid)?;
        let path = if self.broken {
            Path::new("/leakscope-fault-injection/no-such-libc.so.6")
        } else {
            site.open_path.as_path()
        };
        // The site may list wrappers others probe (madvise): only those counted here.
        let ours: Vec<(&'static str, u64, &str)> = site
            .offsets
            .iter()
            .filter_map(|(w, o)| {
                let (_, program) = ENTRY_PROGRAMS.iter().find(|(e, _)| e == w)?;
                Some((*w, *o, *program))
            })
            .collect();
        let mut links = Vec::with_capacity(LINKS_PER_TARGET);
        for (wrapper, offset, _) in &ours {
            links.push(
                self.kernel
                    .attach_uprobe(RETURN_PROGRAM, path, *offset, one)
                    .map_err(|e| AttachError::Kernel(wrapper, e.to_string()))?,
            );
        }
        for (wrapper, offset, program) in &ours {
            links.push(
                self.kernel
                    .attach_uprobe(program, path, *offset, one)
                    .map_err(|e| AttachError::Kernel(wrapper, e.to_string()))?,
            );
        }
        let names: Vec<&str> = ours.iter().map(|(w, _, _)| *w).collect();
        Ok((links, format!("{} ({})", site.module, names.join(", "))))
    }
}

#[derive(Debug, thiserror::Error)]
enum AttachError {
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error("the kernel refused a uprobe on {0}: {1}")]
    Kernel(&'static str, String),
}
