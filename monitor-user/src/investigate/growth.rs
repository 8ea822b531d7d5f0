//! Growth sampling for chosen processes: the page-fault program is attached while at least one
//! target is set, since that tracepoint costs every process on the host. The memory calls
//! (mmap, mremap, brk, and the munmap/madvise releases) are seen by uprobes on each target's
//! own libc wrappers, attached to that process alone: `syscalls:*` tracepoints would put
//! every syscall on the host through the kernel's slow path while anyone is sampled.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use monitor_common::stacks::{
    GROWTH_MAP, GROWTH_PAGES_MAP, GROWTH_RELEASES_MAP, GROWTH_SAMPLER_MAP, GROWTH_TARGETS_MAP,
    GrowthKey, GrowthSampler, GrowthTarget, GrowthValue, PageKey, PageSample, Release, ReleaseKey,
};

use crate::{
    bpf::{BpfError, Kernel, Link},
    host::wrappers::Resolver,
};

/// The page-fault program, on a raw tracepoint: required.
const FAULT_PROGRAM: (&str, &str) = ("growth_fault", "page_fault_user");

/// (libc wrapper, uprobe program): optional, they add mmap/brk growth and the releases that
/// keep reused addresses from being credited to an old stack.
const CALL_PROGRAMS: [(&str, &str); 5] = [
    ("mmap", "growth_mmap"),
    ("mremap", "growth_mremap"),
    ("brk", "growth_brk"),
    ("munmap", "growth_munmap"),
    ("madvise", "growth_madvise"),
];

pub struct Growth {
    kernel: Arc<Kernel>,
    targets: BpfHashMap<MapData, u32, GrowthTarget>,
    growth: BpfHashMap<MapData, GrowthKey, GrowthValue>,
    pages: BpfHashMap<MapData, PageKey, PageSample>,
    releases: BpfHashMap<MapData, ReleaseKey, Release>,
    sampler: PerCpuArray<MapData, GrowthSampler>,
    /// Dropping one detaches it.
    links: Vec<Link>,
    /// Each target's uprobes on its memory calls; dropping them detaches them.
    calls: HashMap<u32, Vec<Link>>,
    /// Whether the call programs loaded.
    calls_loaded: bool,
    resolver: Resolver,
    /// Why an optional program is off (reported with each result).
    off: Vec<String>,
    /// Targets whose memory calls could not be probed, and why (until they stop being
    /// targets: the agent's sampler outlives many).
    calls_off: HashMap<u32, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GrowthError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("growth sampling is unavailable: {0}")]
    Unavailable(String),
    #[error("at most {0} processes can be sampled at once")]
    Full(u32),
    #[error("updating the growth targets failed: {}", crate::error::chain(.0))]
    Map(aya::maps::MapError),
}

impl From<aya::maps::MapError> for GrowthError {
    fn from(e: aya::maps::MapError) -> Self {
        Self::Map(e)
    }
}

impl Growth {
    /// Takes the maps and loads the programs (so a verifier refusal shows at start).
    pub fn new(kernel: Arc<Kernel>) -> Result<Self, GrowthError> {
        let targets = kernel.take_map(GROWTH_TARGETS_MAP, BpfHashMap::try_from)?;
        let growth = kernel.take_map(GROWTH_MAP, BpfHashMap::try_from)?;
        let pages = kernel.take_map(GROWTH_PAGES_MAP, BpfHashMap::try_from)?;
        let releases = kernel.take_map(GROWTH_RELEASES_MAP, BpfHashMap::try_from)?;
        let sampler = kernel.take_map(GROWTH_SAMPLER_MAP, PerCpuArray::try_from)?;
        let (fault, _) = FAULT_PROGRAM;
        kernel
            .load_raw_tracepoint(fault)
            .map_err(|e| GrowthError::Unavailable(e.to_string()))?;
        let mut off = Vec::new();
        let loaded = CALL_PROGRAMS
            .iter()
            .try_for_each(|(_, program)| kernel.load_uprobe(program));
        if let Err(e) = &loaded {
            off.push(format!(
                "uprobes on memory calls are off ({e}): growth by mmap, mremap and brk is not \
                 sampled, nor releases by munmap and madvise"
            ));
        }
        Ok(Self {
            kernel,
            targets,
            growth,
            pages,
            releases,
            sampler,
            links: Vec::new(),
            calls: HashMap::new(),
            calls_loaded: loaded.is_ok(),
            resolver: Resolver::default(),
            off,
            calls_off: HashMap::new(),
        })
    }

    pub fn is_target(&self, pid: u32) -> bool {
        self.targets.get(&pid, 0).is_ok()
    }

    /// The sample period `pid` is traced with, if it is a target.
    pub fn period(&self, pid: u32) -> Option<u32> {
        self.targets.get(&pid, 0).ok().map(|t| t.period)
    }

    pub fn targets(&self) -> Vec<u32> {
        self.targets.keys().filter_map(Result::ok).collect()
    }

    /// Starts sampling `pid`, one fault in `period`. The sampler is shared: while others are
    /// sampled, `pid` gets the period already in force (see [`Growth::period`]).
    pub fn add(&mut self, pid: u32, period: u32) -> Result<(), GrowthError> {
        let period = if self.links.is_empty() {
            self.set_period(period.max(1))?;
            period.max(1)
        } else {
            self.period_in_force().unwrap_or(period.max(1))
        };
        let target = GrowthTarget { period, _pad: 0 };
        self.targets.insert(pid, target, 0).map_err(|e| match e {
            aya::maps::MapError::SyscallError(ref s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                GrowthError::Full(monitor_common::stacks::DEFAULT_MAX_GROWTH_TARGETS)
            }
            e => GrowthError::Map(e),
        })?;
        if self.links.is_empty()
            && let Err(e) = self.attach()
        {
            let _ = self.targets.remove(&pid);
            return Err(e);
        }
        self.attach_calls(pid);
        Ok(())
    }

    /// Uprobes on `pid`'s own memory-call wrappers. Without them its page faults are still
    /// sampled: the note says what is missing.
    fn attach_calls(&mut self, pid: u32) {
        if !self.calls_loaded || self.calls.contains_key(&pid) {
            return;
        }
        let Some(one) = NonZeroU32::new(pid) else {
            return;
        };
        let attached = self
            .resolver
            .site(pid)
            .map_err(|e| e.to_string())
            .and_then(|site| {
                let mut links = Vec::new();
                for (wrapper, offset) in &site.offsets {
                    let Some((_, program)) = CALL_PROGRAMS.iter().find(|(w, _)| w == wrapper)
                    else {
                        continue;
                    };
                    let link = self
                        .kernel
                        .attach_uprobe(program, &site.open_path, *offset, one)
                        .map_err(|e| format!("the kernel refused a uprobe on {wrapper}: {e}"))?;
                    links.push(link);
                }
                Ok(links)
            });
        match attached {
            Ok(links) => {
                self.calls.insert(pid, links);
            }
            Err(why) => {
                self.calls_off.insert(
                    pid,
                    format!(
                        "pid {pid}: memory calls not probed ({why}): growth by mmap and brk \
                         is not sampled, nor releases by munmap and madvise; page faults still \
                         are"
                    ),
                );
            }
        }
    }

    /// What is not sampled for `pid`, in words, for its report.
    pub fn notes(&self, pid: u32) -> Vec<String> {
        self.off
            .iter()
            .chain(self.calls_off.get(&pid))
            .cloned()
            .collect()
    }

    fn set_period(&mut self, period: u32) -> Result<(), GrowthError> {
        let cpus =
            aya::util::nr_cpus().map_err(|(_, e)| GrowthError::Unavailable(e.to_string()))?;
        let each = GrowthSampler {
            period,
            countdown: 0,
        };
        let values = PerCpuValues::try_from(vec![each; cpus])
            .map_err(|e| GrowthError::Unavailable(e.to_string()))?;
        self.sampler.set(0, values, 0)?;
        Ok(())
    }

    fn period_in_force(&self) -> Option<u32> {
        let values = self.sampler.get(&0, 0).ok()?;
        values.iter().map(|s| s.period).max()
    }

    /// Stops sampling `pid` and forgets its stacks; detaches when nobody is sampled.
    pub fn remove(&mut self, pid: u32) {
        let _ = self.targets.remove(&pid);
        remove_keys(&mut self.growth, |k| k.tgid == pid);
        remove_keys(&mut self.pages, |k| k.tgid == pid);
        remove_keys(&mut self.releases, |k| k.tgid == pid);
        self.calls.remove(&pid);
        self.calls_off.remove(&pid);
        if self.targets.keys().next().is_none() {
            self.links.clear();
        }
    }

    /// Stops sampling (every target); what was recorded stays readable.
    pub fn detach(&mut self) {
        self.links.clear();
        self.calls.clear();
    }

    /// Everything sampled for `pid` so far.
    pub fn collect(&self, pid: u32) -> Vec<(GrowthKey, GrowthValue)> {
        self.growth
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.tgid == pid)
            .collect()
    }

    /// Sampled pages of `pid` still resident or swapped out now, and not released since
    /// their sample, counted per `key` of the sample that brought each in. Err when
    /// /proc/PID/pagemap cannot be read (the process exited).
    pub fn retained<K: std::hash::Hash + Eq>(
        &self,
        pid: u32,
        key: impl Fn(&PageSample) -> K,
    ) -> std::io::Result<HashMap<K, u64>> {
        use std::os::unix::fs::FileExt as _;
        let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
        let page_size = page_size();
        let samples: Vec<(u64, PageSample)> = self
            .pages
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.tgid == pid)
            .map(|(k, s)| (k.page, s))
            .collect();
        let releases: Vec<(u64, Release)> = self
            .releases
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.tgid == pid)
            .map(|(k, r)| (k.start, r))
            .collect();
        let mut per = HashMap::new();
        for (page, sample) in unreleased(samples, &releases) {
            let mut entry = [0u8; 8];
            if pagemap
                .read_exact_at(&mut entry, page / page_size * 8)
                .is_err()
            {
                continue;
            }
            // Bit 63: present in RAM; bit 62: swapped out. Either way the process holds it.
            let bits = u64::from_le_bytes(entry);
            if bits & (3 << 62) != 0 {
                *per.entry(key(&sample)).or_default() += 1;
            }
        }
        Ok(per)
    }

    /// Sampled growth entries per process (for the agent's self-metrics).
    pub fn entries(&self) -> HashMap<u32, usize> {
        let mut per = HashMap::new();
        for k in self.growth.keys().filter_map(Result::ok) {
            *per.entry(k.tgid).or_default() += 1;
        }
        per
    }

    fn attach(&mut self) -> Result<(), GrowthError> {
        let (fault, tracepoint) = FAULT_PROGRAM;
        let link = self
            .kernel
            .attach_raw_tracepoint(fault, tracepoint)
            .map_err(|e| GrowthError::Unavailable(e.to_string()))?;
        self.links.push(link);
        Ok(())
    }
}

/// Removes the entries whose key `matches` (keys first: a map cannot be changed while iterated).
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    matches: impl Fn(&K) -> bool,
) {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| matches(k))
        .collect();
    for k in keys {
        let _ = map.remove(&k);
    }
}

/// The samples whose page no release covered after the sample was taken: a later mapping
/// that reuses the address was faulted in by some other, unsampled, code path.
fn unreleased(
    mut samples: Vec<(u64, PageSample)>,
    releases: &[(u64, Release)],
) -> Vec<(u64, PageSample)> {
    samples.sort_unstable_by_key(|(page, _)| *page);
    let mut gone = vec![false; samples.len()];
    for (start, r) in releases {
        let from = samples.partition_point(|(page, _)| page < start);
        let to = samples.partition_point(|(page, _)| *page < r.end);
        for (i, (_, s)) in samples.iter().enumerate().take(to).skip(from) {
            if r.released_ns > s.sampled_ns {
                gone[i] = true;
            }
        }
    }
    samples
        .into_iter()
        .zip(gone)
        .filter_map(|(s, gone)| (!gone).then_some(s))
        .collect()
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(stack_id: i64, sampled_ns: u64) -> PageSample {
        PageSample {
            stack_id,
            sampled_ns,
            py_stack: 0,
            sample_id: 0,
            task: 0,
            _pad: 0,
        }
    }

    #[test]
    fn a_release_after_the_sample_drops_the_page_and_one_before_it_does_not() {
        let samples = vec![
            (0x3000, sample(1, 100)), // released at 200: the address was reused since
            (0x1000, sample(2, 300)), // released at 200, before it was sampled again
            (0x9000, sample(3, 100)), // outside every range
            (0x5000, sample(4, 100)), // at a range's end: not inside it
        ];
        let releases = [
            (
                0x1000,
                Release {
                    end: 0x5000,
                    released_ns: 200,
                },
            ),
            (
                0x8000,
                Release {
                    end: 0x9000,
                    released_ns: 400,
                },
            ),
        ];
        let kept: Vec<i64> = unreleased(samples, &releases)
            .into_iter()
            .map(|(_, s)| s.stack_id)
            .collect();
        assert_eq!(kept, vec![2, 4, 3]);
    }

    #[test]
    fn no_releases_keep_every_sample() {
        let samples = vec![(0x2000, sample(7, 1)), (0x1000, sample(8, 1))];
        assert_eq!(unreleased(samples, &[]).len(), 2);
    }
}
