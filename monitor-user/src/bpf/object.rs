//! The kernel object built by build.rs, and the three ways it is loaded: the agent's (every
//! probe, maps sized by flags), `investigate`'s (only the stack programs will run, so the
//! agent's maps are made small) and the benchmark floor's (empty programs only).

use aya::{Ebpf, EbpfLoader};
use monitor_common::{
    MM_OWNERS_MAP, PROCS_MAP, THREAD_WANT_MAP, THREADS_MAP, globals,
    stacks::{ALLOCS_MAP, STACKS_MAP, UNWIND_SAMPLES_MAP},
};

use super::{BpfError, Kernel, layout::Layout};

/// The object, aligned as aya needs it; empty in a build made with AYA_BUILD_SKIP.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

#[derive(Debug, thiserror::Error)]
#[error("this binary was built with AYA_BUILD_SKIP: it carries no BPF object")]
pub struct NoObject;

/// Fails early, with the reason, when the binary carries no object.
pub fn present() -> Result<(), NoObject> {
    if OBJECT.is_empty() {
        Err(NoObject)
    } else {
        Ok(())
    }
}

/// Capacities of the maps the stack-sampling programs (growth and alloc) use.
#[derive(Clone, Copy, Debug)]
pub struct StackCapacity {
    pub stacks: u32,
    pub allocations: u32,
    /// One sampled allocation per this many bytes on average (0: every one).
    pub alloc_sample_bytes: u64,
    /// User stack bytes sent per sample for unwinding in user space (0: frame pointers only).
    pub unwind_copy_bytes: u32,
}

/// What the agent's object is sized and configured with.
pub struct AgentSizes {
    /// The task iterator's and exit program's layout; `None` leaves them reading nothing.
    pub iter: Option<monitor_common::IterLayout>,
    pub max_kernel_processes: u32,
    /// Capacity of the kernel's per-thread map (THREADS) and of the set of processes with
    /// per-thread accounting (THREAD_WANT).
    pub max_kernel_threads: u32,
    pub max_thread_processes: u32,
    pub stacks: StackCapacity,
    /// Where to pin the task maps for `investigate` (see `task_map`); None pins nothing.
    pub task_pins: Option<std::path::PathBuf>,
}

/// Every global whose layout is known; the others keep their compiled-in defaults, and the
/// probes that need them stay off.
fn set_layouts<'a>(loader: &mut EbpfLoader<'a>, layout: &'a Layout) {
    if let Ok(o) = &layout.rss {
        loader.override_global(globals::RSS_STAT_OFFSETS, o, true);
    }
    if let Ok(l) = &layout.btf {
        loader.override_global(globals::KERNEL_LAYOUT, l, true);
    }
    if let Ok(o) = &layout.newtask {
        loader.override_global(globals::NEWTASK_OFFSETS, o, true);
    }
    if let Ok(o) = &layout.exit {
        loader.override_global(globals::EXIT_OFFSETS, o, true);
    }
    if let Ok(o) = &layout.oom {
        loader.override_global(globals::MARK_VICTIM_OFFSETS, o, true);
    }
}

/// The task maps at their pins in `dir`: created there, or the ones found there reused.
fn pin_task_maps(loader: &mut EbpfLoader<'_>, dir: &std::path::Path) {
    for (name, path) in super::task_map::pins(dir) {
        loader.map_pin_path(name, path);
    }
}

fn set_stacks<'a>(loader: &mut EbpfLoader<'a>, capacity: &'a StackCapacity) {
    if capacity.unwind_copy_bytes == 0 {
        // Frame pointers only: nothing is sent, so the ring is kept to the minimum (a page).
        loader.map_max_entries(UNWIND_SAMPLES_MAP, 4096);
    }
    loader
        .map_max_entries(STACKS_MAP, capacity.stacks)
        .map_max_entries(ALLOCS_MAP, capacity.allocations)
        .override_global(
            globals::ALLOC_SAMPLE_BYTES,
            &capacity.alloc_sample_bytes,
            true,
        )
        .override_global(
            globals::UNWIND_COPY_BYTES,
            &capacity.unwind_copy_bytes,
            true,
        );
}

/// The agent's object: nothing is attached yet ([`super::probes::attach_agent`] does that).
pub fn load_agent(layout: &Layout, sizes: &AgentSizes) -> Result<Kernel, BpfError> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(PROCS_MAP, sizes.max_kernel_processes)
        .map_max_entries(MM_OWNERS_MAP, sizes.max_kernel_processes)
        .map_max_entries(THREADS_MAP, sizes.max_kernel_threads)
        .map_max_entries(THREAD_WANT_MAP, sizes.max_thread_processes);
    set_layouts(&mut loader, layout);
    set_stacks(&mut loader, &sizes.stacks);
    if let Some(iter) = &sizes.iter {
        loader.override_global(globals::ITER_LAYOUT, iter, true);
    }
    if let Some(dir) = &sizes.task_pins {
        pin_task_maps(&mut loader, dir);
    }
    Ok(Kernel::new(loader.load(OBJECT)?))
}

/// The object for `leakscope investigate`, with the agent's own maps made small: only the
/// stack programs will run. A running agent's task maps are used when it pinned them, so
/// that samples carry the task their thread ran.
pub fn load_for_investigation(
    layout: &Layout,
    capacity: &StackCapacity,
) -> Result<Kernel, BpfError> {
    let load = |pins: Option<&std::path::Path>| {
        let mut loader = EbpfLoader::new();
        // LRU maps need a few entries per CPU; nothing writes these here.
        for name in [PROCS_MAP, MM_OWNERS_MAP, THREADS_MAP, THREAD_WANT_MAP] {
            loader.map_max_entries(name, 1024);
        }
        set_layouts(&mut loader, layout);
        set_stacks(&mut loader, capacity);
        if let Some(dir) = pins {
            pin_task_maps(&mut loader, dir);
        }
        loader.load(OBJECT)
    };
    if let Some(dir) = super::task_map::agent_pins() {
        match load(Some(&dir)) {
            Ok(ebpf) => {
                log::info!("task labels from the agent's maps in {}", dir.display());
                return Ok(Kernel::new(ebpf));
            }
            // An agent of another version may have pinned maps of another shape: the
            // investigation goes on without its labels.
            Err(e) => log::warn!(
                "samples carry no task labels: the agent's maps in {} do not fit ({})",
                dir.display(),
                crate::error::chain(&e)
            ),
        }
    }
    Ok(Kernel::new(load(None)?))
}

/// The object as `leakscope bench-floor` uses it: its empty programs, defaults elsewhere.
pub fn load_floor() -> Result<Kernel, BpfError> {
    Ok(Kernel::new(Ebpf::load(OBJECT)?))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
pub fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `rlim` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
