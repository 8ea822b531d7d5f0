//! `leakscope run`: start-up, the kernel event loop and the interval loop.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use log::{info, warn};
use monitor_common::ProcStats;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    bpf::{layout::Layout, maps::KernelMaps, object::AgentSizes},
    cli::RunArgs,
    host::caps::CapSet,
    host::proc::{self, ProcError},
    http,
    investigate::auto::{self, AutoGrowth},
    model::detector::DetectorConfig,
    model::select::Selector,
    model::shared::Shared,
    model::state::{AgentState, Settings, boot_ns},
};

mod snapshot;

use snapshot::{Source, adopt_new_from_proc, iter_notes, load_task_iter, take_snapshot};

/// Between intervals and scrapes (which drain first), events are applied this often. Every
/// tick wakes the agent on an idle host; the kernel wakes it sooner when the ring buffer
/// fills a quarter (an exit storm), so a longer tick costs no events.
const EVENTS_DRAIN_INTERVAL: Duration = Duration::from_millis(250);

/// /proc reads per interval, so a fork storm cannot turn the agent into a /proc scanner.
const PROC_READS_PER_INTERVAL: usize = 256;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    limit_malloc_arenas();
    // A broken web config is a mistake in the command line: report it before anything else,
    // privileged or not.
    let web = match &args.web_config_file {
        Some(path) => crate::http::web::Web::load(path)?,
        None => crate::http::web::Web::default(),
    };
    let caps = CapSet::current().context("reading the agent's capabilities")?;
    let missing = caps.missing_required();
    if !missing.is_empty() {
        let names: Vec<_> = missing
            .iter()
            .map(|c| format!("{} ({})", c.name, c.why))
            .collect();
        anyhow::bail!(
            "missing capabilities: {}; run as root or grant them (e.g. `setcap cap_bpf,cap_perfmon+ep`)",
            names.join(", ")
        );
    }
    let mut state = AgentState::new(Settings {
        selector: Selector::new(args.matchers.clone()),
        max_processes: args.max_processes as usize,
        detector: DetectorConfig {
            window_secs: args.leak_window.as_secs_f64(),
            warmup_secs: args.leak_warmup.as_secs_f64(),
            time_scale: args.detector_time_scale,
            ..DetectorConfig::default()
        },
        limits: args.limits.clone(),
        max_pools: args.max_pools as usize,
    });
    state.detector.check_sampling(args.interval)?;
    for c in caps.missing_optional() {
        warn!("without {} the agent cannot {}", c.name, c.why);
    }
    // Before anything is loaded: a stop request during start-up still stops the agent.
    let mut signals =
        crate::shutdown::Signals::install().context("installing the signal handlers")?;
    // Bind first: a port in use should fail before anything is loaded into the kernel.
    let listener = http::bind(args.listen).await?;
    crate::bpf::object::present()?;
    crate::bpf::object::raise_memlock();

    let layout = Layout::read_mounting();
    if let Err(e) = &layout.tracefs {
        state.notes.push(e.clone());
    }
    // The iterator's layout also tells the exit program whether to read the final RSS.
    let iter_setup = crate::bpf::iter::iter_layout(
        std::path::Path::new(crate::bpf::btf::VMLINUX),
        &layout.exit,
        &args.break_probe,
        args.rss_events,
    );
    // `investigate --pid` run beside the agent labels its samples with the agent's tasks
    // through these pins; without them only the agent's own profiles have task labels.
    let task_pins = crate::bpf::task_map::prepare_pins()
        .map_err(|e| warn!("task labels for `leakscope investigate` are off: {e}"))
        .ok();
    let sizes = AgentSizes {
        iter: iter_setup.layout.as_ref().ok().copied(),
        max_kernel_processes: args.max_kernel_processes,
        max_kernel_threads: args.max_kernel_threads,
        max_thread_processes: args.max_thread_processes,
        // Without profiling nothing is sampled: the stack-copy ring stays one page (mapped, a
        // 4 MiB ring is 8 MiB of the agent's RSS).
        stacks: crate::http::profile::agent_capacity(if args.enable_profiling {
            args.profile_unwind.into()
        } else {
            crate::investigate::unwind::UnwindMode::Fp
        }),
        task_pins: task_pins.as_ref().map(|p| p.dir().to_path_buf()),
    };
    release_freed_memory();
    let kernel = Arc::new(
        crate::bpf::object::load_agent(&layout, &sizes).context("loading the BPF programs")?,
    );
    release_freed_memory();
    // Held for the agent's whole life: dropping it detaches the probes.
    let probes =
        crate::bpf::probes::attach_agent(&kernel, &layout, &args.break_probe, args.rss_events);
    let (uprobe_status, uprobes) = crate::threads::prepare(kernel.clone(), &args.break_probe);
    state.probes = probes.statuses.clone();
    state.probes.push(uprobe_status);
    let task_iter =
        (!args.rss_events).then(|| load_task_iter(&kernel, &iter_setup, &layout.btf, &args));
    if let Some(result) = &task_iter {
        state.probes.push(crate::bpf::iter::status(result));
        if let Ok(iter) = result {
            state.probes.push(crate::bpf::iter::typed_status(iter));
        }
        for note in iter_notes(&iter_setup, result.is_ok()) {
            warn!("{note}");
            state.notes.push(note);
        }
    }
    let task_iter = task_iter.and_then(Result::ok).map(Arc::new);
    for p in &state.probes {
        match &p.error {
            None => info!("probe {} attached to {}", p.name, p.tracepoint),
            Some(e) => warn!("probe {} is OFF: {e}; {}", p.name, p.fallback),
        }
    }
    if let Ok(root) = &layout.tracefs {
        info!("tracefs at {}", root.display());
    }
    // Kept alive for the agent's whole life: dropping it closes the log map.
    let logger = kernel
        .logger()
        .map_err(|e| warn!("kernel-side log is off: {e}"))
        .ok();
    // Shared with the task-marker listener, which reads a process's entry at each marker.
    let maps = Arc::new(KernelMaps::take(&kernel).context("opening kernel maps")?);
    let per_job =
        crate::tasks::run::PerJob::prepare(&kernel, uprobes, &mut state, per_job_config(&args));
    let events = crate::bpf::maps::events(&kernel).context("opening the EVENTS ring buffer")?;

    // Seed after attaching, so a process born in between is seen by one or the other.
    match proc::read_all() {
        Ok((found, failed)) => {
            info!("seeded {} processes from /proc", found.len());
            record_proc_errors(&mut state, &failed);
            state.table.seed(found);
        }
        Err(e) => state.notes.push(format!("cannot seed from /proc: {e}")),
    }

    let shared = Arc::new(Shared::new(state, Some(events)));
    info!(
        "serving on {}://{}/metrics (also /healthz; /api/v1/* to {}; profiling {}){}",
        web.scheme(),
        args.listen,
        if args.expose_api {
            "every peer"
        } else {
            "loopback peers"
        },
        if args.enable_profiling { "on" } else { "off" },
        if web.has_auth() {
            ", basic auth on all but /healthz"
        } else {
            ""
        }
    );

    // Growth programs are attached on request only (and for --auto-growth), and only with
    // --enable-profiling (which --auto-growth requires): otherwise nothing is loaded for them.
    let profiler: Option<http::SharedProfiler> = if !args.enable_profiling {
        None
    } else {
        match crate::investigate::profiler::Profiler::new(
            kernel.clone(),
            Duration::from_secs(crate::http::profile::MAX_SECONDS),
            args.auto_growth_max_duration,
            args.profile_unwind.into(),
        ) {
            Ok(p) => Some(Arc::new(tokio::sync::Mutex::new(p))),
            Err(e) => {
                warn!("/debug/pprof/growth is off: {e}");
                None
            }
        }
    };
    let events_task = tokio::spawn(event_loop(shared.clone()));
    let per_job = per_job.start(shared.clone(), maps.clone(), args.interval);
    let auto_growth = args.auto_growth.then_some(AutoGrowth {
        period: args.auto_growth_period,
        max: args.auto_growth_max as usize,
    });
    if auto_growth.is_some() && profiler.is_none() {
        warn!("--auto-growth is off: growth profiling is unavailable (see above)");
    }
    let source = Source {
        maps,
        iter: task_iter,
        iter_failures: Arc::default(),
        rss_events: args.rss_events,
    };
    let refresh_source = source.clone();
    let weak = Arc::downgrade(&shared);
    shared.set_refresher(Box::new(move || {
        if let Some(shared) = weak.upgrade() {
            take_snapshot(&refresh_source, &shared);
        }
    }));
    let sync_task = tokio::spawn(interval_loop(
        source,
        shared.clone(),
        profiler.clone(),
        args.interval,
        auto_growth,
    ));
    let logger_task = logger.map(|l| tokio::spawn(log_loop(l)));
    // Pod names from the Kubernetes API: only inside a cluster (kube.rs says when).
    let pods = shared.state().pods.clone();
    let kube_task = crate::host::kube::ApiConfig::from_env()
        .map(|cfg| tokio::spawn(crate::host::kube::run(cfg, pods)));
    // Docker container names from the daemon's socket; quietly nothing without one.
    let containers = shared.state().containers.clone();
    let docker_task = tokio::spawn(crate::host::docker::run(
        crate::host::docker::SOCKET.into(),
        containers,
    ));
    let access = http::Access {
        expose_api: args.expose_api,
        profiling: args.enable_profiling,
        credentials: web.has_auth(),
    };
    if args.expose_api && !web.has_auth() && !args.listen.ip().is_loopback() {
        warn!(
            "--expose-api without basic auth: anyone who can reach {} can list this host's \
             processes",
            args.listen
        );
    }
    let result = crate::http::web::serve(
        listener,
        http::router(http::App { shared, profiler }, access),
        async move {
            signals.recv().await;
            info!("shutting down");
        },
        &web,
    )
    .await
    .map_err(http::HttpError::Serve);
    events_task.abort();
    sync_task.abort();
    if let Some(t) = kube_task {
        t.abort();
    }
    docker_task.abort();
    if let Some(t) = logger_task {
        t.abort();
    }
    // Stops its loops and removes the task socket's file.
    drop(per_job);
    // The probes go last, with everything that read what they count.
    drop(probes);
    drop(task_pins);
    result.map_err(Into::into)
}

/// Per-job and per-thread accounting as the flags say.
fn per_job_config(args: &RunArgs) -> crate::tasks::run::Config {
    crate::tasks::run::Config {
        tasks: crate::tasks::TasksConfig {
            max_tasks: args.max_tasks as usize,
            ..Default::default()
        },
        threads: crate::threads::ThreadsConfig {
            matchers: Selector::new(args.threads_for.clone()),
            has_matchers: !args.threads_for.is_empty(),
            marker_uids: args.threads_for_uid.clone(),
            max_processes: args.max_thread_processes as usize,
            top_n: args.top_threads as usize,
        },
        socket: (!args.no_task_socket).then(|| crate::tasks::socket::SocketOptions {
            path: args.task_socket.clone(),
            mode: args.task_socket_mode,
            group: args.task_socket_group.clone(),
            queue_len: args.task_queue_len,
        }),
        marker_rate: args.marker_rate,
        per_change: args.rss_events,
    }
}

/// How often the allocator gives back the pages it holds free: each interval's scratch space
/// and a thousand histories' growth leave free chunks in every thread's arena, which the
/// agent's RSS would otherwise keep (a walk of the free lists, about a millisecond).
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Arenas glibc may create: one per thread that meets contention otherwise (up to 8 per
/// core), each keeping its own free memory. The agent's threads allocate little at once.
const MALLOC_ARENAS: i32 = 2;

/// Bounds the allocator's arenas; called first thing, before the agent's threads allocate.
pub(crate) fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets glibc's tunables.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
}

/// Parsing kernel BTF (ours, then aya's) briefly needs tens of MiB; hand it back to the
/// kernel rather than keeping it in malloc's free lists for the agent's whole life.
pub(crate) fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own heaps.
    unsafe { libc::malloc_trim(0) };
}

async fn log_loop(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd and keeps it open until it is dropped.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// The ring buffer's fd, borrowed for polling; `Shared` owns the ring and outlives the loop.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

async fn event_loop(shared: Arc<Shared>) {
    let Some(raw) = shared.events_fd() else {
        return;
    };
    // SAFETY: the fd belongs to the ring buffer inside `shared`, which this task keeps alive.
    let fd = match unsafe { AsyncFd::register_with_interest(RingFd(raw), Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            shared
                .state()
                .notes
                .push(format!("cannot poll the lifecycle ring buffer: {e}"));
            return;
        }
    };
    // The kernel wakes this loop only when the ring buffer fills up; otherwise it drains on
    // this timer and before every scrape.
    let mut tick = tokio::time::interval(EVENTS_DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = fd.readable() => match ready {
                Ok(mut guard) => {
                    shared.drain_events();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("lifecycle ring buffer poll failed: {e}");
                    return;
                }
            },
            _ = tick.tick() => {
                shared.drain_events();
            }
        }
    }
}

async fn interval_loop(
    source: Source,
    shared: Arc<Shared>,
    profiler: Option<http::SharedProfiler>,
    every: Duration,
    auto_growth: Option<AutoGrowth>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed = std::time::Instant::now();
    loop {
        tick.tick().await;
        let trim = trimmed.elapsed() >= TRIM_EVERY;
        if trim {
            trimmed = std::time::Instant::now();
        }
        // Map iteration and /proc reads block: off the async workers, so scrapes and
        // /healthz never wait behind them.
        let (m, s) = (source.clone(), shared.clone());
        let work = move || {
            sync_once(&m, &s);
            if trim {
                release_freed_memory();
            }
        };
        if let Err(e) = tokio::task::spawn_blocking(work).await {
            warn!("interval sync failed: {e}");
        }
        if let Some(profiler) = &profiler {
            let leaking = auto_growth.map(|_| auto::leakers(&shared.state()));
            let mut profiler = profiler.lock().await;
            for line in profiler.expire() {
                info!("{line}");
            }
            if let (Some(cfg), Some(leaking)) = (auto_growth, leaking) {
                auto::follow(&mut profiler, &leaking, cfg);
            }
            // Every holder counts: a request's profile taxes the host as much as auto's.
            shared.state().growth_sampled = profiler.sampled();
        }
    }
}

/// One interval: take the kernel's numbers, then look in /proc only where the kernel has not
/// spoken (new pids, unknown members, selection) — never a full scan.
fn sync_once(source: &Source, shared: &Shared) {
    let counters = source.maps.counters();
    shared.current().set_counters(counters, boot_ns());
    let rss_off = if source.rss_events {
        let kernel = source.maps.procs();
        let (adopt, rss_off) = {
            // Events first: a fork must be known before the kernel's entry for it is matched.
            let mut state = shared.current();
            state.kernel_entries = kernel.len() as u64;
            let adopt = state.table.sync_kernel(&kernel);
            (adopt, !state.probe_attached("rss_stat"))
        };
        adopt_unknown(shared, &kernel, adopt);
        rss_off
    } else {
        shared.refresh_now();
        let iter_off = !shared.state().probe_attached(crate::bpf::iter::BREAK_ITER);
        if iter_off {
            adopt_new_from_proc(shared);
        }
        iter_off
    };
    let exit_off = !shared.state().probe_attached("sched_exit");
    evaluate_selection(shared);
    refresh_from_proc(shared, rss_off);
    if exit_off {
        drop_vanished(shared);
    }
    shared.state().assess(boot_ns());
}

fn record_proc_errors(state: &mut AgentState, errors: &[ProcError]) {
    for e in errors {
        match e {
            ProcError::Denied { .. } => state.proc_errors.denied += 1,
            ProcError::Gone(_) | ProcError::KernelThread(_) => {}
            ProcError::Other { .. } => state.proc_errors.other += 1,
        }
    }
}

/// Processes the kernel reports but the table lacks: their fork predates the agent's seed,
/// or its event was lost.
fn adopt_unknown(
    shared: &Shared,
    kernel: &std::collections::HashMap<u32, ProcStats>,
    pids: Vec<u32>,
) {
    let mut errors = Vec::new();
    let mut found = Vec::new();
    for pid in pids.into_iter().take(PROC_READS_PER_INTERVAL) {
        match proc::read(pid) {
            Ok(s) => found.push(s),
            Err(e) => errors.push(e),
        }
    }
    let mut state = shared.state();
    record_proc_errors(&mut state, &errors);
    for s in found {
        let k = kernel.get(&s.pid).copied();
        state.table.adopt(s, k);
    }
}

/// Decides selection (and any `--limit`) for processes that have settled
/// ([`crate::model::table::settled`]), so short-lived forks never cost a /proc read.
fn evaluate_selection(shared: &Shared) {
    let now = boot_ns();
    let (pending, selector, limits) = {
        let state = shared.state();
        let pending: Vec<(u32, String)> = state
            .table
            .iter()
            // No cgroup path: never read, or the process moved to another cgroup since.
            .filter(|p| p.selected.is_none() || p.cgroup_path.is_none())
            .filter(|p| crate::model::table::settled(p.start_ns, now))
            .take(PROC_READS_PER_INTERVAL)
            .map(|p| (p.pid, p.comm.clone()))
            .collect();
        (pending, state.selector.clone(), state.limits.clone())
    };
    let decided: Vec<_> = pending
        .into_iter()
        .map(|(pid, comm)| {
            let (v2, v1, container) = proc::cgroup_paths_and_container(pid);
            let candidate = crate::model::select::ProcCandidate {
                pid,
                comm,
                cgroup: v2.clone(),
            };
            let limit = limits
                .iter()
                .filter(|l| Selector::new(vec![l.matcher.clone()]).selects(&candidate))
                .map(|l| l.bytes)
                .min();
            (pid, selector.selects(&candidate), v2, v1, limit, container)
        })
        .collect();
    let mut state = shared.state();
    for (pid, selected, v2, v1, limit, container) in decided {
        if let Some(p) = state.table.get_mut(pid) {
            p.selected = Some(selected);
            p.cgroup_path = Some(v2.unwrap_or_default());
            p.memcg_v1_path = v1;
            p.configured_limit = limit;
            p.container = container;
        }
    }
}

/// Reads /proc for selected processes whose numbers the kernel has not given yet, or for all
/// selected processes when the rss_stat probe is off.
fn refresh_from_proc(shared: &Shared, rss_probe_off: bool) {
    let pids: Vec<u32> = {
        let state = shared.state();
        state
            .table
            .iter()
            .filter(|p| p.selected == Some(true) && (rss_probe_off || p.needs_seed()))
            .map(|p| p.pid)
            .take(if rss_probe_off {
                usize::MAX
            } else {
                PROC_READS_PER_INTERVAL
            })
            .collect()
    };
    let reads: Vec<_> = pids.into_iter().map(|pid| (pid, proc::read(pid))).collect();
    let mut state = shared.state();
    let mut errors = Vec::new();
    for (pid, r) in reads {
        match r {
            Ok(s) => {
                if let Some(p) = state.table.get_mut(pid)
                    && crate::model::table::same_start(p.start_ns, s.start_ns)
                {
                    p.set_seed(s);
                }
            }
            Err(ProcError::Gone(_)) => {
                state.table.remove(pid);
            }
            Err(e) => errors.push(e),
        }
    }
    record_proc_errors(&mut state, &errors);
}

/// Without the exit probe, a process is gone when its /proc entry is.
fn drop_vanished(shared: &Shared) {
    let pids: Vec<u32> = shared.state().table.iter().map(|p| p.pid).collect();
    let gone: Vec<u32> = pids.into_iter().filter(|pid| !proc::exists(*pid)).collect();
    let mut state = shared.state();
    for pid in gone {
        state.table.remove(pid);
    }
}
