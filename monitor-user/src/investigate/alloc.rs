//! Allocation tracing for one process: uprobes on its allocators' entry points, a uretprobe
//! on those that return a block, and a read of the blocks still outstanding.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc};

use aya::maps::{HashMap as BpfHashMap, MapData};
use monitor_common::stacks::{ALLOCS_MAP, AllocInfo, AllocKind};

use super::allocators::{Allocator, Role, short_name};
use crate::bpf::{BpfError, Kernel, Link};

const RETURN_PROGRAM: &str = "alloc_return";
const FREE_PROGRAM: &str = "alloc_free";

fn entry_program(kind: AllocKind) -> &'static str {
    match kind {
        AllocKind::Malloc => "alloc_malloc",
        AllocKind::Calloc => "alloc_calloc",
        AllocKind::Realloc => "alloc_realloc",
        AllocKind::Memalign => "alloc_memalign",
        AllocKind::PosixMemalign => "alloc_posix_memalign",
    }
}

const PROGRAMS: [&str; 7] = [
    "alloc_malloc",
    "alloc_calloc",
    "alloc_realloc",
    "alloc_memalign",
    "alloc_posix_memalign",
    FREE_PROGRAM,
    RETURN_PROGRAM,
];

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("allocation tracing is unavailable: {0}")]
    Unavailable(String),
    #[error("no allocator probe could be attached to pid {pid}: {why}")]
    NothingAttached { pid: u32, why: String },
}

/// Outstanding bytes of one stack.
#[derive(Clone, Debug, Default)]
pub struct Outstanding {
    pub bytes: u64,
    pub count: u64,
    /// CLOCK_BOOTTIME of the oldest block.
    pub oldest_ns: u64,
}

pub struct AllocTrace {
    kernel: Arc<Kernel>,
    allocs: BpfHashMap<MapData, u64, AllocInfo>,
    /// Dropping one detaches it.
    links: Vec<Link>,
    /// Entry points attached, as `module:symbol`.
    pub attached: Vec<String>,
    /// Entry points that could not be attached, with the reason.
    pub off: Vec<String>,
}

impl AllocTrace {
    pub fn new(kernel: Arc<Kernel>) -> Result<Self, AllocError> {
        let allocs = kernel.take_map(ALLOCS_MAP, BpfHashMap::try_from)?;
        for program in PROGRAMS {
            kernel
                .load_uprobe(program)
                .map_err(|e| AllocError::Unavailable(e.to_string()))?;
        }
        Ok(Self {
            kernel,
            allocs,
            links: Vec::new(),
            attached: Vec::new(),
            off: Vec::new(),
        })
    }

    /// Attaches to every entry point of `allocators`, for `pid` only.
    pub fn attach(&mut self, pid: u32, allocators: &[Allocator]) -> Result<(), AllocError> {
        let one = NonZeroU32::new(pid).ok_or_else(|| AllocError::Unavailable("pid 0".into()))?;
        for a in allocators {
            for site in &a.sites {
                let name = format!("{}:{}", short_name(&a.module), site.symbol);
                let mut attach = |program: &'static str, offset: u64| match self
                    .kernel
                    .attach_uprobe(program, &a.open_path, offset, one)
                {
                    Ok(link) => {
                        self.links.push(link);
                        true
                    }
                    Err(e) => {
                        self.off.push(format!("{name} ({program}): {e}"));
                        false
                    }
                };
                let ok = match site.role {
                    // The return probe first: an entry without its return would leave
                    // pending entries behind.
                    Role::Allocate(kind) => {
                        attach(RETURN_PROGRAM, site.file_offset)
                            && attach(entry_program(kind), site.file_offset)
                    }
                    Role::Free => attach(FREE_PROGRAM, site.file_offset + site.entry_skip),
                };
                if ok {
                    self.attached.push(name);
                }
            }
        }
        let has = |sym: &str| {
            self.attached
                .iter()
                .any(|n| n.ends_with(&format!(":{sym}")))
        };
        if !has("malloc") && !has("je_malloc") && !has("tc_malloc") {
            let why = if self.off.is_empty() {
                "no malloc entry point".to_owned()
            } else {
                self.off.join("; ")
            };
            self.detach();
            return Err(AllocError::NothingAttached { pid, why });
        }
        Ok(())
    }

    pub fn is_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Removes every probe; what was recorded stays readable.
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// Outstanding blocks of `pid` allocated at or before `born_before_ns`, per (stack id,
    /// return address, Python stack, task); with `sample_bytes` > 1 each sampled block stands for what it was
    /// drawn from.
    pub fn outstanding(
        &self,
        pid: u32,
        born_before_ns: u64,
        sample_bytes: u64,
    ) -> HashMap<(i32, u64, u64, u32), Outstanding> {
        let mut per: HashMap<(i32, u64, u64, u32), Outstanding> = HashMap::new();
        for (_, info) in self.allocs.iter().filter_map(Result::ok) {
            if info.tgid != pid || info.timestamp_ns > born_before_ns {
                continue;
            }
            let (bytes, count) = weight(info.size, sample_bytes);
            let o = per
                .entry((info.stack_id, info.return_address, info.py_stack, info.task))
                .or_default();
            o.bytes += bytes;
            o.count += count;
            o.oldest_ns = if o.oldest_ns == 0 {
                info.timestamp_ns
            } else {
                o.oldest_ns.min(info.timestamp_ns)
            };
        }
        per
    }
}

/// Bytes and blocks one sampled block of `size` stands for: it was taken with probability
/// `size / sample_bytes` (1 when larger, or when every block is traced).
pub fn weight(size: u64, sample_bytes: u64) -> (u64, u64) {
    if sample_bytes <= 1 || size >= sample_bytes {
        (size, 1)
    } else {
        (sample_bytes, sample_bytes.div_ceil(size.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::weight;

    #[test]
    fn a_sampled_block_stands_for_what_it_was_drawn_from() {
        // Every block traced: each counts as itself.
        assert_eq!(weight(100, 0), (100, 1));
        assert_eq!(weight(100, 1), (100, 1));
        // Larger than the period: always taken, counts as itself.
        assert_eq!(weight(1 << 20, 64 << 10), (1 << 20, 1));
        // Smaller: taken with probability size/period, so it stands for a period's worth.
        assert_eq!(weight(1024, 64 << 10), (64 << 10, 64));
        assert_eq!(weight(1000, 4096), (4096, 5));
    }

    #[test]
    fn weighting_is_unbiased_over_many_draws() {
        // The kernel's rule: taken when rand % period < size.
        let (size, period) = (3000u64, 65_536u64);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let (mut estimate, draws) = (0u64, 200_000u64);
        for _ in 0..draws {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if (state as u32 as u64) % period < size {
                estimate += weight(size, period).0;
            }
        }
        let truth = size * draws;
        let error = estimate.abs_diff(truth) as f64 / truth as f64;
        assert!(error < 0.05, "estimate {estimate} vs {truth}");
    }
}
