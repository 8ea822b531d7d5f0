//! The state the HTTP handlers and the loops share, and the lifecycle events not yet applied.

use std::sync::{Mutex, MutexGuard, PoisonError};

use aya::maps::{MapData, RingBuf};
use monitor_common::LifecycleEvent;

use crate::model::state::AgentState;

pub struct Shared {
    /// Locked before `state` whenever both are held.
    events: Mutex<Option<RingBuf<MapData>>>,
    state: Mutex<AgentState>,
}

impl Shared {
    pub fn new(state: AgentState, events: Option<RingBuf<MapData>>) -> Self {
        Self {
            events: Mutex::new(events),
            state: Mutex::new(state),
        }
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
