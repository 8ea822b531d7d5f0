//! Start-up of per-job and per-thread accounting, kept out of agent.rs: configuration from the
//! command line, the kernel maps, the socket, the listener thread and the interval loops.

use std::{sync::Arc, time::Duration};

use log::{info, warn};

use super::{
    TasksConfig,
    jobs::SocketStatus,
    listener::{self, Kernel, Listener, ListenerConfig},
    socket::{SocketFile, SocketOptions, TaskSocket},
};
use crate::{
    bpf::maps::KernelMaps,
    model::shared::Shared,
    model::state::AgentState,
    threads::{self, TargetProbes, ThreadMaps, ThreadsConfig},
};

/// What start-up prepared before the agent's state is shared.
pub struct PerJob {
    threads: Option<Arc<ThreadMaps>>,
    /// Which task each thread runs, for the stack samplers.
    tasks: Option<crate::bpf::task_map::TaskMap>,
    /// Attached only while some process has per-thread accounting.
    uprobes: Option<TargetProbes>,
    socket: Option<TaskSocket>,
    listener: ListenerConfig,
    per_change: bool,
}

/// Running parts; dropping it stops the loops and removes the socket file.
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _file: Option<SocketFile>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Per-job and per-thread accounting as the command line configures them (built at the
/// boundary, in the agent's start-up).
pub struct Config {
    pub tasks: TasksConfig,
    pub threads: ThreadsConfig,
    /// Where to listen for markers; None without a task socket.
    pub socket: Option<SocketOptions>,
    /// Markers per second per uid.
    pub marker_rate: u32,
    /// `--rss-events`: the kernel keeps per-process counters in PROCS.
    pub per_change: bool,
}

impl PerJob {
    /// Configures `state`, takes the per-thread maps and binds the task socket. Failures
    /// turn the feature off with a note; the agent runs on.
    pub fn prepare(
        kernel: &crate::bpf::Kernel,
        uprobes: Option<TargetProbes>,
        state: &mut AgentState,
        config: Config,
    ) -> Self {
        let marker_uids = config.threads.marker_uids.clone();
        let per_change = config.per_change;
        state.features.insert(super::Tasks::new(config.tasks));
        state.features.insert(threads::Threads::new(config.threads));
        let threads = match ThreadMaps::take(kernel) {
            Ok(m) => {
                threads::Threads::of_mut(state).available = true;
                Some(Arc::new(m))
            }
            Err(e) => {
                state
                    .notes
                    .push(format!("per-thread accounting is off: {e}"));
                None
            }
        };
        let socket = config
            .socket
            .and_then(|opts| match TaskSocket::bind(&opts) {
                Ok(s) => {
                    let (names, jobs, _) = super::Tasks::of(state).shares();
                    info!(
                        "task markers on {} (mode {:04o}, queue {} datagrams); each uid or \
                         cgroup: {} markers/s, {names} task names, {jobs} open jobs; \
                         per-thread accounting for markers from uids {:?}",
                        s.path().display(),
                        s.mode,
                        s.queue_len,
                        config.marker_rate,
                        marker_uids,
                    );
                    super::Tasks::of_mut(state).socket = Some(SocketStatus {
                        path: s.path().display().to_string(),
                        queue_len: s.queue_len,
                        mode: format!("{:04o}", s.mode),
                    });
                    Some(s)
                }
                Err(e) => {
                    warn!("task markers are off: {e}");
                    state.notes.push(format!("task markers are off: {e}"));
                    None
                }
            });
        // Without it, samples carry no task; markers work as before.
        let tasks = crate::bpf::task_map::TaskMap::open(kernel)
            .map_err(|e| warn!("task labels on stack samples are off: {e}"))
            .ok();
        Self {
            threads,
            tasks,
            uprobes,
            socket,
            listener: ListenerConfig::with_rate(config.marker_rate),
            per_change,
        }
    }

    /// Starts the listener thread and the interval loops.
    pub fn start(self, shared: Arc<Shared>, procs: Arc<KernelMaps>, every: Duration) -> Running {
        let mut tasks = Vec::new();
        if let Some(maps) = &self.threads {
            tasks.push(tokio::spawn(threads::run(
                maps.clone(),
                self.uprobes,
                shared.clone(),
                every,
            )));
        }
        let mut file = None;
        if let Some(socket) = self.socket {
            file = Some(socket.file());
            let kernel = Arc::new(Kernel {
                procs,
                threads: self.threads.clone(),
                tasks: self.tasks.map(std::sync::Mutex::new),
                per_change: self.per_change,
                statm: Default::default(),
            });
            let listener = Listener::new(socket, shared.clone(), kernel, self.listener);
            if let Err(e) = std::thread::Builder::new()
                .name("leakscope-tasks".into())
                .spawn(move || listener.run())
            {
                let note = format!("task markers are off: cannot start the listener: {e}");
                warn!("{note}");
                shared.state().notes.push(note);
            }
            let pruned = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let shared = pruned.clone();
                    let _ = tokio::task::spawn_blocking(move || listener::prune(&shared)).await;
                }
            }));
        }
        Running { tasks, _file: file }
    }
}
