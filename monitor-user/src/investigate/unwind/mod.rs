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
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
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
/// The kernel wakes the drainer only once a quarter of the ring is pending; this timer
/// drains the rest (a 4 MiB ring holds 256 samples, so up to ~5000 samples/s drain without
/// a wakeup).
const POLL_MS: i32 = 50;
/// With nothing arriving (an agent whose profiles are idle), the timer backs off to this.
const IDLE_POLL_MS: i32 = 1000;

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
    /// Written to wake the thread when it is told to stop.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Unwinding {
    /// Takes the ring and starts draining it.
    pub fn start(kernel: &Kernel) -> Result<Self, UnwindError> {
        let ring: RingBuf<MapData> = kernel.take_map(UNWIND_SAMPLES_MAP, RingBuf::try_from)?;
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = Arc::new(AtomicBool::new(false));
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(UnwindError::Thread(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor this function owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let thread = std::thread::Builder::new()
            .name("unwind".into())
            .spawn({
                let (store, stop, wake) = (store.clone(), stop.clone(), wake.clone());
                move || Drainer::new(ring, store).run(&stop, &wake)
            })
            .map_err(UnwindError::Thread)?;
        Ok(Self {
            store,
            stop,
            wake,
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
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to the eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
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

    fn run(mut self, stop: &AtomicBool, wake: &OwnedFd) {
        let mut timeout = POLL_MS;
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [self.ring.as_raw_fd(), wake.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfds for the length of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            timeout = if self.drain() == 0 {
                (timeout * 2).min(IDLE_POLL_MS)
            } else {
                POLL_MS
            };
        }
        // What arrived before the stop still counts.
        self.drain();
    }

    /// Unwinds what the ring holds; returns how many samples.
    fn drain(&mut self) -> usize {
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
            return 0;
        }
        let n = batch.len();
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        for (sample, unwound) in batch {
            store.add(&sample, unwound);
        }
        let unreadable = self
            .targets
            .values()
            .flat_map(|t| t.process.unreadable.iter().cloned());
        store.note_unreadable(unreadable);
        n
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
