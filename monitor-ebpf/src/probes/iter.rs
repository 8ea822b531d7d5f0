//! The always-on tier: a task iterator (`iter/task`) the agent runs once per interval and at
//! each scrape. It costs nothing between runs: no program sits on the page-fault path.
//!
//! For every thread-group leader with an address space it writes one [`TaskRecord`] into the
//! iterator's seq_file, which the agent reads as a file. RSS is `mm->rss_stat[kind]`, summed
//! exactly: `count` plus each possible CPU's delta (`*(s32 *)(counters + __per_cpu_offset[cpu])`),
//! as `/proc/PID/status` does since 6.16. `bpf_per_cpu_ptr` is refused on `counters` here (no
//! `percpu` type tag in this kernel's BTF), so the per-CPU base is read from `__per_cpu_offset`,
//! whose address the agent takes from /proc/kallsyms. Without it only `count` is read and the
//! record says so (no [`TASK_RSS_EXACT`]).
//!
//! aya-ebpf has no `#[iter]` macro: the section is placed by hand, with the context the
//! kernel passes (`struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct
//! *task; }`), `meta->seq` being the seq_file to write to.
//! Source: <https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/task_iter.c>,
//! <https://github.com/torvalds/linux/blob/v6.18/lib/percpu_counter.c> (`__percpu_counter_sum`).

use aya_ebpf::{
    Global,
    helpers::generated::{bpf_map_lookup_percpu_elem, bpf_seq_write},
    macros::map,
    maps::PerCpuArray,
};
use monitor_common::{
    IterLayout, KernelLayout, MAX_ITER_CPUS, RSS_UNKNOWN, RssKind, TASK_RSS_EXACT, TaskRecord,
};

use super::{ProbeError, rss::KERNEL_LAYOUT};

#[unsafe(no_mangle)]
pub static ITER_LAYOUT: Global<IterLayout> = Global::new(IterLayout {
    task_tgid: 0,
    task_real_parent: 0,
    task_start_boottime: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    mm_hiwater_rss: 0,
    counter_counters: 0,
    nr_cpus: 0,
    per_cpu_offset: 0,
    exit_reads_mm: 0,
    array_pptrs: 0,
});

/// Its slots, one per CPU, are how each CPU's per-CPU base is found (see `cpu_offsets`).
#[map(name = "CPU_BASE")]
static CPU_BASE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `struct bpf_iter_meta`: only `seq` is used.
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut aya_ebpf::bindings::seq_file,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__task`
#[repr(C)]
pub struct IterTaskCtx {
    pub meta: *mut IterMeta,
    pub task: u64,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn task_iter(ctx: *mut IterTaskCtx) -> i32 {
    // The task pointer is read as a plain number (not a typed load): offsets from BTF are
    // added to it, which the verifier refuses on a typed pointer.
    let Ok(task) = read::<u64>(ctx as u64 + 8) else {
        return 0;
    };
    if task == 0 {
        // The iterator's last call, after the last task.
        return 0;
    }
    let mut record = TaskRecord {
        pid: 0,
        ppid: 0,
        start_ns: 0,
        cgroup_id: 0,
        comm: [0; 16],
        rss: [RSS_UNKNOWN; RssKind::COUNT],
        peak_bytes: 0,
        flags: 0,
        _pad: 0,
    };
    if fill(task, &mut record).is_none() {
        return 0;
    }
    // SAFETY: the kernel hands a valid context; `meta->seq` is a typed load the verifier
    // tracks as the seq_file bpf_seq_write expects.
    unsafe {
        let seq = (*(*ctx).meta).seq;
        bpf_seq_write(
            seq,
            (&record as *const TaskRecord).cast(),
            size_of::<TaskRecord>() as u32,
        );
    }
    0
}

/// Fills `record` for a thread-group leader with an mm; `None` for any other task (a thread,
/// a kernel thread, a process past exit_mm) or one that could not be read.
#[inline(always)]
fn fill(task: u64, record: &mut TaskRecord) -> Option<()> {
    let layout = KERNEL_LAYOUT.load();
    let iter = ITER_LAYOUT.load();
    let pid: i32 = read(task + u64::from(layout.task_pid)).ok()?;
    let tgid: i32 = read(task + u64::from(iter.task_tgid)).ok()?;
    let mm: u64 = read(task + u64::from(layout.task_mm)).ok()?;
    if pid != tgid || mm == 0 {
        return None;
    }
    record.pid = pid as u32;
    record.comm = read(task + u64::from(layout.task_comm)).unwrap_or([0; 16]);
    record.ppid = parent_tgid(task, &iter);
    if iter.task_start_boottime != 0 {
        record.start_ns = read(task + u64::from(iter.task_start_boottime)).unwrap_or(0);
    }
    record.cgroup_id = cgroup_id(task, &iter);
    let (rss, peak, exact) = mm_rss(mm, &layout, &iter, true);
    record.rss = rss;
    record.peak_bytes = peak;
    record.flags = if exact { TASK_RSS_EXACT } else { 0 };
    Some(())
}

/// `task->real_parent->tgid`, 0 when unknown.
#[inline(always)]
pub fn parent_tgid(task: u64, iter: &IterLayout) -> u32 {
    if iter.task_real_parent == 0 || iter.task_tgid == 0 {
        return 0;
    }
    read::<u64>(task + u64::from(iter.task_real_parent))
        .and_then(|parent| read::<i32>(parent + u64::from(iter.task_tgid)))
        .map_or(0, |t| t as u32)
}

/// `task->cgroups->dfl_cgrp->kn->id`: the cgroup v2 id, 0 when unknown.
#[inline(always)]
fn cgroup_id(task: u64, iter: &IterLayout) -> u64 {
    if iter.task_cgroups == 0 || iter.kernfs_node_id == 0 {
        return 0;
    }
    let id = || -> Result<u64, ProbeError> {
        let css: u64 = read(task + u64::from(iter.task_cgroups))?;
        let cgroup: u64 = read(css + u64::from(iter.css_set_dfl_cgrp))?;
        let kn: u64 = read(cgroup + u64::from(iter.cgroup_kn))?;
        read(kn + u64::from(iter.kernfs_node_id))
    };
    id().unwrap_or(0)
}

/// Bytes per kind of `mm`, the peak (`max(hiwater_rss, resident)`, as VmHWM) and whether the
/// per-CPU deltas were all summed in. `sum_cpus` false reads the batched `count` alone: the
/// exit program's choice, whose cost is paid by every exit on the host (the per-CPU sum
/// costs five reads per possible CPU).
#[inline(always)]
pub fn mm_rss(
    mm: u64,
    layout: &KernelLayout,
    iter: &IterLayout,
    sum_cpus: bool,
) -> ([i64; RssKind::COUNT], u64, bool) {
    let base = mm + u64::from(layout.mm_rss_stat);
    let stride = u64::from(layout.counter_size);
    let mut pages = [RSS_UNKNOWN; RssKind::COUNT];
    let mut percpu = [0u64; RssKind::COUNT];
    for kind in 0..RssKind::COUNT {
        let counter = base + kind as u64 * stride;
        if let Ok(count) = read::<i64>(counter + u64::from(layout.counter_count)) {
            pages[kind] = count;
        }
        if sum_cpus {
            percpu[kind] = read::<u64>(counter + u64::from(iter.counter_counters)).unwrap_or(0);
        }
    }
    let mut exact = sum_cpus
        && iter.counter_counters != 0
        && iter.nr_cpus != 0
        && (iter.per_cpu_offset != 0 || iter.array_pptrs != 0);
    // The per-CPU address of CPU_BASE's slot, when CPUs are located through it.
    let array_base = if exact && iter.per_cpu_offset == 0 {
        match array_percpu_base(iter.array_pptrs) {
            Ok(base) => base,
            Err(_) => {
                exact = false;
                0
            }
        }
    } else {
        0
    };
    if exact {
        for cpu in 0..MAX_ITER_CPUS {
            if cpu >= iter.nr_cpus {
                break;
            }
            let offset = if iter.per_cpu_offset != 0 {
                read::<u64>(iter.per_cpu_offset + u64::from(cpu) * 8)
            } else {
                cpu_offset(cpu, array_base)
            };
            let Ok(offset) = offset else {
                exact = false;
                break;
            };
            for kind in 0..RssKind::COUNT {
                if percpu[kind] == 0 || pages[kind] == RSS_UNKNOWN {
                    continue;
                }
                match read::<i32>(percpu[kind].wrapping_add(offset)) {
                    Ok(delta) => pages[kind] += i64::from(delta),
                    Err(_) => exact = false,
                }
            }
        }
    }
    let mut rss = [RSS_UNKNOWN; RssKind::COUNT];
    for kind in 0..RssKind::COUNT {
        if pages[kind] != RSS_UNKNOWN {
            // As /proc: a sum briefly below zero (a delta not yet folded) shows as 0.
            rss[kind] = pages[kind].max(0) << layout.page_shift;
        }
    }
    let resident = [RssKind::File, RssKind::Anon, RssKind::Shmem]
        .into_iter()
        .map(|k| rss[k as usize].max(0) as u64)
        .sum::<u64>();
    let mut peak = resident;
    if iter.mm_hiwater_rss != 0
        && let Ok(hiwater) = read::<u64>(mm + u64::from(iter.mm_hiwater_rss))
    {
        peak = peak.max(hiwater << layout.page_shift);
    }
    (rss, peak, exact)
}

/// The `__percpu` address of CPU_BASE's only value, read from the map itself
/// (`((struct bpf_array *)map)->pptrs[0]`).
#[inline(always)]
fn array_percpu_base(pptrs: u32) -> Result<u64, ProbeError> {
    let map = as_number(&CPU_BASE as *const PerCpuArray<u64> as u64)?;
    read::<u64>(map + u64::from(pptrs))
}

/// `__per_cpu_offset[cpu]`: where CPU_BASE's value sits on `cpu`, less its `__percpu` address.
#[inline(always)]
fn cpu_offset(cpu: u32, array_base: u64) -> Result<u64, ProbeError> {
    let key = 0u32;
    // SAFETY: a lookup in this object's own map; the result is only turned into a number.
    let slot = unsafe {
        bpf_map_lookup_percpu_elem(
            &CPU_BASE as *const PerCpuArray<u64> as *mut _,
            (&key as *const u32).cast(),
            cpu,
        )
    };
    if slot.is_null() {
        return Err(ProbeError::ReadField);
    }
    Ok(as_number(slot as u64)?.wrapping_sub(array_base))
}

/// A pointer as a plain number: the verifier forbids arithmetic on map pointers, so the
/// value goes through the stack and comes back from a read it does not track.
#[inline(always)]
fn as_number(pointer: u64) -> Result<u64, ProbeError> {
    let mut slot = 0u64;
    // SAFETY: a write to a local; volatile so the spill is not optimized away.
    unsafe { core::ptr::write_volatile(&mut slot, pointer) };
    read::<u64>(&slot as *const u64 as u64)
}

/// A kernel read that counts nothing: a task exiting under the iterator is ordinary.
#[inline(always)]
fn read<T>(addr: u64) -> Result<T, ProbeError> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const T) }
        .map_err(|_| ProbeError::ReadField)
}
