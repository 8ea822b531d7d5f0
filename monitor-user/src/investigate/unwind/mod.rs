//! `--unwind dwarf`: native stacks that are right without frame pointers. The kernel sends
//! the registers and the top of the user stack of each sampled event (UNWIND_SAMPLES, see
//! monitor-ebpf's probes/unwind.rs); a thread drains the ring as it fills, unwinds each
//! sample with the modules' DWARF call-frame information (framehop), and aggregates by the
//! unwound stack. Where the copied slice ends before the stack does, the kernel's
//! frame-pointer frames beyond it are joined on at report time ([`Store::frames`]), or the
//! stack is marked truncated.

pub mod modules;
pub mod store;
pub mod walk;

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use monitor_common::stacks::{UNWIND_SAMPLES_MAP, UNWIND_STACK_BYTES, UnwindSample};

use self::{
    modules::ModuleCache,
    store::Store,
    walk::{Process, StartRegs},
};
use super::maps_snapshot::{self, Mapping};
use crate::bpf::{BpfError, Kernel};

/// How native stacks are taken (`--unwind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnwindMode {
    /// Registers and a stack slice per sample, unwound in user space with DWARF CFI; frame
    /// pointers continue beyond the slice.
    #[default]
    Dwarf,
    /// The kernel's frame-pointer walk only: cheapest, wrong across code without frame
    /// pointers.
    Fp,
}

impl UnwindMode {
    /// The kernel object's `UNWIND_COPY_BYTES`: stack bytes copied per sample.
    pub fn copy_bytes(self) -> u32 {
        match self {
            Self::Dwarf => UNWIND_STACK_BYTES as u32,
            Self::Fp => 0,
        }
    }
}

/// A process's mappings are read again when a sample's leaf lies outside them (a library
/// loaded since), at most this often.
const MAPS_REFRESH: Duration = Duration::from_secs(1);
/// Processes with an unwinder at once (growth targets are at most 64).
const MAX_PROCESSES: usize = 128;
const POLL_MS: i32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("starting the unwinding thread: {0}")]
    Thread(std::io::Error),
}

/// The draining thread and what it built; stops the thread when dropped.
pub struct Unwinding {
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Unwinding {
    /// Takes the ring and starts draining it.
    pub fn start(kernel: &Kernel) -> Result<Self, UnwindError> {
        let ring: RingBuf<MapData> = kernel.take_map(UNWIND_SAMPLES_MAP, RingBuf::try_from)?;
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("unwind".into())
            .spawn({
                let (store, stop) = (store.clone(), stop.clone());
                move || Drainer::new(ring, store).run(&stop)
            })
            .map_err(UnwindError::Thread)?;
        Ok(Self {
            store,
            stop,
            thread: Some(thread),
        })
    }

    /// What was unwound so far.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops draining (after unwinding what the ring still holds) and returns the result.
    pub fn finish(mut self) -> Store {
        self.stop_thread();
        std::mem::take(&mut *self.store())
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Unwinding {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

struct Target {
    process: Process,
    mappings: Vec<Mapping>,
    read_at: Instant,
}

struct Drainer {
    ring: RingBuf<MapData>,
    store: Arc<Mutex<Store>>,
    modules: ModuleCache,
    targets: HashMap<u32, Target>,
}

impl Drainer {
    fn new(ring: RingBuf<MapData>, store: Arc<Mutex<Store>>) -> Self {
        Self {
            ring,
            store,
            modules: ModuleCache::default(),
            targets: HashMap::new(),
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let mut fd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the length of the call.
            unsafe { libc::poll(&mut fd, 1, POLL_MS) };
            self.drain();
        }
        // What arrived before the stop still counts.
        self.drain();
    }

    fn drain(&mut self) {
        let mut batch = Vec::new();
        loop {
            let Some(item) = self.ring.next() else { break };
            if item.len() < size_of::<UnwindSample>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole UnwindSample; read unaligned, as a copy, since
            // the ring's memory is only borrowed until `item` drops.
            let sample: UnwindSample = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            batch.push(self.unwind(&sample));
        }
        if batch.is_empty() {
            return;
        }
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        for (sample, unwound) in batch {
            store.add(&sample, unwound);
        }
        let unreadable = self
            .targets
            .values()
            .flat_map(|t| t.process.unreadable.iter().cloned());
        store.note_unreadable(unreadable);
    }

    fn unwind(&mut self, s: &UnwindSample) -> (store::Sample, store::Unwound) {
        let pid = s.key.tgid;
        let target = self.target(pid, s.ip);
        let len = (s.stack_len as usize).min(UNWIND_STACK_BYTES);
        let regs = StartRegs {
            ip: s.ip,
            sp: s.sp,
            fp: s.fp,
            lr: s.lr,
        };
        // A hostile CFI must not take the agent down: framehop parses with bounds, and a
        // panic in it costs this sample only.
        let walk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            target.process.unwind(regs, &s.stack[..len])
        }));
        let unwound = match walk {
            Ok(w) => store::Unwound::new(w, s.key.stack_id),
            Err(_) => store::Unwound::failed(s.key.stack_id),
        };
        (store::Sample::of(s), unwound)
    }

    /// The unwinder of `pid`, made or remade when `leaf` is outside what it knows.
    fn target(&mut self, pid: u32, leaf: u64) -> &mut Target {
        let stale = self.targets.get(&pid).is_none_or(|t| {
            let known = maps_snapshot::find(&t.mappings, leaf).is_some_and(|m| m.executable);
            !known && t.read_at.elapsed() >= MAPS_REFRESH
        });
        if stale {
            if self.targets.len() >= MAX_PROCESSES {
                self.targets.clear();
            }
            let old = self.targets.remove(&pid).map(|t| t.mappings);
            // A process that is gone keeps the mappings it was last seen with.
            let mappings = maps_snapshot::read(pid).ok().or(old).unwrap_or_default();
            let process = Process::new(pid, &mappings, &mut self.modules);
            self.targets.insert(
                pid,
                Target {
                    process,
                    mappings,
                    read_at: Instant::now(),
                },
            );
        }
        self.targets.get_mut(&pid).expect("inserted above")
    }
}
