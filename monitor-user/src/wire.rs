//! The agent's own types as the API's wire types ([`leakscope_api`]). The handlers build their
//! responses through these conversions, so what is served is what that crate defines, and its
//! clients (xtask, the integration tests) read it back with the same types.
//!
//! It names only the types it converts, never the state or the handlers that use it, so it
//! adds no cycle between modules; the task types convert in `tasks::api`, beside their view.

use leakscope_api as api;
use monitor_common::RssKind;

use crate::{
    host::container::{QosClass, Runtime},
    host::docker::ContainerName,
    host::kube::PodName,
    model::detector::{Assessment, Verdict},
    model::limits::LimitSource,
    model::oom::OomRecord,
    model::pools::{ExitRecord, Live, Member, Pool, RecycleReason},
    model::state::AgentState,
    model::table::Process,
    model::table::Source,
    threads::ThreadView,
    threads::Threads,
};

impl From<Source> for api::Source {
    fn from(s: Source) -> Self {
        match s {
            Source::Kernel => Self::Kernel,
            Source::Proc => Self::Proc,
            Source::Unknown => Self::Unknown,
        }
    }
}

impl From<Runtime> for api::Runtime {
    fn from(r: Runtime) -> Self {
        match r {
            Runtime::Containerd => Self::Containerd,
            Runtime::CriO => Self::CriO,
            Runtime::Docker => Self::Docker,
            Runtime::Podman => Self::Podman,
            Runtime::Unknown => Self::Unknown,
        }
    }
}

impl From<QosClass> for api::QosClass {
    fn from(q: QosClass) -> Self {
        match q {
            QosClass::Guaranteed => Self::Guaranteed,
            QosClass::Burstable => Self::Burstable,
            QosClass::BestEffort => Self::BestEffort,
        }
    }
}

impl From<PodName> for api::PodName {
    fn from(p: PodName) -> Self {
        Self {
            namespace: p.namespace,
            name: p.name,
        }
    }
}

impl From<ContainerName> for api::processes::ContainerName {
    fn from(c: ContainerName) -> Self {
        Self {
            name: c.name,
            image: c.image,
            compose_project: c.compose_project,
            compose_service: c.compose_service,
        }
    }
}

impl From<LimitSource> for api::LimitSource {
    fn from(s: LimitSource) -> Self {
        match s {
            LimitSource::Cgroup => Self::Cgroup,
            LimitSource::Configured => Self::Configured,
        }
    }
}

impl From<Verdict> for api::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Stable => Self::Stable,
            Verdict::Growing => Self::Growing,
            Verdict::Leaking => Self::Leaking,
        }
    }
}

impl From<&Assessment> for api::Assessment {
    fn from(a: &Assessment) -> Self {
        Self {
            verdict: a.verdict.into(),
            confidence: a.confidence,
            rate_bytes_per_sec: a.rate_bytes_per_sec,
            window_secs: a.window_secs,
            floor_rise_bytes: a.floor_rise_bytes,
            consistency: a.consistency,
            samples: a.samples as u64,
        }
    }
}

impl From<&ThreadView> for api::ThreadGrowth {
    fn from(t: &ThreadView) -> Self {
        Self {
            tid: t.tid,
            comm: t.comm.clone(),
            rss_growth_bytes: t.rss_growth_bytes,
            rss_added_bytes: t.rss_added_bytes,
            rss_removed_bytes: t.rss_removed_bytes,
            mapped_growth_bytes: t.mapped_growth_bytes,
            mapped_bytes: t.mapped_bytes,
            unmapped_bytes: t.unmapped_bytes,
            alive: t.alive,
        }
    }
}

impl From<RecycleReason> for api::RecycleReason {
    fn from(r: RecycleReason) -> Self {
        match r {
            RecycleReason::Memory => Self::Memory,
            RecycleReason::Oom => Self::Oom,
            RecycleReason::Crash => Self::Crash,
            RecycleReason::Clean => Self::Clean,
        }
    }
}

impl From<&ExitRecord> for api::PoolExit {
    fn from(e: &ExitRecord) -> Self {
        Self {
            pid: e.pid,
            lifetime_secs: e.lifetime_secs,
            resident_bytes: e.resident_bytes,
            peak_bytes: e.peak_bytes,
            first_sample_bytes: e.first_sample_bytes,
            reason: e.reason.into(),
            unix_time: e.unix_time,
        }
    }
}

impl From<&Pool> for api::Pool {
    fn from(p: &Pool) -> Self {
        let live = p.live.as_ref();
        let limit = live.and_then(|l| l.limit);
        Self {
            pool: p.pool.clone(),
            parent_pid: p.parent_pid,
            comm: p.comm.clone(),
            recycles: p.recycles,
            recycles_by_reason: p
                .recycles_by_reason
                .iter()
                .map(|(r, n)| ((*r).into(), *n))
                .collect(),
            recycles_for_memory: p.recycles_for_memory,
            leak_suspected: p.leak_suspected,
            evidence: p.evidence.clone(),
            exits: p.exits.iter().map(Into::into).collect(),
            children: p.children() as u64,
            children_bytes: live.map_or(0, |l| l.children_bytes),
            members: live
                .iter()
                .flat_map(|l| &l.members)
                .map(Into::into)
                .collect(),
            parent: live.and_then(|l| l.parent.as_ref()).map(Into::into),
            total_bytes: live.map_or(0, Live::total_bytes),
            growth_bytes_per_second: live.map_or(0.0, |l| l.total_assessment.rate_bytes_per_sec),
            memory_limit_bytes: limit.map(|l| l.limit_bytes),
            memory_limit_source: limit.map(|l| l.source.into()),
            time_to_limit_seconds: live.and_then(|l| l.time_to_limit_secs),
            thrash: p.thrash.clone(),
        }
    }
}

impl From<&Member> for api::PoolMember {
    fn from(m: &Member) -> Self {
        Self {
            pid: m.pid,
            resident_bytes: m.resident_bytes,
            verdict: m.verdict.map(Into::into),
            growth_bytes_per_second: m.rate_bytes_per_sec,
        }
    }
}

impl From<&OomRecord> for api::OomKill {
    fn from(r: &OomRecord) -> Self {
        Self {
            pid: r.pid,
            victim: api::OomVictim {
                comm: r.victim.comm.clone(),
                pool: r.victim.pool.clone(),
                cgroup: r.victim.cgroup.clone(),
            },
            anon_bytes: r.anon_bytes,
            file_bytes: r.file_bytes,
            shmem_bytes: r.shmem_bytes,
            unix_time: r.unix_time,
        }
    }
}

/// The agent's types still derive `Serialize` as they did when they were served directly:
/// each conversion must give the same JSON, so no client sees a difference.
/// A selected process as `/api/v1/processes` serves it.
pub fn process(state: &AgentState, p: &Process, own_series: bool) -> api::Process {
    let kind = |k: RssKind| p.rss(k).0;
    let source = |k: RssKind| p.rss(k).1.into();
    let limit = p.leak.as_ref().and_then(|l| l.limit);
    api::Process {
        pid: p.pid,
        ppid: p.ppid,
        comm: p.comm.clone(),
        start_time_seconds: state.unix_seconds(p.start_ns),
        cgroup_id: p.cgroup_id,
        cgroup: p.cgroup_path.clone(),
        runtime: p.container.runtime.into(),
        container_id: p.container.container_id.clone(),
        container: crate::host::docker::container_id(&p.container)
            .and_then(|id| state.containers.get(id))
            .map(Into::into),
        pod_uid: p.container.pod_uid.clone(),
        pod: p
            .container
            .pod_uid
            .as_deref()
            .and_then(|uid| state.pods.get(uid))
            .map(Into::into),
        qos: p.container.qos.map(Into::into),
        unit: p.container.unit.clone(),
        rss_bytes: api::RssBytes {
            anon: kind(RssKind::Anon),
            file: kind(RssKind::File),
            shmem: kind(RssKind::Shmem),
            swap: kind(RssKind::Swap),
        },
        resident_bytes: p.resident_bytes(),
        peak_rss_bytes: p.peak_bytes(),
        rss_error_bytes: p.rss_exact.map(|exact| {
            if exact {
                0
            } else {
                crate::bpf::iter::count_error_bytes()
            }
        }),
        leak: p.leak.as_ref().map(|l| (&l.assessment).into()),
        memory_limit_bytes: limit.map(|l| l.limit_bytes),
        memory_limit_source: limit.map(|l| l.source.into()),
        time_to_limit_seconds: p.leak.as_ref().and_then(|l| l.time_to_limit_secs),
        pool: state.pools.name_of(p.ppid, &p.comm).map(str::to_string),
        source: api::RssSources {
            anon: source(RssKind::Anon),
            file: source(RssKind::File),
            shmem: source(RssKind::Shmem),
            swap: source(RssKind::Swap),
        },
        series: if own_series {
            api::Series::Own
        } else {
            api::Series::Overflow
        },
        threads: Threads::of(state)
            .top_of(p.pid)
            .map(|top| top.iter().map(Into::into).collect()),
        threads_mapped_off: Threads::of(state).mapped_off.get(&p.pid).cloned(),
        growth_sampled: state.growth_sampled.contains(&p.pid),
    }
}

/// A selected process's RSS history as `/api/v1/processes/{pid}/history` serves it: the
/// detector's own points (at most its `max_samples`), never a second record.
pub fn history(state: &AgentState, p: &Process) -> api::HistoryResponse {
    // The history keeps boot-clock seconds, as the kernel stamps its samples.
    let offset = state.boot_to_unix_ns as f64 / 1e9;
    let history = p.leak.as_ref().map(|l| l.history());
    let floors: Vec<api::HistoryFloor> = history
        .map(|h| h.floors(&state.detector))
        .unwrap_or_default()
        .into_iter()
        .map(|f| api::HistoryFloor {
            start_unix_time_seconds: f.t_start - offset,
            end_unix_time_seconds: f.t_end - offset,
            floor_bytes: f.bytes,
        })
        .collect();
    api::HistoryResponse {
        pid: p.pid,
        comm: p.comm.clone(),
        start_time_seconds: state.unix_seconds(p.start_ns),
        points: history
            .into_iter()
            .flat_map(|h| h.points())
            .map(|pt| api::HistoryPoint {
                unix_time_seconds: pt.t - offset,
                resident_bytes: pt.mean_bytes.round() as u64,
                min_resident_bytes: pt.min_bytes,
                samples: pt.samples,
            })
            .collect(),
        // The rate is fitted exactly when there are floors: both need a history long enough
        // for a verdict.
        rate_bytes_per_sec: p
            .leak
            .as_ref()
            .filter(|_| !floors.is_empty())
            .map(|l| l.assessment.rate_bytes_per_sec),
        floors,
        verdict: p.leak.as_ref().map(|l| l.assessment.verdict.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde_json::to_value;

    use super::*;
    use crate::model::oom::Victim;

    fn same<A: Serialize, B: Serialize>(agent: &A, wire: &B) {
        assert_eq!(to_value(agent).unwrap(), to_value(wire).unwrap());
    }

    #[test]
    fn enums_keep_their_names() {
        for s in [Source::Kernel, Source::Proc, Source::Unknown] {
            same(&s, &api::Source::from(s));
        }
        for r in [
            Runtime::Containerd,
            Runtime::CriO,
            Runtime::Docker,
            Runtime::Podman,
            Runtime::Unknown,
        ] {
            same(&r, &api::Runtime::from(r));
        }
        for q in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            same(&q, &api::QosClass::from(q));
        }
        for l in [LimitSource::Cgroup, LimitSource::Configured] {
            same(&l, &api::LimitSource::from(l));
        }
        for v in [Verdict::Stable, Verdict::Growing, Verdict::Leaking] {
            same(&v, &api::Verdict::from(v));
        }
        for r in RecycleReason::ALL {
            same(&r, &api::RecycleReason::from(r));
        }
    }

    #[test]
    fn process_parts_keep_their_shape() {
        let a = Assessment {
            verdict: Verdict::Leaking,
            confidence: 0.9,
            rate_bytes_per_sec: 1e5,
            window_secs: 180.0,
            floor_rise_bytes: 2e7,
            consistency: 1.0,
            samples: 180,
        };
        same(&a, &api::Assessment::from(&a));
        let t = ThreadView {
            tid: 7,
            comm: "worker".into(),
            rss_growth_bytes: -4,
            rss_added_bytes: 1,
            rss_removed_bytes: 5,
            mapped_growth_bytes: 8,
            mapped_bytes: 8,
            unmapped_bytes: 0,
            alive: true,
        };
        same(&t, &api::ThreadGrowth::from(&t));
        let pod = PodName {
            namespace: "shop".into(),
            name: "web-1".into(),
        };
        same(&pod, &api::PodName::from(pod.clone()));
        let container = ContainerName {
            name: "shop-worker-1".into(),
            image: "shop/worker:1".into(),
            compose_project: Some("shop".into()),
            compose_service: None,
        };
        same(
            &container,
            &api::processes::ContainerName::from(container.clone()),
        );
    }

    #[test]
    fn pools_and_oom_kills_keep_their_shape() {
        let exit = ExitRecord {
            pid: 11,
            lifetime_secs: 61.5,
            resident_bytes: 1 << 20,
            peak_bytes: 2 << 20,
            first_sample_bytes: None,
            reason: RecycleReason::Oom,
            unix_time: 1.7e9,
        };
        let pool = Pool {
            pool: "10/celery".into(),
            parent_pid: 10,
            comm: "celery".into(),
            recycles: 1,
            recycles_by_reason: RecycleReason::ALL
                .iter()
                .map(|r| (*r, u64::from(*r == RecycleReason::Oom)))
                .collect(),
            recycles_for_memory: 1,
            leak_suspected: false,
            evidence: None,
            thrash: None,
            exits: [exit].into(),
            live: None,
        };
        let wire = api::Pool::from(&pool);
        same(&pool.exits, &wire.exits);
        assert_eq!(wire.recycles_by_reason[&api::RecycleReason::Oom], 1);
        assert_eq!(wire.recycles_by_reason.len(), RecycleReason::ALL.len());
        // A pool not yet seen alive has no members and no total, not made-up ones.
        assert_eq!((wire.children, wire.total_bytes, wire.parent), (0, 0, None));
        let kill = OomRecord {
            pid: 12,
            victim: Victim {
                comm: "celery".into(),
                pool: "10/celery".into(),
                cgroup: "/a".into(),
            },
            anon_bytes: 3,
            file_bytes: 2,
            shmem_bytes: 1,
            unix_time: 1.7e9,
        };
        same(&kill, &api::OomKill::from(&kill));
    }
}
