//! The kernel layer: the only owner of the BPF object. Features ask it for typed map handles
//! and for links; a [`Link`] detaches when dropped, so whoever holds one holds the attachment,
//! and releasing it needs no access to the object.
//!
//! - [`layout`]: tracepoint field offsets (tracefs) and struct offsets (BTF), read once;
//! - [`object`]: the embedded object and the three ways it is loaded (agent, investigate,
//!   bench floor), with its globals and map sizes;
//! - [`probes`]: the agent's always-on probes, each with its fallback;
//! - [`iter`]: the task iterator, the always-on tier's reader;
//! - [`maps`]: the handles the agent reads every interval.

pub mod btf;
pub mod iter;
pub mod layout;
pub mod maps;
pub mod object;
pub mod probes;
pub mod task_map;
pub mod tracefs;

use std::{
    num::NonZeroU32,
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
};

use aya::{
    Ebpf,
    maps::{Map, MapError},
    programs::{
        Program, ProgramError, RawTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};

use crate::error::chain;

/// Where fault injection sends a probe: a tracepoint no kernel has.
pub const NO_SUCH_TRACEPOINT: (&str, &str) = ("leakscope_fault_injection", "no_such_tracepoint");

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("the kernel refused the BPF object: {}", chain(.0))]
    Object(aya::EbpfError),
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {}", chain(.cause))]
    Map { name: &'static str, cause: MapError },
    #[error("program {0} is missing from the object")]
    MissingProgram(String),
    #[error("program {name}: {detail}")]
    Program { name: String, detail: String },
    #[error("the verifier rejected {name}: {summary}")]
    Verifier { name: String, summary: String },
    #[error("attaching {program} to {hook} failed: {detail}")]
    Attach {
        program: String,
        hook: String,
        detail: String,
    },
}

impl From<aya::EbpfError> for BpfError {
    fn from(e: aya::EbpfError) -> Self {
        Self::Object(e)
    }
}

/// An attachment: the program stays attached while this lives.
pub struct Link(
    #[expect(dead_code, reason = "held for its Drop, which detaches")]
    Box<dyn std::any::Any + Send + Sync>,
);

/// The loaded object. Its lock is held only for the length of one map or program operation.
pub struct Kernel {
    ebpf: Mutex<Ebpf>,
}

impl Kernel {
    pub fn new(ebpf: Ebpf) -> Self {
        Self {
            ebpf: Mutex::new(ebpf),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ebpf> {
        self.ebpf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes map `name` out of the object as a typed handle; a map can be taken once.
    pub fn take_map<T>(
        &self,
        name: &'static str,
        convert: impl FnOnce(Map) -> Result<T, MapError>,
    ) -> Result<T, BpfError> {
        let map = self
            .lock()
            .take_map(name)
            .ok_or(BpfError::MissingMap(name))?;
        convert(map).map_err(|cause| BpfError::Map { name, cause })
    }

    /// Runs the verifier on `name` now, so a refusal shows at start rather than at the first
    /// attach; loading twice is harmless.
    /// A handle of its own on a hash map the object keeps, for clients that share the map.
    pub fn map_handle<T>(
        &self,
        name: &'static str,
        convert: impl FnOnce(Map) -> Result<T, MapError>,
    ) -> Result<T, BpfError> {
        let ebpf = self.lock();
        let map = ebpf.map(name).ok_or(BpfError::MissingMap(name))?;
        task_map::reopen(map)
            .and_then(convert)
            .map_err(|cause| BpfError::Map { name, cause })
    }

    pub fn load_raw_tracepoint(&self, name: &str) -> Result<(), BpfError> {
        with_program(&mut self.lock(), name, load::<RawTracePoint>)
    }

    pub fn load_tracepoint(&self, name: &str) -> Result<(), BpfError> {
        with_program(&mut self.lock(), name, load::<TracePoint>)
    }

    pub fn load_uprobe(&self, name: &str) -> Result<(), BpfError> {
        with_program(&mut self.lock(), name, load::<UProbe>)
    }

    pub fn attach_raw_tracepoint(&self, program: &str, tracepoint: &str) -> Result<Link, BpfError> {
        with_program(&mut self.lock(), program, |p: &mut RawTracePoint, _| {
            load(p, program)?;
            let attach = |detail: String| BpfError::Attach {
                program: program.into(),
                hook: format!("raw tracepoint {tracepoint}"),
                detail,
            };
            let id = p.attach(tracepoint).map_err(|e| attach(e.to_string()))?;
            let link = p.take_link(id).map_err(|e| attach(e.to_string()))?;
            Ok(Link(Box::new(link)))
        })
    }

    pub fn attach_tracepoint(
        &self,
        program: &str,
        category: &str,
        name: &str,
    ) -> Result<Link, BpfError> {
        with_program(&mut self.lock(), program, |p: &mut TracePoint, _| {
            load(p, program)?;
            let attach = |detail: String| BpfError::Attach {
                program: program.into(),
                hook: format!("{category}:{name}"),
                detail,
            };
            let id = p
                .attach(category, name)
                .map_err(|e| attach(e.to_string()))?;
            let link = p.take_link(id).map_err(|e| attach(e.to_string()))?;
            Ok(Link(Box::new(link)))
        })
    }

    /// A uprobe at `offset` in the file at `path`, firing for process `pid` only.
    pub fn attach_uprobe(
        &self,
        program: &str,
        path: &Path,
        offset: u64,
        pid: NonZeroU32,
    ) -> Result<Link, BpfError> {
        with_program(&mut self.lock(), program, |p: &mut UProbe, _| {
            load(p, program)?;
            let attach = |detail: String| BpfError::Attach {
                program: program.into(),
                hook: format!("{}+{offset:#x}", path.display()),
                detail,
            };
            let id = p
                .attach(
                    UProbeAttachLocation::AbsoluteOffset(offset),
                    path,
                    UProbeScope::OneProcess(pid),
                )
                .map_err(|e| attach(e.to_string()))?;
            let link = p.take_link(id).map_err(|e| attach(e.to_string()))?;
            Ok(Link(Box::new(link)))
        })
    }

    /// The kernel side's log, forwarded to this process's logger; keep it for the object's
    /// whole life (dropping it closes the log map).
    pub fn logger(&self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error> {
        aya_log::EbpfLogger::init(&mut self.lock())
    }
}

/// Runs `f` on the object's program `name`, as the program type it was built as.
fn with_program<'e, P: 'e, R>(
    ebpf: &'e mut Ebpf,
    name: &str,
    f: impl FnOnce(&'e mut P, &str) -> Result<R, BpfError>,
) -> Result<R, BpfError>
where
    &'e mut P: TryFrom<&'e mut Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| BpfError::MissingProgram(name.into()))?
        .try_into()
        .map_err(|e: ProgramError| BpfError::Program {
            name: name.into(),
            detail: e.to_string(),
        })?;
    f(program, name)
}

trait Loadable {
    fn loaded(&self) -> bool;
    fn load_now(&mut self) -> Result<(), ProgramError>;
}

macro_rules! loadable {
    ($($t:ty),*) => {$(
        impl Loadable for $t {
            fn loaded(&self) -> bool {
                self.fd().is_ok()
            }
            fn load_now(&mut self) -> Result<(), ProgramError> {
                self.load()
            }
        }
    )*};
}
loadable!(RawTracePoint, TracePoint, UProbe);

fn load<P: Loadable>(p: &mut P, name: &str) -> Result<(), BpfError> {
    if p.loaded() {
        return Ok(());
    }
    p.load_now().map_err(|e| BpfError::Verifier {
        name: name.into(),
        summary: verifier_summary(&e),
    })
}

/// The verifier log is long; the lines before its closing statistics say why.
fn verifier_summary(e: &ProgramError) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push('\n');
        text.push_str(&s.to_string());
        source = s.source();
    }
    log::debug!("verifier log: {text}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("verification time") && !l.starts_with("stack depth"))
        .filter(|l| !l.starts_with("processed ") && !l.starts_with("max_states_per_insn"))
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}
