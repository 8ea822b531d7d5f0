//! Prometheus exposition, built from the agent's state at scrape time (as ebpf_exporter does):
//! nothing is kept for processes that have exited, so their series disappear with them.

use leakscope_api::metrics as names;
use monitor_common::{Counter, RssKind};
use prometheus::{
    Encoder, TextEncoder,
    proto::{self, LabelPair, MetricFamily, MetricType},
};

use crate::model::state::{AgentState, Export};

pub const OVERFLOW_LABEL: &str = "overflow";

type Labels<'a> = Vec<(&'a str, String)>;

struct Family<'a> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels<'a>, f64)>,
}

impl<'a> Family<'a> {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels<'a>, value: f64) -> &mut Self {
        self.samples.push((labels, value));
        self
    }

    fn build(self) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name(self.name.to_string());
        mf.set_help(self.help.to_string());
        mf.set_field_type(self.kind);
        for (labels, value) in self.samples {
            let mut m = proto::Metric::default();
            m.set_label(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut lp = LabelPair::default();
                        lp.set_name(k.to_string());
                        lp.set_value(v);
                        lp
                    })
                    .collect(),
            );
            match self.kind {
                MetricType::COUNTER => {
                    let mut c = proto::Counter::default();
                    c.set_value(value);
                    m.set_counter(c);
                }
                _ => {
                    let mut g = proto::Gauge::default();
                    g.set_value(value);
                    m.set_gauge(g);
                }
            }
            mf.mut_metric().push(m);
        }
        mf
    }
}

/// The labels that name one process in every `leakscope_process_*` family. The container
/// and pod labels are always present, empty when unknown (not in a container, not yet read,
/// or a cgroup v1 host where the hierarchies disagree): a family keeps one label set, so
/// `sum without (pid, comm, container_id, pod_uid)` and joins work the same for every series.
fn process_labels(p: &crate::model::table::Process) -> Labels<'static> {
    vec![
        ("pid", p.pid.to_string()),
        ("comm", p.comm.clone()),
        (
            "container_id",
            p.container.container_id.clone().unwrap_or_default(),
        ),
        ("pod_uid", p.container.pod_uid.clone().unwrap_or_default()),
    ]
}

fn gauge(name: &'static str, help: &'static str) -> Family<'static> {
    Family::new(name, help, MetricType::GAUGE)
}

fn counter(name: &'static str, help: &'static str) -> Family<'static> {
    Family::new(name, help, MetricType::COUNTER)
}

/// Every family, built from one export of the table (which processes have series of their
/// own, and the overflow), computed once per scrape and handed to each.
pub fn families(state: &AgentState) -> Vec<MetricFamily> {
    let export = state.export();
    let mut out = process_families(state, &export);
    out.extend(leak_families(&export));
    out.extend(pool_families(state));
    out.extend(self_families(state));
    out.extend(pod_families(state, &export));
    out.extend(docker_families(state, &export));
    out.push(unit_family(&export));
    out.extend(crate::tasks::metrics::families(state));
    out.extend(crate::threads::families(state, &export.own));
    out
}

/// `leakscope_pod_info{pod_uid, pod_namespace, pod_name} 1` for the pods of processes with
/// series of their own, when the Kubernetes API named them (kube.rs): join on `pod_uid`.
fn pod_families(state: &AgentState, export: &Export<'_>) -> Vec<MetricFamily> {
    let mut info = gauge(
        names::POD_INFO,
        "Name and namespace of a pod whose processes have series (from the Kubernetes API).",
    );
    let uids: std::collections::BTreeSet<&str> = export
        .own
        .iter()
        .filter_map(|p| p.container.pod_uid.as_deref())
        .collect();
    for uid in uids {
        if let Some(pod) = state.pods.get(uid) {
            info.push(
                vec![
                    ("pod_uid", uid.to_string()),
                    ("pod_namespace", pod.namespace),
                    ("pod_name", pod.name),
                ],
                1.0,
            );
        }
    }
    vec![info.build()]
}

/// `leakscope_container_info{container_id, container_name, image, compose_project,
/// compose_service} 1` for the Docker containers of processes with series of their own, when
/// the Docker daemon named them (docker.rs): join on `container_id`. The names stay off the
/// process series. Also how the lists of the daemon went, present from start-up.
fn docker_families(state: &AgentState, export: &Export<'_>) -> Vec<MetricFamily> {
    use crate::host::docker::{self, Lookup};

    let mut info = gauge(
        names::CONTAINER_INFO,
        "Name, image and Compose project and service of a Docker container whose processes \
         have series (from the Docker daemon).",
    );
    let ids: std::collections::BTreeSet<&str> = export
        .own
        .iter()
        .filter_map(|p| docker::container_id(&p.container))
        .collect();
    for id in ids {
        if let Some(c) = state.containers.get(id) {
            info.push(
                vec![
                    ("container_id", id.to_string()),
                    ("container_name", c.name),
                    ("image", c.image),
                    ("compose_project", c.compose_project.unwrap_or_default()),
                    ("compose_service", c.compose_service.unwrap_or_default()),
                ],
                1.0,
            );
        }
    }
    let mut lookups = counter(
        names::DOCKER_LOOKUPS_TOTAL,
        "Lists of the Docker daemon's containers, by result (no_socket: no daemon).",
    );
    for result in Lookup::ALL {
        lookups.push(
            vec![("result", result.as_str().into())],
            state.containers.lookups(result) as f64,
        );
    }
    let mut dropped = counter(
        names::DOCKER_CONTAINERS_DROPPED_TOTAL,
        "Containers left out of a Docker list because the name cache was full.",
    );
    dropped.push(vec![], state.containers.dropped() as f64);
    vec![info.build(), lookups.build(), dropped.build()]
}

/// `leakscope_process_unit_info{pid, comm, unit} 1` for processes with series of their own
/// that run in a systemd unit: join on `pid` (`* on (pid) group_left (unit)`). The unit is a
/// label of its own series, not of every process series, so adding it costs one series per
/// process rather than a label on each of the hot ones.
fn unit_family(export: &Export<'_>) -> MetricFamily {
    let mut info = gauge(
        names::PROCESS_UNIT_INFO,
        "systemd unit (service or scope) of a process with series, from its cgroup path.",
    );
    for p in &export.own {
        if let Some(unit) = &p.container.unit {
            info.push(
                vec![
                    ("pid", p.pid.to_string()),
                    ("comm", p.comm.clone()),
                    ("unit", unit.clone()),
                ],
                1.0,
            );
        }
    }
    info.build()
}

fn leak_families(export: &Export<'_>) -> Vec<MetricFamily> {
    let mut rate = gauge(
        names::PROCESS_RSS_GROWTH_BYTES_PER_SECOND,
        "Robust (Theil-Sen) growth rate of resident memory over the detector's window.",
    );
    let mut suspected = gauge(
        names::PROCESS_LEAK_SUSPECTED,
        "1 when the detector's verdict is `leaking` (growth that holds, with a rising floor).",
    );
    let mut confidence = gauge(
        names::PROCESS_LEAK_CONFIDENCE,
        "Confidence in the detector's verdict, 0 to 1.",
    );
    let mut ttl = gauge(
        names::PROCESS_TIME_TO_LIMIT_SECONDS,
        "Seconds until the nearest memory limit at the current growth rate (only while growing).",
    );
    let mut limit = gauge(
        names::PROCESS_MEMORY_LIMIT_BYTES,
        "The nearest memory limit: the cgroup's or one given with --limit.",
    );
    for p in &export.own {
        let Some(leak) = &p.leak else { continue };
        let id = || process_labels(p);
        let a = &leak.assessment;
        rate.push(id(), a.rate_bytes_per_sec);
        suspected.push(
            id(),
            f64::from(u8::from(
                a.verdict == crate::model::detector::Verdict::Leaking,
            )),
        );
        confidence.push(id(), a.confidence);
        if let Some(t) = leak.time_to_limit_secs {
            ttl.push(id(), t);
        }
        if let Some(l) = leak.limit {
            let mut labels = id();
            labels.push(("source", l.source.label().to_string()));
            limit.push(labels, l.limit_bytes as f64);
        }
    }
    vec![
        rate.build(),
        suspected.build(),
        confidence.build(),
        ttl.build(),
        limit.build(),
    ]
}

fn pool_families(state: &AgentState) -> Vec<MetricFamily> {
    let mut recycles = counter(
        names::POOL_RECYCLES_TOTAL,
        "Children of a worker pool that exited while the pool lived on, by reason.",
    );
    let mut suspected = gauge(
        names::POOL_LEAK_SUSPECTED,
        "1 when a pool's children keep growing before they are recycled, or are recycled for memory.",
    );
    let mut children = gauge(names::POOL_CHILDREN, "Live children of a worker pool.");
    let mut resident = gauge(
        names::POOL_RESIDENT_BYTES,
        "Resident bytes of a worker pool's live children, and of its parent on its own.",
    );
    let mut time_to_limit = gauge(
        names::POOL_TIME_TO_LIMIT_SECONDS,
        "Seconds until a growing pool's children and parent together reach their cgroup's limit.",
    );
    for pool in state.pools.iter() {
        let name = || vec![("pool", pool.pool.clone())];
        for reason in crate::model::pools::RecycleReason::ALL {
            let mut l = name();
            l.push(("reason", reason.label().to_string()));
            recycles.push(
                l,
                pool.recycles_by_reason.get(&reason).copied().unwrap_or(0) as f64,
            );
        }
        suspected.push(name(), f64::from(u8::from(pool.leak_suspected)));
        children.push(name(), pool.children() as f64);
        if let Some(live) = &pool.live {
            let parent = live.parent.as_ref().map_or(0, |p| p.resident_bytes);
            for (member, bytes) in [("children", live.children_bytes), ("parent", parent)] {
                let mut l = name();
                l.push(("member", member.to_string()));
                resident.push(l, bytes as f64);
            }
            if let Some(secs) = live.time_to_limit_secs {
                time_to_limit.push(name(), secs);
            }
        }
    }
    let mut ooms = counter(
        names::OOM_KILLS_TOTAL,
        "Processes the kernel's OOM killer chose (oom:mark_victim), by name, pool and cgroup.",
    );
    for (v, n) in state.ooms.counts() {
        ooms.push(
            vec![
                ("comm", v.comm.clone()),
                ("pool", v.pool.clone()),
                ("cgroup", v.cgroup.clone()),
            ],
            n as f64,
        );
    }
    vec![
        recycles.build(),
        suspected.build(),
        children.build(),
        resident.build(),
        time_to_limit.build(),
        ooms.build(),
    ]
}

fn process_families(state: &AgentState, export: &Export<'_>) -> Vec<MetricFamily> {
    let mut rss = gauge(
        names::PROCESS_RSS_BYTES,
        "Resident memory of a process by kind, from the kernel's own counters (kmem:rss_stat).",
    );
    let mut peak = gauge(
        names::PROCESS_PEAK_RSS_BYTES,
        "Highest resident memory (file+anon+shmem) of the process's current address space.",
    );
    for p in &export.own {
        let id = || process_labels(p);
        for k in RssKind::ALL {
            let mut l = id();
            l.push(("kind", k.label().to_string()));
            rss.push(l, p.rss(k).0 as f64);
        }
        peak.push(id(), p.peak_bytes() as f64);
    }
    if export.overflow.processes > 0 {
        for k in RssKind::ALL {
            rss.push(
                vec![
                    ("pid", OVERFLOW_LABEL.into()),
                    ("comm", OVERFLOW_LABEL.into()),
                    // Summed across processes: no single container or pod.
                    ("container_id", String::new()),
                    ("pod_uid", String::new()),
                    ("kind", k.label().into()),
                ],
                export.overflow.rss[k as usize] as f64,
            );
        }
    }
    let mut tracked = gauge(
        names::PROCESSES_TRACKED,
        "Processes in the agent's table (every process with memory of its own).",
    );
    tracked.push(vec![], state.table.len() as f64);
    let mut overflow = gauge(
        names::PROCESSES_OVERFLOW,
        "Selected processes beyond --max-processes, summed into the pid=\"overflow\" series.",
    );
    overflow.push(vec![], export.overflow.processes as f64);
    vec![rss.build(), peak.build(), tracked.build(), overflow.build()]
}

fn self_families(state: &AgentState) -> Vec<MetricFamily> {
    let c = |x| state.counter(x) as f64;
    let probe = |name: &str| vec![("probe", name.to_string())];
    let lost = |name: &str, reason: &str| {
        vec![("probe", name.to_string()), ("reason", reason.to_string())]
    };

    let mut attached = gauge(
        names::PROBE_ATTACHED,
        "1 when the probe is attached, 0 when the kernel refused it (see /healthz for why).",
    );
    for p in &state.probes {
        attached.push(probe(p.name), f64::from(u8::from(p.attached)));
    }
    let mut events = counter(
        names::PROBE_EVENTS_TOTAL,
        "Events handled by each probe in the kernel.",
    );
    events
        .push(probe("rss_stat"), c(Counter::RssEvents))
        .push(probe("sched_newtask"), c(Counter::ForkEvents))
        .push(probe("sched_exec"), c(Counter::ExecEvents))
        .push(probe("sched_exit"), c(Counter::ExitEvents))
        .push(probe("oom_mark_victim"), c(Counter::OomEvents))
        .push(probe(crate::threads::PROBE_NAME), c(Counter::MemSyscalls));
    let mut lost_f = counter(
        names::PROBE_EVENTS_LOST_TOTAL,
        "Events a probe could not record, by reason.",
    );
    lost_f
        .push(lost("rss_stat", "read_failed"), c(Counter::ReadFailed))
        .push(
            lost("rss_stat", "map_full"),
            c(Counter::ProcInsertFailed) + c(Counter::MmInsertFailed),
        )
        .push(
            lost("lifecycle", "ring_buffer_full"),
            c(Counter::EventsDropped),
        )
        .push(lost("threads", "map_full"), c(Counter::ThreadInsertFailed));
    let mut ignored = counter(
        names::RSS_EVENTS_IGNORED_TOTAL,
        "rss_stat events that belong to no tracked address space (fork copies, exit teardown, \
         the old mm of an exec).",
    );
    ignored
        .push(
            vec![("reason", "unowned_mm".into())],
            c(Counter::RssUnowned),
        )
        .push(
            vec![("reason", "replaced_mm".into())],
            c(Counter::RssStaleMm),
        );
    let mut entries = gauge(
        names::KERNEL_MAP_ENTRIES,
        "Entries in the kernel's per-process (procs) and per-thread (threads) maps.",
    );
    entries.push(vec![("map", "procs".into())], state.kernel_entries as f64);
    entries.push(
        vec![("map", "threads".into())],
        crate::threads::Threads::of(state).entries as f64,
    );
    let mut sampled = gauge(
        names::GROWTH_SAMPLED_PROCESSES,
        "Processes whose growth stacks are being sampled, for a profile request or --auto-growth.",
    );
    sampled.push(vec![], state.growth_sampled.len() as f64);
    let mut evictions = counter(
        names::KERNEL_MAP_EVICTIONS_TOTAL,
        "Entries the kernel's LRU maps (procs, threads) evicted to make room.",
    );
    evictions.push(
        vec![("map", "procs".into())],
        state.kernel_evictions() as f64,
    );
    evictions.push(
        vec![("map", "threads".into())],
        crate::threads::Threads::of(state).evictions(state) as f64,
    );
    let mut proc_errors = counter(
        names::PROC_READ_ERRORS_TOTAL,
        "Failed reads of /proc/<pid> other than a process exiting mid-read.",
    );
    proc_errors
        .push(
            vec![("reason", "permission_denied".into())],
            state.proc_errors.denied as f64,
        )
        .push(
            vec![("reason", "other".into())],
            state.proc_errors.other as f64,
        );
    let mut degraded = gauge(
        names::AGENT_DEGRADED,
        "1 when a probe is off or the agent lacks something it needs; /healthz says what.",
    );
    degraded.push(vec![], f64::from(u8::from(state.health().degraded)));
    let mut build = gauge(names::BUILD_INFO, "Build of the running agent.");
    build.push(
        vec![
            ("version", env!("CARGO_PKG_VERSION").into()),
            ("kernel", kernel_release()),
        ],
        1.0,
    );
    vec![
        attached.build(),
        events.build(),
        lost_f.build(),
        ignored.build(),
        entries.build(),
        sampled.build(),
        evictions.build(),
        proc_errors.build(),
        degraded.build(),
        build.build(),
    ]
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The exposition of `state`, with the families of whoever serves it (`extra`: the HTTP
/// server's own).
pub fn render(state: &AgentState, extra: Vec<MetricFamily>) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    // The text format has no way to say "a family with no series"; leave such families out.
    let families: Vec<_> = families(state)
        .into_iter()
        .chain(extra)
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    TextEncoder::new().encode(&families, &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::proc::ProcSnapshot;

    const MIB: u64 = 1 << 20;

    fn state_with(sizes: &[(u32, &str, u64)], cap: usize) -> AgentState {
        let mut state = AgentState::new(crate::model::state::Settings {
            max_processes: cap,
            ..Default::default()
        });
        state
            .table
            .seed(sizes.iter().map(|(pid, comm, anon)| ProcSnapshot {
                pid: *pid,
                ppid: 1,
                comm: (*comm).into(),
                start_ns: 1,
                rss: [MIB, *anon, 0, 0],
                peak_bytes: MIB + anon,
            }));
        for p in state.table.iter_mut() {
            p.selected = Some(true);
        }
        state
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn processes_render_by_kind_with_units() {
        let text = render(&state_with(&[(10, "celery", 64 * MIB)], 10), Vec::new()).unwrap();
        assert_eq!(
            line(
                &text,
                "leakscope_process_rss_bytes{pid=\"10\",comm=\"celery\",container_id=\"\",pod_uid=\"\",kind=\"anon\"}"
            ),
            Some(
                "leakscope_process_rss_bytes{pid=\"10\",comm=\"celery\",container_id=\"\",pod_uid=\"\",kind=\"anon\"} 67108864"
            )
        );
        assert!(text.contains("# TYPE leakscope_process_rss_bytes gauge"));
        assert!(text.contains("# TYPE leakscope_probe_events_total counter"));
        assert!(line(&text, "leakscope_processes_tracked 1").is_some());
        assert!(line(&text, "leakscope_processes_overflow 0").is_some());
        assert!(
            !text.contains("leakscope_process_rss_bytes{pid=\"overflow\""),
            "no overflow series below the cap"
        );
    }

    #[test]
    fn cap_sums_the_rest_into_one_overflow_series() {
        let state = state_with(
            &[(1, "a", 10 * MIB), (2, "b", 30 * MIB), (3, "c", 20 * MIB)],
            1,
        );
        let text = render(&state, Vec::new()).unwrap();
        assert!(text.contains("pid=\"2\""));
        assert!(!text.contains("pid=\"1\",") && !text.contains("pid=\"3\","));
        let overflow = line(
            &text,
            "leakscope_process_rss_bytes{pid=\"overflow\",comm=\"overflow\",container_id=\"\",pod_uid=\"\",kind=\"anon\"}",
        )
        .unwrap();
        assert!(overflow.ends_with(&format!(" {}", 30 * MIB)), "{overflow}");
        assert!(line(&text, "leakscope_processes_overflow 2").is_some());
    }

    #[test]
    fn empty_table_still_renders_self_metrics() {
        let mut state = state_with(&[], 10);
        state.probes.push(crate::bpf::probes::ProbeStatus {
            name: "rss_stat",
            tracepoint: "kmem:rss_stat".into(),
            attached: true,
            error: None,
            fallback: "",
        });
        let text = render(&state, crate::http::web::metric_families()).unwrap();
        assert!(!text.contains("leakscope_process_rss_bytes"));
        assert!(line(&text, "leakscope_agent_degraded 0").is_some());
        assert!(text.contains("leakscope_build_info{version="));
        for name in names::ALL
            .iter()
            .filter(|n| !n.starts_with("leakscope_process_") && !n.starts_with("leakscope_pool_"))
            .filter(|n| **n != "leakscope_oom_kills_total")
            // Series per task name or thread exist once there are some.
            .filter(|n| !n.starts_with("leakscope_task_") || n.ends_with("abandoned_total"))
            .filter(|n| !n.starts_with("leakscope_thread_") || n.ends_with("refused_total"))
            // Only with pods named by the Kubernetes API.
            .filter(|n| **n != "leakscope_pod_info" && **n != "leakscope_container_info")
        {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }

    #[test]
    fn the_api_crate_lists_exactly_the_families_the_agent_builds() {
        // families() builds every family, with series or not: its names are all the agent
        // can export, and leakscope_api's list is what dashboards and alerts are checked against.
        let built: std::collections::BTreeSet<String> = families(&state_with(&[], 10))
            .iter()
            .chain(&crate::http::web::metric_families())
            .map(|f| f.name().to_string())
            .collect();
        let listed = names::ALL.iter().map(|n| n.to_string()).collect();
        assert_eq!(built, listed);
    }

    #[test]
    fn unselected_processes_have_no_series() {
        let mut state = state_with(&[(5, "redis", MIB)], 10);
        for p in state.table.iter_mut() {
            p.selected = Some(false);
        }
        let text = render(&state, Vec::new()).unwrap();
        assert!(!text.contains("pid=\"5\""));
        assert!(line(&text, "leakscope_processes_tracked 1").is_some());
    }

    const CID: &str = "4c5d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678ab";
    const UID: &str = "1b3e5f7a-9c2d-4e6f-8a0b-c1d2e3f4a5b6";

    /// Label names of one exposition line, in order.
    fn label_names(l: &str) -> Vec<String> {
        let inner = l
            .split_once('{')
            .and_then(|(_, r)| r.rsplit_once('}'))
            .map_or("", |(i, _)| i);
        inner
            .split("\",")
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
            .collect()
    }

    #[test]
    fn process_series_carry_container_and_pod_labels() {
        // pid 10 in a containerd pod, pid 11 on the host, pid 12 beyond the cap (overflow).
        let mut state = state_with(
            &[
                (10, "gunicorn", 64 * MIB),
                (11, "cron", 32 * MIB),
                (12, "sh", 1),
            ],
            2,
        );
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
             cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        state.table.get_mut(10).unwrap().container =
            crate::host::container::from_cgroup_path(&path);
        state.assess(crate::model::state::boot_ns());
        let text = render(&state, Vec::new()).unwrap();
        assert!(
            !text.contains("leakscope_pod_info"),
            "no pod names outside a cluster"
        );
        state.pods.replace(
            [(
                UID.to_string(),
                crate::host::kube::PodName {
                    namespace: "shop".into(),
                    name: "web-1".into(),
                },
            )]
            .into(),
        );
        let text = render(&state, Vec::new()).unwrap();
        assert!(
            line(
                &text,
                &format!(
                    "leakscope_pod_info{{pod_uid=\"{UID}\",pod_namespace=\"shop\",pod_name=\"web-1\"}} 1"
                )
            )
            .is_some(),
            "{text}"
        );

        let in_pod =
            format!("{{pid=\"10\",comm=\"gunicorn\",container_id=\"{CID}\",pod_uid=\"{UID}\"");
        let on_host = "{pid=\"11\",comm=\"cron\",container_id=\"\",pod_uid=\"\"";
        for family in [
            "leakscope_process_rss_bytes",
            "leakscope_process_peak_rss_bytes",
            "leakscope_process_rss_growth_bytes_per_second",
            "leakscope_process_leak_suspected",
            "leakscope_process_leak_confidence",
        ] {
            assert!(
                line(&text, &format!("{family}{in_pod}")).is_some(),
                "{family} lacks the pod's labels:\n{text}"
            );
            assert!(
                line(&text, &format!("{family}{on_host}")).is_some(),
                "{family} lacks empty container labels:\n{text}"
            );
        }
        assert!(
            text.contains("{pid=\"overflow\",comm=\"overflow\",container_id=\"\",pod_uid=\"\""),
            "{text}"
        );
        // Within a family every series has the same label names.
        let mut seen: std::collections::HashMap<&str, Vec<String>> = Default::default();
        for l in text.lines().filter(|l| l.starts_with("leakscope_process_")) {
            let name = l.split(['{', ' ']).next().unwrap();
            let names = label_names(l);
            let first = seen.entry(name).or_insert_with(|| names.clone());
            assert_eq!(*first, names, "{l}");
        }
        assert!(seen.len() >= 5, "{seen:?}");
    }

    #[test]
    fn units_are_an_info_series_joined_on_pid() {
        let mut state = state_with(
            &[
                (10, "celery", 64 * MIB),
                (11, "python3", 32 * MIB),
                (12, "sh", MIB),
            ],
            2,
        );
        let set = |state: &mut AgentState, pid, path: &str| {
            state.table.get_mut(pid).unwrap().container =
                crate::host::container::from_cgroup_path(path);
        };
        set(&mut state, 10, "/system.slice/celery-worker.service");
        set(&mut state, 11, &format!("/system.slice/docker-{CID}.scope"));
        // Beyond --max-processes: summed into the overflow, so no info series either.
        set(&mut state, 12, "/system.slice/cron.service");
        let text = render(&state, Vec::new()).unwrap();
        let units: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("leakscope_process_unit_info"))
            .collect();
        assert_eq!(
            units,
            [
                "leakscope_process_unit_info{pid=\"10\",comm=\"celery\",unit=\"celery-worker.service\"} 1"
            ],
            "{text}"
        );
        // The hot series keep their labels.
        assert!(
            text.lines()
                .filter(|l| l.starts_with("leakscope_process_rss_bytes{"))
                .all(|l| !l.contains("unit=")),
            "{text}"
        );
    }

    #[test]
    fn docker_names_are_an_info_series_joined_on_container_id() {
        let mut state = state_with(&[(10, "worker", 64 * MIB), (11, "sh", MIB)], 1);
        let text = render(&state, Vec::new()).unwrap();
        assert!(!text.contains("leakscope_container_info{"), "{text}");
        for result in ["ok", "no_socket", "error"] {
            assert!(
                line(
                    &text,
                    &format!("leakscope_docker_lookups_total{{result=\"{result}\"}} 0")
                )
                .is_some(),
                "{text}"
            );
        }
        for pid in [10, 11] {
            state.table.get_mut(pid).unwrap().container =
                crate::host::container::from_cgroup_path(&format!("/docker/{CID}"));
        }
        state.containers.replace(vec![(
            CID.to_string(),
            crate::host::docker::ContainerName {
                name: "shop-worker-1".into(),
                image: "shop/worker:1".into(),
                compose_project: Some("shop".into()),
                compose_service: Some("worker".into()),
            },
        )]);
        let text = render(&state, Vec::new()).unwrap();
        let info: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("leakscope_container_info{"))
            .collect();
        assert_eq!(
            info,
            [format!(
                "leakscope_container_info{{container_id=\"{CID}\",container_name=\"shop-worker-1\",\
                 image=\"shop/worker:1\",compose_project=\"shop\",compose_service=\"worker\"}} 1"
            )],
            "one series per container, not per process: {text}"
        );
        // The hot series carry only the id.
        assert!(
            text.lines()
                .filter(|l| l.starts_with("leakscope_process_"))
                .all(|l| !l.contains("shop")),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped_not_trusted() {
        // comm is chosen by the process (prctl PR_SET_NAME): quotes and backslashes must not
        // break the exposition.
        let state = state_with(&[(7, "a\"b\\c", MIB)], 10);
        let text = render(&state, Vec::new()).unwrap();
        assert!(
            text.contains("comm=\"a\\\"b\\\\c\",container_id=\"\""),
            "{text}"
        );
    }
}
