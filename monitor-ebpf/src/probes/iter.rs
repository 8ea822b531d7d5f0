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
    helpers::generated::{bpf_map_lookup_percpu_elem, bpf_probe_read_kernel, bpf_seq_write},
    macros::map,
    maps::{Array, PerCpuArray},
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
    exit_skips_procs: 0,
    _pad: 0,
});

/// Its slots, one per CPU, are how each CPU's per-CPU base is found (see `cpu_offsets`).
#[map(name = "CPU_BASE")]
static CPU_BASE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Each possible CPU's per-CPU offset, found on the first walk and kept for every later one:
/// they are fixed at boot, and finding them costs a helper call and two reads per CPU, which
/// every process of every walk paid before. Slot [`MAX_ITER_CPUS`] holds how many CPUs are
/// filled in (0 until then).
#[map(name = "CPU_OFFSETS")]
static CPU_OFFSETS: Array<u64> = Array::with_max_entries(MAX_ITER_CPUS + 1, 0);

/// The most bytes of `mm->rss_stat` read in one go: 4 counters of 40 bytes (a kernel with
/// lock debugging has larger ones, read field by field). The stack holds it, beside the record.
const RSS_STAT_MAX: usize = 160;

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
    if fill(task, &mut record).is_some() {
        write_record(ctx, &record);
    }
    0
}

/// Appends `record` to the walk's output.
#[inline(always)]
pub(super) fn write_record(ctx: *mut IterTaskCtx, record: &TaskRecord) {
    // SAFETY: the kernel hands a valid context; `meta->seq` is a typed load the verifier
    // tracks as the seq_file bpf_seq_write expects.
    unsafe {
        let seq = (*(*ctx).meta).seq;
        bpf_seq_write(
            seq,
            (record as *const TaskRecord).cast(),
            size_of::<TaskRecord>() as u32,
        );
    }
}

/// Fills `record` for a thread-group leader with an mm; `None` for any other task (a thread,
/// a kernel thread, a process past exit_mm) or one that could not be read.
#[inline(always)]
fn fill(task: u64, record: &mut TaskRecord) -> Option<()> {
    let layout = KERNEL_LAYOUT.load();
    let iter = ITER_LAYOUT.load();
    // Every thread on the host comes through here.
    let t = task_fields(task, &layout, &iter)?;
    if t.pid != t.tgid || t.mm == 0 {
        return None;
    }
    record.pid = t.pid as u32;
    record.comm = read(task + u64::from(layout.task_comm)).unwrap_or([0; 16]);
    record.ppid = tgid_of(t.real_parent, &iter);
    if iter.task_start_boottime != 0 {
        record.start_ns = read(task + u64::from(iter.task_start_boottime)).unwrap_or(0);
    }
    record.cgroup_id = cgroup_id(task, &iter);
    let (rss, peak, exact) = mm_rss(t.mm, &layout, &iter, true);
    record.rss = rss;
    record.peak_bytes = peak;
    record.flags = if exact { TASK_RSS_EXACT } else { 0 };
    Some(())
}

/// The task_struct fields the iterator and the exit program need for every task.
pub struct TaskFields {
    pub pid: i32,
    pub tgid: i32,
    pub mm: u64,
    /// 0 when unknown.
    pub real_parent: u64,
    /// 0 when unknown.
    pub exit_code: i32,
}

/// Bytes of task_struct read in one go for [`TaskFields`]: `mm`, `exit_code`, `pid`, `tgid`
/// and `real_parent` sit within 152 bytes on 6.18 (offsets 1136 to 1288). Each read is a
/// helper call that costs more than the bytes it copies.
const TASK_WINDOW: usize = 160;

/// Reads [`TaskFields`]: in one read when they fit [`TASK_WINDOW`], field by field otherwise.
/// None when pid, tgid or mm cannot be read.
#[inline(always)]
pub fn task_fields(task: u64, layout: &KernelLayout, iter: &IterLayout) -> Option<TaskFields> {
    let pid_at = layout.task_pid as usize;
    let tgid_at = iter.task_tgid as usize;
    let mm_at = layout.task_mm as usize;
    let parent_at = iter.task_real_parent as usize;
    let code_at = layout.task_exit_code as usize;
    let lo = pid_at.min(tgid_at).min(mm_at);
    let lo = if parent_at != 0 {
        lo.min(parent_at)
    } else {
        lo
    };
    let lo = if code_at != 0 { lo.min(code_at) } else { lo };
    let hi = (pid_at + 4).max(tgid_at + 4).max(mm_at + 8);
    let hi = hi.max(parent_at + 8).max(code_at + 4);
    if tgid_at != 0 && hi - lo <= TASK_WINDOW {
        let mut window = [0u8; TASK_WINDOW];
        // SAFETY: writes at most TASK_WINDOW bytes into `window`; a bad address is an error.
        let rc = unsafe {
            bpf_probe_read_kernel(
                window.as_mut_ptr().cast(),
                (hi - lo) as u32,
                (task + lo as u64) as *const _,
            )
        };
        if rc != 0 {
            return None;
        }
        let at = |off: usize| off - lo;
        let parent = if parent_at != 0 {
            load::<u64>(&window, at(parent_at))
        } else {
            Some(0)
        };
        let code = if code_at != 0 {
            load::<i32>(&window, at(code_at))
        } else {
            Some(0)
        };
        return Some(TaskFields {
            pid: load(&window, at(pid_at))?,
            tgid: load(&window, at(tgid_at))?,
            mm: load(&window, at(mm_at))?,
            real_parent: parent.unwrap_or(0),
            exit_code: code.unwrap_or(0),
        });
    }
    Some(TaskFields {
        pid: read(task + pid_at as u64).ok()?,
        tgid: read(task + tgid_at as u64).ok()?,
        mm: read(task + mm_at as u64).ok()?,
        real_parent: if parent_at != 0 {
            read(task + parent_at as u64).unwrap_or(0)
        } else {
            0
        },
        exit_code: if code_at != 0 {
            read(task + code_at as u64).unwrap_or(0)
        } else {
            0
        },
    })
}

/// A `T` at byte `at` of `window`, None past its end.
#[inline(always)]
fn load<T: Copy>(window: &[u8; TASK_WINDOW], at: usize) -> Option<T> {
    if at + size_of::<T>() > TASK_WINDOW {
        return None;
    }
    // SAFETY: in bounds (checked above); read_unaligned needs no alignment.
    Some(unsafe { core::ptr::read_unaligned(window.as_ptr().add(at).cast::<T>()) })
}

/// `parent->tgid`, 0 when unknown.
#[inline(always)]
pub fn tgid_of(parent: u64, iter: &IterLayout) -> u32 {
    if parent == 0 || iter.task_tgid == 0 {
        return 0;
    }
    read::<i32>(parent + u64::from(iter.task_tgid)).map_or(0, |t| t as u32)
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
/// costs one read per possible CPU).
#[inline(always)]
pub fn mm_rss(
    mm: u64,
    layout: &KernelLayout,
    iter: &IterLayout,
    sum_cpus: bool,
) -> ([i64; RssKind::COUNT], u64, bool) {
    let base = mm + u64::from(layout.mm_rss_stat);
    let (mut pages, percpu) = counters(base, layout, iter, sum_cpus);
    let mut exact = sum_cpus && iter.counter_counters != 0 && cpu_offsets_ready(iter);
    if exact {
        exact = add_cpu_deltas(&mut pages, &percpu, iter);
    }
    let (rss, resident) = rss_bytes(&pages, layout);
    let mut peak = resident;
    if iter.mm_hiwater_rss != 0
        && let Ok(hiwater) = read::<u64>(mm + u64::from(iter.mm_hiwater_rss))
    {
        peak = peak.max(hiwater << layout.page_shift);
    }
    (rss, peak, exact)
}

/// Adds each possible CPU's delta (`percpu[kind]`: the `__percpu` address of a kind's deltas,
/// 0 where unknown) to `pages`; false when one could not be read.
#[inline(always)]
pub(super) fn add_cpu_deltas(
    pages: &mut [i64; RssKind::COUNT],
    percpu: &[u64; RssKind::COUNT],
    iter: &IterLayout,
) -> bool {
    let mut exact = true;
    // `percpu_counter_init_many` gives an mm's counters one allocation, a s32 per kind
    // side by side on each CPU: then one read per CPU gives all four deltas.
    let contiguous = percpu[0] != 0
        && percpu[1] == percpu[0] + 4
        && percpu[2] == percpu[0] + 8
        && percpu[3] == percpu[0] + 12;
    for cpu in 0..MAX_ITER_CPUS {
        if cpu >= iter.nr_cpus {
            break;
        }
        let Some(offset) = CPU_OFFSETS.get(cpu).copied() else {
            return false;
        };
        if contiguous {
            match read::<[i32; RssKind::COUNT]>(percpu[0].wrapping_add(offset)) {
                Ok(deltas) => {
                    for kind in 0..RssKind::COUNT {
                        if pages[kind] != RSS_UNKNOWN {
                            pages[kind] += i64::from(deltas[kind]);
                        }
                    }
                }
                Err(_) => exact = false,
            }
            continue;
        }
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
    exact
}

/// Bytes per kind from page counts ([`RSS_UNKNOWN`] kept), and the resident total.
#[inline(always)]
pub(super) fn rss_bytes(
    pages: &[i64; RssKind::COUNT],
    layout: &KernelLayout,
) -> ([i64; RssKind::COUNT], u64) {
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
    (rss, resident)
}

/// Each kind's batched `count` in pages ([`RSS_UNKNOWN`] where unread) and, with `percpu`,
/// its `counters` (the `__percpu` address of its deltas; 0 where unread). The four
/// `percpu_counter`s are read in one go when they fit [`RSS_STAT_MAX`], field by field
/// otherwise.
#[inline(always)]
fn counters(
    base: u64,
    layout: &KernelLayout,
    iter: &IterLayout,
    percpu: bool,
) -> ([i64; RssKind::COUNT], [u64; RssKind::COUNT]) {
    let mut pages = [RSS_UNKNOWN; RssKind::COUNT];
    let mut deltas = [0u64; RssKind::COUNT];
    let stride = layout.counter_size as usize;
    let count_at = layout.counter_count as usize;
    let counters_at = iter.counter_counters as usize;
    let len = stride * RssKind::COUNT;
    let aligned = stride % 8 == 0 && count_at % 8 == 0 && counters_at % 8 == 0;
    if aligned && len <= RSS_STAT_MAX && count_at + 8 <= stride && counters_at + 8 <= stride {
        let mut block = [0u64; RSS_STAT_MAX / 8];
        // SAFETY: writes at most RSS_STAT_MAX bytes into `block`; a bad address is an error.
        let rc = unsafe {
            bpf_probe_read_kernel(block.as_mut_ptr().cast(), len as u32, base as *const _)
        };
        if rc == 0 {
            for kind in 0..RssKind::COUNT {
                if let Some(count) = block.get((kind * stride + count_at) / 8) {
                    pages[kind] = *count as i64;
                }
                if percpu && let Some(at) = block.get((kind * stride + counters_at) / 8) {
                    deltas[kind] = *at;
                }
            }
        }
        return (pages, deltas);
    }
    for kind in 0..RssKind::COUNT {
        let counter = base + (kind * stride) as u64;
        if let Ok(count) = read::<i64>(counter + count_at as u64) {
            pages[kind] = count;
        }
        if percpu {
            deltas[kind] = read::<u64>(counter + counters_at as u64).unwrap_or(0);
        }
    }
    (pages, deltas)
}

/// Whether [`CPU_OFFSETS`] holds every possible CPU's offset, filling it on first use.
#[inline(always)]
pub(super) fn cpu_offsets_ready(iter: &IterLayout) -> bool {
    if iter.nr_cpus == 0 || (iter.per_cpu_offset == 0 && iter.array_pptrs == 0) {
        return false;
    }
    if CPU_OFFSETS
        .get(MAX_ITER_CPUS)
        .is_some_and(|n| *n == u64::from(iter.nr_cpus))
    {
        return true;
    }
    // The per-CPU address of CPU_BASE's slot, when CPUs are located through it.
    let array_base = if iter.per_cpu_offset == 0 {
        match array_percpu_base(iter.array_pptrs) {
            Ok(base) => base,
            Err(_) => return false,
        }
    } else {
        0
    };
    for cpu in 0..MAX_ITER_CPUS {
        if cpu >= iter.nr_cpus {
            break;
        }
        let offset = if iter.per_cpu_offset != 0 {
            read::<u64>(iter.per_cpu_offset + u64::from(cpu) * 8)
        } else {
            cpu_offset(cpu, array_base)
        };
        let (Ok(offset), Some(slot)) = (offset, CPU_OFFSETS.get_ptr_mut(cpu)) else {
            return false;
        };
        // SAFETY: an array slot, valid for the program's run; walks running at once write
        // the same values.
        unsafe { *slot = offset };
    }
    let Some(filled) = CPU_OFFSETS.get_ptr_mut(MAX_ITER_CPUS) else {
        return false;
    };
    // SAFETY: as above; written last, so a reader that sees it sees every offset.
    unsafe { *filled = u64::from(iter.nr_cpus) };
    true
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
pub(super) fn read<T>(addr: u64) -> Result<T, ProbeError> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const T) }
        .map_err(|_| ProbeError::ReadField)
}
