//! The state the HTTP handlers and the loops share, and the lifecycle events not yet applied.

use std::{
    sync::{Mutex, MutexGuard, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use monitor_common::LifecycleEvent;

use crate::model::state::AgentState;

/// Takes fresh numbers from the kernel into the state (the task iterator's walk).
pub type Refresh = Box<dyn Fn() + Send + Sync>;

/// A refresh younger than this serves the next caller as it is: scrapes in a burst cost one
/// walk over the host's tasks, not one each.
const REFRESH_MIN_AGE: Duration = Duration::from_millis(200);

pub struct Shared {
    refresher: OnceLock<Refresh>,
    /// When the last refresh finished; held during a refresh, so concurrent callers wait for
    /// the one running and then find its result fresh.
    last_refresh: Mutex<Option<Instant>>,
    /// Locked before `state` whenever both are held.
    events: Mutex<Option<RingBuf<MapData>>>,
    state: Mutex<AgentState>,
}

impl Shared {
    pub fn new(state: AgentState, events: Option<RingBuf<MapData>>) -> Self {
        Self {
            refresher: OnceLock::new(),
            last_refresh: Mutex::new(None),
            events: Mutex::new(events),
            state: Mutex::new(state),
        }
    }

    /// Installs the refresher; a second one is ignored.
    pub fn set_refresher(&self, refresh: Refresh) {
        let _ = self.refresher.set(refresh);
    }

    /// Runs the refresher unless a run finished less than 200 ms ago. Blocks: call it off
    /// the async workers.
    pub fn refresh(&self) {
        self.refresh_older_than(REFRESH_MIN_AGE);
    }

    /// Runs the refresher whatever the age of the last run (the interval's sample must be
    /// of now), still one run at a time.
    pub fn refresh_now(&self) {
        self.refresh_older_than(Duration::ZERO);
    }

    fn refresh_older_than(&self, age: Duration) {
        let Some(refresh) = self.refresher.get() else {
            return;
        };
        let mut last = self
            .last_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !age.is_zero() && last.is_some_and(|t| t.elapsed() < age) {
            return;
        }
        refresh();
        *last = Some(Instant::now());
    }

    /// The state without pending events applied (for the loops that apply them).
    pub fn state(&self) -> MutexGuard<'_, AgentState> {
        // A panic elsewhere must not take the endpoints down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state with every event the kernel has produced so far applied: a scrape taken
    /// after a process exited never shows it.
    pub fn current(&self) -> MutexGuard<'_, AgentState> {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.state();
        if let Some(ring) = events.as_mut() {
            drain(ring, &mut state);
        }
        state
    }

    /// Applies pending events; returns how many there were.
    pub fn drain_events(&self) -> usize {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(ring) = events.as_mut() else {
            return 0;
        };
        let mut state = self.state();
        drain(ring, &mut state)
    }

    pub fn events_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.as_ref().map(AsRawFd::as_raw_fd)
    }
}

fn drain(ring: &mut RingBuf<MapData>, state: &mut AgentState) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() < size_of::<LifecycleEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a LifecycleEvent here; read_unaligned copies it out.
        let ev = unsafe { item.as_ptr().cast::<LifecycleEvent>().read_unaligned() };
        state.apply_event(&ev);
        n += 1;
    }
    n
}
