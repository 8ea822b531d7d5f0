//! Growth sampling for chosen processes: the programs are attached while at least one target
//! is set, since the page-fault tracepoint costs every process on the host.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{RawTracePoint, TracePoint},
};
use monitor_common::stacks::{
    GROWTH_MAP, GROWTH_PAGES_MAP, GROWTH_TARGETS_MAP, GrowthKey, GrowthTarget, GrowthValue, PageKey,
};

use super::tracer::{TracerError, take};

/// The page-fault program, on a raw tracepoint: required.
const FAULT_PROGRAM: (&str, &str) = ("growth_fault", "page_fault_user");

/// Program, tracepoint category and name: optional, they add mmap/brk growth.
const SYSCALL_PROGRAMS: [(&str, &str, &str); 3] = [
    ("growth_mmap", "syscalls", "sys_enter_mmap"),
    ("growth_mremap", "syscalls", "sys_enter_mremap"),
    ("growth_brk", "syscalls", "sys_enter_brk"),
];

pub struct Growth {
    targets: BpfHashMap<MapData, u32, GrowthTarget>,
    growth: BpfHashMap<MapData, GrowthKey, GrowthValue>,
    pages: BpfHashMap<MapData, PageKey, i64>,
    /// Owned links: dropping one detaches it.
    links: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// Why an optional program is off (reported with each result).
    pub off: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GrowthError {
    #[error(transparent)]
    Tracer(#[from] TracerError),
    #[error("growth sampling is unavailable: {0}")]
    Unavailable(String),
    #[error("at most {0} processes can be sampled at once")]
    Full(u32),
    #[error("updating the growth targets failed: {0}")]
    Map(#[from] aya::maps::MapError),
}

impl Growth {
    /// Takes the maps and loads the programs (so a verifier refusal shows at start).
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, GrowthError> {
        let targets = take(ebpf, GROWTH_TARGETS_MAP, BpfHashMap::try_from)?;
        let growth = take(ebpf, GROWTH_MAP, BpfHashMap::try_from)?;
        let pages = take(ebpf, GROWTH_PAGES_MAP, BpfHashMap::try_from)?;
        let (fault, _) = FAULT_PROGRAM;
        raw_program(ebpf, fault)
            .and_then(|p| p.load().map_err(|e| verifier(fault, &e)))
            .map_err(GrowthError::Unavailable)?;
        let mut off = Vec::new();
        for (program, category, name) in SYSCALL_PROGRAMS {
            if let Err(e) =
                program_mut(ebpf, program).and_then(|p| p.load().map_err(|e| verifier(program, &e)))
            {
                off.push(format!(
                    "{category}:{name} is off ({e}): growth by {name} not sampled"
                ));
            }
        }
        Ok(Self {
            targets,
            growth,
            pages,
            links: Vec::new(),
            off,
        })
    }

    pub fn is_target(&self, pid: u32) -> bool {
        self.targets.get(&pid, 0).is_ok()
    }

    pub fn targets(&self) -> Vec<u32> {
        self.targets.keys().filter_map(Result::ok).collect()
    }

    /// Starts sampling `pid`, one fault in `period`.
    pub fn add(&mut self, ebpf: &mut Ebpf, pid: u32, period: u32) -> Result<(), GrowthError> {
        let target = GrowthTarget {
            period: period.max(1),
            seen: 0,
        };
        self.targets.insert(pid, target, 0).map_err(|e| match e {
            aya::maps::MapError::SyscallError(ref s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                GrowthError::Full(monitor_common::stacks::DEFAULT_MAX_GROWTH_TARGETS)
            }
            e => GrowthError::Map(e),
        })?;
        if self.links.is_empty()
            && let Err(e) = self.attach(ebpf)
        {
            let _ = self.targets.remove(&pid);
            return Err(e);
        }
        Ok(())
    }

    /// Stops sampling `pid` and forgets its stacks; detaches when nobody is sampled.
    pub fn remove(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let _ = self.targets.remove(&pid);
        let keys: Vec<GrowthKey> = self
            .growth
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == pid)
            .collect();
        for k in keys {
            let _ = self.growth.remove(&k);
        }
        let pages: Vec<PageKey> = self
            .pages
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == pid)
            .collect();
        for k in pages {
            let _ = self.pages.remove(&k);
        }
        if self.targets.keys().next().is_none() {
            self.detach(ebpf);
        }
    }

    /// Everything sampled for `pid` so far.
    pub fn collect(&self, pid: u32) -> Vec<(GrowthKey, GrowthValue)> {
        self.growth
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.tgid == pid)
            .collect()
    }

    /// Sampled pages of `pid` still resident or swapped out now, per stack id of the fault
    /// that brought each in. None when /proc/PID/pagemap cannot be read (the process exited).
    pub fn retained(&self, pid: u32) -> Option<HashMap<i32, u64>> {
        use std::os::unix::fs::FileExt as _;
        let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
        let page_size = page_size();
        let mut per = HashMap::new();
        for (key, stack_id) in self.pages.iter().filter_map(Result::ok) {
            if key.tgid != pid {
                continue;
            }
            let mut entry = [0u8; 8];
            let at = key.page / page_size * 8;
            if pagemap.read_exact_at(&mut entry, at).is_err() {
                continue;
            }
            // Bit 63: present in RAM; bit 62: swapped out. Either way the process holds it.
            let bits = u64::from_le_bytes(entry);
            if bits & (3 << 62) != 0 {
                *per.entry(stack_id as i32).or_default() += 1;
            }
        }
        Some(per)
    }

    /// Sampled growth entries per process (for the agent's self-metrics).
    pub fn entries(&self) -> HashMap<u32, usize> {
        let mut per = HashMap::new();
        for k in self.growth.keys().filter_map(Result::ok) {
            *per.entry(k.tgid).or_default() += 1;
        }
        per
    }

    fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), GrowthError> {
        self.off.retain(|o| !o.contains("attach failed"));
        let (fault, tracepoint) = FAULT_PROGRAM;
        let link = raw_program(ebpf, fault).and_then(|p| {
            let id = p
                .attach(tracepoint)
                .map_err(|e| format!("attaching {fault} to raw tracepoint {tracepoint}: {e}"))?;
            p.take_link(id).map_err(|e| e.to_string())
        });
        self.links
            .push(Box::new(link.map_err(GrowthError::Unavailable)?));
        for (program, category, name) in SYSCALL_PROGRAMS {
            let link = program_mut(ebpf, program).and_then(|p| {
                let id = p.attach(category, name).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())
            });
            match link {
                Ok(link) => self.links.push(Box::new(link)),
                Err(e) => self
                    .off
                    .push(format!("{category}:{name}: {e} (attach failed)")),
            }
        }
        Ok(())
    }

    fn detach(&mut self, _ebpf: &mut Ebpf) {
        self.links.clear();
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

fn verifier(program: &str, e: &aya::programs::ProgramError) -> String {
    format!("the verifier rejected {program}: {e}")
}

fn raw_program<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut RawTracePoint, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}

fn program_mut<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut TracePoint, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}
