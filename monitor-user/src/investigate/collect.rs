//! Kernel records to reports: stacks read from the stack map, the caller that a frame-pointer
//! walk misses spliced back in, symbolized, merged and ranked.

use std::{collections::HashMap, time::Duration};

use monitor_common::stacks::{GrowthSource, StackCounter};

use super::{
    alloc::AllocTrace,
    growth::{Growth, page_size},
    maps_snapshot::{self, Mapping},
    python::{PyPath, merge},
    report::{Frame, Mode, Report, Source, StackRecord, TRUNCATED_FRAME},
    symbolize,
    tracer::Shared,
    unwind::store::Store,
};

/// The process as last seen, for symbolization.
pub struct Target<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub alive: bool,
    pub mappings: &'a [Mapping],
}

/// One row before symbolization.
/// Whether the sample was taken at an instruction in the uprobes' page.
fn starts_in_uprobes_area(raw: &Raw, mappings: &[Mapping]) -> bool {
    raw.ips.first().is_some_and(|ip| {
        maps_snapshot::find(mappings, *ip)
            .is_some_and(|m| m.path.as_deref() == Some(maps_snapshot::UPROBES_AREA))
    })
}

struct Raw {
    ips: Vec<u64>,
    /// The stack stops short of its outermost frame.
    truncated: bool,
    /// The Python call path, for a CPython target.
    py: Option<PyPath>,
    source: Source,
    bytes: u64,
    count: u64,
    oldest_ns: Option<u64>,
    /// The task running on the sampled thread (task markers).
    task: Option<String>,
}

pub fn growth_report(
    target: &Target<'_>,
    growth: &Growth,
    shared: &Shared,
    unwound: Option<&Store>,
    duration: Duration,
    period: u32,
) -> Report {
    finish_growth(
        target,
        read_growth(target, growth, shared, unwound, period),
        duration,
    )
}

/// What growth sampling recorded for one process, read out of the kernel's maps: the part of
/// a growth report that needs the maps (and their lock). Symbolizing it is the slow part and
/// needs neither.
pub struct GrowthRecords {
    raws: Vec<Raw>,
    notes: Vec<String>,
    period: u32,
}

/// Which stack a row has: the kernel's frame-pointer walk (with the return address read at
/// the stack pointer), or one unwound in user space (`--unwind dwarf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum StackRef {
    Kernel { id: i32, hint: u64 },
    Unwound(u32),
}

/// `unwound`: the stacks unwound in user space (`--unwind dwarf`), None with `--unwind fp`.
/// A sample the unwinder did not get (ring full) keeps its frame-pointer stack.
pub fn read_growth(
    target: &Target<'_>,
    growth: &Growth,
    shared: &Shared,
    unwound: Option<&Store>,
    period: u32,
) -> GrowthRecords {
    let page_ref = |s: &monitor_common::stacks::PageSample| {
        let kernel = StackRef::Kernel {
            id: s.stack_id as i32,
            hint: 0,
        };
        let found = unwound.and_then(|u| u.sample(s.sample_id));
        (found.map_or(kernel, StackRef::Unwound), s.py_stack, s.task)
    };
    let retained = growth.retained(target.pid, page_ref);
    let page_bytes = |samples: u64| samples * u64::from(period) * page_size();
    let kernel_rows = growth.collect(target.pid);
    let faulted: u64 = kernel_rows
        .iter()
        .filter(|(k, _)| GrowthSource::from_u32(k.source) == Some(GrowthSource::PageFault))
        .map(|(_, v)| v.bytes)
        .sum();
    let rows: Vec<(StackRef, u64, u32, u32, u64, u64)> = match unwound {
        None => kernel_rows
            .iter()
            .map(|(k, v)| {
                let r = StackRef::Kernel {
                    id: k.stack_id,
                    hint: k.return_hint,
                };
                (r, k.py_stack, k.task, k.source, v.bytes, v.events)
            })
            .collect(),
        Some(u) => u
            .growth(target.pid)
            .into_iter()
            .map(|(k, i, v)| {
                (
                    StackRef::Unwound(i),
                    k.py_stack,
                    k.task,
                    k.source,
                    v.bytes,
                    v.events,
                )
            })
            .collect(),
    };
    let source_of = |s: u32| match GrowthSource::from_u32(s) {
        Some(GrowthSource::Mmap) => Source::Mmap,
        Some(GrowthSource::Brk) => Source::Brk,
        _ => Source::PageFault,
    };
    // Faulted pages count while they are still held (one row per stack of the samples that
    // brought them in); address space counts as added.
    let mut found: Vec<(StackRef, u64, u32, Source, u64, u64)> = Vec::new();
    let mut kept = 0;
    if let Ok(per) = &retained {
        for (&(r, py, task), &samples) in per {
            kept += page_bytes(samples);
            found.push((r, py, task, Source::PageFault, page_bytes(samples), samples));
        }
    }
    for (r, py, task, source, bytes, events) in rows {
        let source = source_of(source);
        if source == Source::PageFault && retained.is_ok() {
            continue;
        }
        found.push((r, py, task, source, bytes, events));
    }
    let raws = found
        .into_iter()
        .filter(|f| f.4 > 0)
        .map(|(r, py, task, source, bytes, count)| {
            let (ips, truncated) = resolve(shared, unwound, r, target.mappings);
            Raw {
                ips,
                truncated,
                py: shared.python.path(target.pid, py),
                source,
                bytes,
                count,
                oldest_ns: None,
                task: shared.task_name(task),
            }
        })
        .collect::<Vec<Raw>>();
    // A fault at the uprobes' own instruction page is the kernel mapping it on the first probe
    // hit (probes on the memory calls, or on the allocator): leakscope's cost, not the
    // program's growth.
    let (raws, own): (Vec<Raw>, Vec<Raw>) = raws
        .into_iter()
        .partition(|r| !starts_in_uprobes_area(r, target.mappings));
    let mut notes = vec![match &retained {
        Ok(_) => format!(
            "page_fault rows: pages faulted in and still held at the end ({} of {} faulted in; \
             the rest was released); mmap/brk rows: address space added",
            bytesize::ByteSize(kept),
            bytesize::ByteSize(faulted)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "page_fault rows count every page faulted in, released or not: \
             /proc/{}/pagemap could not be read ({e})",
            target.pid
        ),
        Err(_) => "page_fault rows count every page faulted in, released or not: the process \
                   was gone before its pages could be checked"
            .to_owned(),
    }];
    if !own.is_empty() {
        notes.push(format!(
            "left out: {} the kernel mapped into the process for leakscope's own uprobes \
             ({})",
            bytesize::ByteSize(own.iter().map(|r| r.bytes).sum::<u64>()),
            maps_snapshot::UPROBES_AREA
        ));
    }
    notes.extend(growth.notes(target.pid));
    notes.extend(python_notes(target.pid, shared, &raws));
    notes.extend(loss_notes(shared));
    notes.extend(unwind_notes(shared, unwound, &raws));
    GrowthRecords {
        raws,
        notes,
        period,
    }
}

/// Symbolizes and ranks what [`read_growth`] read: blocking work (ELF and DWARF reads).
pub fn finish_growth(target: &Target<'_>, records: GrowthRecords, duration: Duration) -> Report {
    let GrowthRecords {
        raws,
        notes,
        period,
    } = records;
    let mut report = Report {
        pid: target.pid,
        comm: target.comm.to_owned(),
        mode: Mode::Growth,
        duration,
        sample_period: Some(period),
        min_age: None,
        stacks: build(target, raws, None),
        notes,
    };
    report.rank();
    // Memory still held ranks before address space added: the second is gross (a region
    // mapped and unmapped a thousand times counts a thousand times) and may never be touched.
    report.stacks.sort_by_key(|s| s.source != Source::PageFault);
    report
}

pub struct AllocWindow {
    pub duration: Duration,
    pub min_age: Duration,
    pub now_ns: u64,
    /// One sampled block per this many bytes (0: every block).
    pub sample_bytes: u64,
}

pub fn alloc_report(
    target: &Target<'_>,
    trace: &AllocTrace,
    shared: &Shared,
    unwound: Option<&Store>,
    window: AllocWindow,
) -> Report {
    let AllocWindow {
        duration,
        min_age,
        now_ns,
        sample_bytes,
    } = window;
    let born_before = now_ns.saturating_sub(min_age.as_nanos() as u64);
    let block_ref = |info: &monitor_common::stacks::AllocInfo| {
        let kernel = StackRef::Kernel {
            id: info.stack_id,
            hint: info.return_address,
        };
        let found = unwound.and_then(|u| u.sample(info.sample_id));
        (
            found.map_or(kernel, StackRef::Unwound),
            info.py_stack,
            info.task,
        )
    };
    let raws = trace
        .outstanding(target.pid, born_before, sample_bytes, block_ref)
        .into_iter()
        .map(|((r, py_stack, task), o)| {
            let (ips, truncated) = resolve(shared, unwound, r, target.mappings);
            Raw {
                ips,
                truncated,
                py: shared.python.path(target.pid, py_stack),
                source: Source::Alloc,
                bytes: o.bytes,
                count: o.count,
                oldest_ns: Some(o.oldest_ns),
                task: shared.task_name(task),
            }
        })
        .collect::<Vec<Raw>>();
    let mut notes = Vec::new();
    notes.extend(python_notes(target.pid, shared, &raws));
    if !trace.off.is_empty() {
        notes.push(format!("probes off: {}", trace.off.join("; ")));
    }
    notes.extend(loss_notes(shared));
    notes.extend(unwind_notes(shared, unwound, &raws));
    let unpaired = shared.counter(StackCounter::AllocUnpaired);
    if unpaired > 0 {
        notes.push(format!(
            "{unpaired} allocator returns had no matching entry (calls in flight at attach)"
        ));
    }
    if sample_bytes > 1 {
        notes.push(format!(
            "blocks sampled, one per {} allocated on average: bytes and counts are estimates \
             (--sample-bytes 0 traces every block)",
            super::table::human_bytes(sample_bytes)
        ));
    }
    notes.push(format!(
        "{} allocator calls and {} frees traced; blocks allocated before tracing began are not \
         seen",
        shared.counter(StackCounter::AllocCalls),
        shared.counter(StackCounter::FreeCalls)
    ));
    let mut report = Report {
        pid: target.pid,
        comm: target.comm.to_owned(),
        mode: Mode::Alloc,
        duration,
        sample_period: None,
        min_age: Some(min_age),
        stacks: build(target, raws, Some(now_ns)),
        notes,
    };
    report.rank();
    report
}

/// What became of Python frames: the interpreter found (or why none), then the bytes of
/// samples without a full Python path, by reason.
fn python_notes(pid: u32, shared: &Shared, raws: &[Raw]) -> Vec<String> {
    let mut notes: Vec<String> = shared
        .python
        .note(pid)
        .map(str::to_owned)
        .into_iter()
        .collect();
    let mut why: HashMap<&str, (u64, u64)> = HashMap::new();
    for raw in raws {
        if let Some(note) = raw.py.as_ref().and_then(|p| p.note) {
            let e = why.entry(note).or_default();
            e.0 += raw.count;
            e.1 += raw.bytes;
        }
    }
    let mut why: Vec<_> = why.into_iter().collect();
    why.sort();
    for (note, (count, bytes)) in why {
        notes.push(format!(
            "{count} samples ({}): {note}",
            bytesize::ByteSize(bytes)
        ));
    }
    let lost = shared.counter(StackCounter::PyStackLost);
    if lost > 0 {
        notes.push(format!(
            "{lost} Python stacks could not be recorded: the Python stack table was full"
        ));
    }
    notes
}

fn loss_notes(shared: &Shared) -> Vec<String> {
    let mut notes = Vec::new();
    let lost = shared.counter(StackCounter::StackLost);
    if lost > 0 {
        notes.push(format!(
            "{lost} stacks could not be recorded (stack map full or hash collision): their \
             bytes are under [stack lost]"
        ));
    }
    let keys = shared.counter(StackCounter::GrowthKeyLost);
    if keys > 0 {
        notes.push(format!(
            "{keys} growth samples lost: the growth map was full"
        ));
    }
    let releases = shared.counter(StackCounter::ReleaseLost);
    if releases > 0 {
        notes.push(format!(
            "{releases} released ranges not recorded (table full): pages at reused addresses \
             may be credited to an earlier stack"
        ));
    }
    let allocs = shared.counter(StackCounter::AllocLost);
    if allocs > 0 {
        notes.push(format!(
            "{allocs} allocations not tracked: the allocation table was full (raise \
             --max-allocations)"
        ));
    }
    notes
}

/// The instruction pointers of a row's stack, leaf first, and whether it is truncated.
fn resolve(
    shared: &Shared,
    unwound: Option<&Store>,
    stack: StackRef,
    mappings: &[Mapping],
) -> (Vec<u64>, bool) {
    match (stack, unwound) {
        (StackRef::Unwound(i), Some(u)) => u.frames(i, |id| shared.stack(id)),
        (StackRef::Kernel { id, hint }, _) => {
            (stack_with_caller(shared, id, hint, mappings), false)
        }
        (StackRef::Unwound(_), None) => (Vec::new(), true),
    }
}

/// How the stacks were unwound, and what did not go to plan.
fn unwind_notes(shared: &Shared, unwound: Option<&Store>, raws: &[Raw]) -> Vec<String> {
    let Some(u) = unwound else {
        return vec!["native stacks: frame pointers only (--unwind fp)".to_owned()];
    };
    let mut notes = vec![format!(
        "native stacks: unwound with DWARF call-frame information ({} samples), frame \
         pointers beyond the copied stack",
        u.received
    )];
    let truncated = raws.iter().filter(|r| r.truncated).count();
    if truncated > 0 {
        notes.push(format!(
            "{truncated} stacks end in [truncated]: the unwind stopped before the outermost \
             frame and the frame-pointer walk did not meet it"
        ));
    }
    let lost = shared.counter(StackCounter::UnwindLost);
    if lost > 0 {
        notes.push(format!(
            "{lost} samples could not be sent for unwinding (ring full): they keep their \
             frame-pointer stacks"
        ));
    }
    if u.overflow > 0 {
        notes.push(format!(
            "{} unwound samples not kept (table full): they keep their frame-pointer stacks",
            u.overflow
        ));
    }
    for m in u.unreadable() {
        notes.push(format!("no unwind information, frame pointers used: {m}"));
    }
    notes
}

/// The stack's instruction pointers with `caller` (the return address read at the stack
/// pointer) after the leaf, unless the walk already has it or it is not code.
fn stack_with_caller(
    shared: &Shared,
    stack_id: i32,
    caller: u64,
    mappings: &[Mapping],
) -> Vec<u64> {
    let mut ips = shared.stack(stack_id).unwrap_or_default();
    let is_code = maps_snapshot::find(mappings, caller).is_some_and(|m| m.executable);
    if caller != 0 && is_code && !ips.is_empty() && ips.get(1) != Some(&caller) {
        ips.insert(1, caller);
    }
    ips
}

fn build(target: &Target<'_>, raws: Vec<Raw>, now_ns: Option<u64>) -> Vec<StackRecord> {
    let stacks: Vec<Vec<u64>> = raws.iter().map(|r| r.ips.clone()).collect();
    let frames = symbolize::symbolize(target.pid, target.alive, target.mappings, &stacks);
    // Rows whose frames are the same code (different stack ids can symbolize alike) merge.
    #[expect(
        clippy::type_complexity,
        reason = "a local key: frames, source and task"
    )]
    let mut merged: HashMap<
        (
            Vec<(String, u64, Option<String>, Option<u32>)>,
            Source,
            Option<String>,
        ),
        StackRecord,
    > = HashMap::new();
    for (raw, frames) in raws.into_iter().zip(frames) {
        let frames = match &raw.py {
            Some(py) => merge::merge(frames, py),
            None => frames,
        };
        let mut frames = if frames.is_empty() {
            vec![lost_frame()]
        } else {
            frames
        };
        if raw.truncated {
            frames.push(truncated_frame());
        }
        let key = (
            frames
                .iter()
                .map(|f| (f.module.clone(), f.offset, f.function.clone(), f.line))
                .collect(),
            raw.source,
            raw.task.clone(),
        );
        let age = raw
            .oldest_ns
            .zip(now_ns)
            .map(|(t, now)| Duration::from_nanos(now.saturating_sub(t)));
        let row = merged.entry(key).or_insert_with(|| StackRecord {
            frames,
            truncated: raw.truncated,
            source: raw.source,
            bytes: 0,
            count: 0,
            oldest_age: None,
            task: raw.task,
        });
        row.bytes += raw.bytes;
        row.count += raw.count;
        row.oldest_age = row.oldest_age.max(age);
    }
    merged.into_values().collect()
}

/// The outermost frame of a stack whose unwind stopped short: shown as such in the table,
/// the flame graph and pprof, so a missing caller is not mistaken for the root.
fn truncated_frame() -> Frame {
    Frame {
        function: Some(TRUNCATED_FRAME.to_owned()),
        ..lost_frame()
    }
}

fn lost_frame() -> Frame {
    Frame {
        function: Some("[stack lost]".to_owned()),
        module: "[unknown]".to_owned(),
        offset: 0,
        address: 0,
        file: None,
        line: None,
        inlined: false,
        start_line: None,
        python: false,
    }
}
