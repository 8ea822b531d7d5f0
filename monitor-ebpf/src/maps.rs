//! Maps shared by the probe families, named as `monitor_common` names them for user space.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use monitor_common::{
    Counter, DEFAULT_MAX_PROCS, DEFAULT_MAX_THREAD_PROCS, DEFAULT_MAX_THREADS, EVENTS_RING_BYTES,
    LifecycleEvent, ProcStats, RssKind, ThreadStats,
    stacks::{DEFAULT_MAX_STACKS, StackCounter},
};

/// LRU so a burst of short-lived processes the agent cannot drain in time evicts the coldest
/// entries rather than failing inserts; evictions are derived from the insert/remove counters.
#[map(name = "PROCS")]
pub static PROCS: LruHashMap<u32, ProcStats> = LruHashMap::with_max_entries(DEFAULT_MAX_PROCS, 0);

/// Address space -> tgid, learnt from changes raised by the mm's own tasks, so that reclaim,
/// exit teardown and remote accesses (made by other tasks) still land on the right process.
#[map(name = "MM_OWNERS")]
pub static MM_OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(DEFAULT_MAX_PROCS, 0);

/// What the rss program last found for an mm, in a slot chosen by the mm's address: who
/// raised the event, which tracked process owns the mm, and the counts applied. A slot holds
/// one (mm, observer) pair; two pairs sharing a slot only take the full path more often.
#[map(name = "RSS_SEEN")]
pub static RSS_SEEN: Array<RssSeen> = Array::with_max_entries(RSS_SEEN_SLOTS, 0);

#[derive(Clone, Copy)]
#[repr(C)]
pub struct RssSeen {
    pub mm: u64,
    /// The process whose event filled the slot.
    pub observer: u32,
    /// The process the counts were applied to; 0 when no tracked process owns the mm.
    pub owner: u32,
    /// Raw page counts by member, as read from the counter.
    pub pages: [i64; RssKind::COUNT],
}

pub const RSS_SEEN_SLOTS: u32 = 4096;

/// The RSS_SEEN slot of `mm`. `mm_struct`s sit in a slab at least 1 KiB apart: the bits
/// above that spread them.
#[inline(always)]
pub fn rss_seen(mm: u64) -> Option<&'static mut RssSeen> {
    let slot = ((mm >> 10) as u32) & (RSS_SEEN_SLOTS - 1);
    // SAFETY: an array slot, valid for the program's run. Two CPUs may write it at once; the
    // worst outcome is one event settled against the other's count, as with PROCS itself.
    RSS_SEEN.get_ptr_mut(slot).map(|seen| unsafe { &mut *seen })
}

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Per-thread accounting, only for processes in THREAD_WANT. LRU: threads come and go faster
/// than the agent prunes; evictions are derived from the insert counter and the agent's deletes.
#[map(name = "THREADS")]
pub static THREADS: LruHashMap<u32, ThreadStats> =
    LruHashMap::with_max_entries(DEFAULT_MAX_THREADS, 0);

/// tgid -> 1 for processes the agent wants per-thread numbers for. A plain hash: only the
/// agent writes it, and it bounds it itself.
#[map(name = "THREAD_WANT")]
pub static THREAD_WANT: HashMap<u32, u32> = HashMap::with_max_entries(DEFAULT_MAX_THREAD_PROCS, 0);

/// Slot 0: generation of THREAD_WANT. A constant-index array lookup is inlined by the
/// verifier, so checking it on every page fault costs a load, not a hash lookup.
#[map(name = "THREAD_CONFIG")]
pub static THREAD_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// User stacks of the stack-sampling programs (growth and alloc), deduplicated by the kernel.
#[map(name = "STACKS")]
pub static STACKS: StackTrace = StackTrace::with_max_entries(DEFAULT_MAX_STACKS, 0);

#[map(name = "STACK_COUNTERS")]
pub static STACK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(StackCounter::COUNT, 0);

#[inline(always)]
pub fn count_stack(counter: StackCounter) {
    if let Some(slot) = STACK_COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot, as in `count`.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, so a plain increment is exact.
        unsafe { *slot += 1 };
    }
}

pub const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
pub const BPF_RB_AVAIL_DATA: u64 = 0;
/// Wake the agent only once this much is pending; it also drains on a short timer and before
/// every scrape. Waking it per event costs a fork/exit-heavy host dearly.
const WAKEUP_BYTES: u64 = EVENTS_RING_BYTES as u64 / 4;

/// Sends a lifecycle event, counting it as dropped when the ring buffer is full.
#[inline(always)]
pub fn emit(event: &LifecycleEvent) {
    match EVENTS.reserve::<LifecycleEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags);
        }
        None => count(Counter::EventsDropped),
    }
}
