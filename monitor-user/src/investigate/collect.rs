//! Kernel records to reports: stacks read from the stack map, the caller that a frame-pointer
//! walk misses spliced back in, symbolized, merged and ranked.

use std::{collections::HashMap, time::Duration};

use monitor_common::stacks::{GrowthSource, StackCounter};

use super::{
    alloc::AllocTrace,
    growth::{Growth, page_size},
    maps_snapshot::{self, Mapping},
    python::{PyPath, merge},
    report::{Frame, Mode, Report, Source, StackRecord},
    symbolize,
    tracer::Shared,
};

/// The process as last seen, for symbolization.
pub struct Target<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub alive: bool,
    pub mappings: &'a [Mapping],
}

/// One row before symbolization.
struct Raw {
    ips: Vec<u64>,
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
    duration: Duration,
    period: u32,
) -> Report {
    finish_growth(
        target,
        read_growth(target, growth, shared, period),
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

pub fn read_growth(
    target: &Target<'_>,
    growth: &Growth,
    shared: &Shared,
    period: u32,
) -> GrowthRecords {
    let retained = growth.retained(target.pid);
    let page_bytes = |samples: u64| samples * u64::from(period) * page_size();
    let mut faulted = 0;
    let mut kept = 0;
    let raws = growth
        .collect(target.pid)
        .into_iter()
        .map(|(key, value)| {
            let source = match GrowthSource::from_u32(key.source) {
                Some(GrowthSource::Mmap) => Source::Mmap,
                Some(GrowthSource::Brk) => Source::Brk,
                _ => Source::PageFault,
            };
            // Faulted pages count while they are still held; address space counts as added.
            let (bytes, count) = match (source, &retained) {
                (Source::PageFault, Ok(per)) => {
                    let samples = per
                        .get(&(key.stack_id, key.py_stack, key.task))
                        .copied()
                        .unwrap_or(0);
                    faulted += value.bytes;
                    kept += page_bytes(samples);
                    (page_bytes(samples), samples)
                }
                _ => (value.bytes, value.events),
            };
            Raw {
                ips: stack_with_caller(shared, key.stack_id, key.return_hint, target.mappings),
                py: shared.python.path(target.pid, key.py_stack),
                source,
                bytes,
                count,
                oldest_ns: None,
                task: shared.task_name(key.task),
            }
        })
        .filter(|r| r.bytes > 0)
        .collect::<Vec<Raw>>();
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
    notes.extend(growth.off.iter().cloned());
    notes.extend(python_notes(target.pid, shared, &raws));
    notes.extend(loss_notes(shared));
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
    window: AllocWindow,
) -> Report {
    let AllocWindow {
        duration,
        min_age,
        now_ns,
        sample_bytes,
    } = window;
    let born_before = now_ns.saturating_sub(min_age.as_nanos() as u64);
    let raws = trace
        .outstanding(target.pid, born_before, sample_bytes)
        .into_iter()
        .map(|((stack_id, ret, py_stack, task), o)| Raw {
            ips: stack_with_caller(shared, stack_id, ret, target.mappings),
            py: shared.python.path(target.pid, py_stack),
            source: Source::Alloc,
            bytes: o.bytes,
            count: o.count,
            oldest_ns: Some(o.oldest_ns),
            task: shared.task_name(task),
        })
        .collect::<Vec<Raw>>();
    let mut notes = Vec::new();
    notes.extend(python_notes(target.pid, shared, &raws));
    if !trace.off.is_empty() {
        notes.push(format!("probes off: {}", trace.off.join("; ")));
    }
    notes.extend(loss_notes(shared));
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
        let frames = if frames.is_empty() {
            vec![lost_frame()]
        } else {
            frames
        };
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
