//! Maps shared by the probe families, named as `monitor_common` names them for user space.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{Counter, DEFAULT_MAX_PROCS, EVENTS_RING_BYTES, LifecycleEvent, ProcStats};

/// LRU so a burst of short-lived processes the agent cannot drain in time evicts the coldest
/// entries rather than failing inserts; evictions are derived from the insert/remove counters.
#[map(name = "PROCS")]
pub static PROCS: LruHashMap<u32, ProcStats> = LruHashMap::with_max_entries(DEFAULT_MAX_PROCS, 0);

/// `mm_id` -> tgid, learnt from events raised by the mm's own tasks (`curr == 1`), so that
/// reclaim, exit teardown and remote accesses (`curr == 0`) still land on the right process.
#[map(name = "MM_OWNERS")]
pub static MM_OWNERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(DEFAULT_MAX_PROCS, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, so a plain increment is exact.
        unsafe { *slot += 1 };
    }
}

/// Sends a lifecycle event, counting it as dropped when the ring buffer is full.
#[inline(always)]
pub fn emit(event: &LifecycleEvent) {
    match EVENTS.reserve::<LifecycleEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
        }
        None => count(Counter::EventsDropped),
    }
}
