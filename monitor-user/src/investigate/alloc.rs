//! Allocation tracing for one process: uprobes on its allocators' entry points, a uretprobe
//! on those that return a block, and a read of the blocks still outstanding.

use std::{collections::HashMap, num::NonZeroU32};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use monitor_common::stacks::{ALLOCS_MAP, AllocInfo, AllocKind};

use super::{
    allocators::{Allocator, Role, short_name},
    tracer::{TracerError, take},
};

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
    Tracer(#[from] TracerError),
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
    allocs: BpfHashMap<MapData, u64, AllocInfo>,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Entry points attached, as `module:symbol`.
    pub attached: Vec<String>,
    /// Entry points that could not be attached, with the reason.
    pub off: Vec<String>,
}

impl AllocTrace {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, AllocError> {
        let allocs = take(ebpf, ALLOCS_MAP, BpfHashMap::try_from)?;
        for program in PROGRAMS {
            program_mut(ebpf, program)
                .and_then(|p| {
                    p.load()
                        .map_err(|e| format!("the verifier rejected {program}: {e}"))
                })
                .map_err(AllocError::Unavailable)?;
        }
        Ok(Self {
            allocs,
            links: Vec::new(),
            attached: Vec::new(),
            off: Vec::new(),
        })
    }

    /// Attaches to every entry point of `allocators`, for `pid` only.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        allocators: &[Allocator],
    ) -> Result<(), AllocError> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| AllocError::Unavailable("pid 0".into()))?,
        );
        for a in allocators {
            for site in &a.sites {
                let name = format!("{}:{}", short_name(&a.module), site.symbol);
                let mut attach = |program: &'static str, offset: u64| {
                    let result = program_mut(ebpf, program).and_then(|p| {
                        p.attach(
                            UProbeAttachLocation::AbsoluteOffset(offset),
                            &a.open_path,
                            scope,
                        )
                        .map_err(|e| format!("{e}"))
                    });
                    match result {
                        Ok(link) => {
                            self.links.push((program, link));
                            true
                        }
                        Err(e) => {
                            self.off.push(format!("{name} ({program}): {e}"));
                            false
                        }
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
            self.detach(ebpf);
            return Err(AllocError::NothingAttached { pid, why });
        }
        Ok(())
    }

    pub fn is_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Removes every probe; what was recorded stays readable.
    pub fn detach(&mut self, ebpf: &mut Ebpf) {
        for (program, link) in self.links.drain(..) {
            if let Ok(p) = program_mut(ebpf, program) {
                let _ = p.detach(link);
            }
        }
    }

    /// Outstanding blocks of `pid` allocated at or before `born_before_ns`, per (stack id,
    /// return address).
    pub fn outstanding(&self, pid: u32, born_before_ns: u64) -> HashMap<(i32, u64), Outstanding> {
        let mut per: HashMap<(i32, u64), Outstanding> = HashMap::new();
        for (_, info) in self.allocs.iter().filter_map(Result::ok) {
            if info.tgid != pid || info.timestamp_ns > born_before_ns {
                continue;
            }
            let o = per.entry((info.stack_id, info.return_address)).or_default();
            o.bytes += info.size;
            o.count += 1;
            o.oldest_ns = if o.oldest_ns == 0 {
                info.timestamp_ns
            } else {
                o.oldest_ns.min(info.timestamp_ns)
            };
        }
        per
    }
}

fn program_mut<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut UProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}
