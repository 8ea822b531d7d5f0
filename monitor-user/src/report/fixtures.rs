//! What an agent might answer, for the page's tests: a leaking process with Compose names
//! and a name of markup, its history, a task named `<script>…`.

use leakscope_api::{
    Assessment, HistoryPoint, HistoryResponse, HostMemory, HostResponse, Job, LimitSource,
    MarkerCounters, OomResponse, Overflow, PoolsResponse, Process, ProcessesResponse, Retained,
    RssBytes, RssSources, Runtime, Series, Source, Task, TaskVerdict, TasksResponse, Verdict,
    processes::ContainerName,
};

use super::page::{Flame, Incident, Suspect};

pub const MIB: u64 = 1 << 20;
pub const T0: f64 = 1_700_000_000.0;

pub fn process(pid: u32, comm: &str, verdict: Option<Verdict>) -> Process {
    Process {
        pid,
        ppid: 1,
        comm: comm.into(),
        start_time_seconds: T0,
        cgroup_id: 1,
        cgroup: None,
        runtime: Runtime::Docker,
        container_id: Some("ab".repeat(32)),
        container: Some(ContainerName {
            name: "shop-worker-1".into(),
            image: "shop:1".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("worker".into()),
        }),
        pod_uid: None,
        pod: None,
        qos: None,
        unit: None,
        rss_bytes: RssBytes::default(),
        resident_bytes: 300 * MIB,
        peak_rss_bytes: 310 * MIB,
        leak: verdict.map(|verdict| Assessment {
            verdict,
            confidence: 0.9,
            rate_bytes_per_sec: (10 * MIB) as f64 / 60.0,
            window_secs: 600.0,
            floor_rise_bytes: (100 * MIB) as f64,
            consistency: 1.0,
            samples: 600,
        }),
        memory_limit_bytes: Some(1 << 30),
        memory_limit_source: Some(LimitSource::Cgroup),
        time_to_limit_seconds: verdict.map(|_| 4380.0),
        pool: None,
        source: RssSources {
            anon: Source::Kernel,
            file: Source::Kernel,
            shmem: Source::Kernel,
            swap: Source::Kernel,
        },
        series: Series::Own,
        threads: None,
        threads_mapped_off: None,
        rss_error_bytes: Some(0),
        growth_sampled: false,
    }
}

pub fn history(pid: u32) -> HistoryResponse {
    HistoryResponse {
        pid,
        comm: "celery".into(),
        start_time_seconds: T0,
        points: (0..60)
            .map(|i| HistoryPoint {
                unix_time_seconds: T0 + 10.0 * i as f64,
                resident_bytes: (200 + i) * MIB,
                min_resident_bytes: (200 + i) * MIB,
                samples: 1,
            })
            .collect(),
        floors: Vec::new(),
        rate_bytes_per_sec: Some(1.0),
        verdict: Some(Verdict::Leaking),
    }
}

pub fn hostile_task() -> Task {
    Task {
        task: "<script>alert(1)</script>".into(),
        runs: 40,
        failed_runs: 0,
        abandoned_jobs: 0,
        leak_suspected: true,
        retained_bytes_per_run: (MIB / 2) as i64,
        retained_bytes: Retained {
            runs: 40,
            median: 1,
            mean: 1.0,
            p90: 1,
            min: 0,
            max: 1,
            last: None,
        },
        verdict: TaskVerdict {
            leak_suspected: true,
            runs_considered: 40,
            retaining_runs: 40,
            median_retained_bytes: 1,
            retained_total_bytes: 40,
            floor_rise_bytes: 40,
            evidence: "kept <b>512 KiB</b> & more".into(),
            allocator: None,
        },
        recent_jobs: Vec::<Job>::new(),
    }
}

pub fn incident() -> Incident {
    let leaking = process(7, "<img src=x>", Some(Verdict::Leaking));
    Incident {
        agent: "http://127.0.0.1:9633".into(),
        generated: T0 + 700.0,
        health: Ok("ok\n".into()),
        host: Ok(HostResponse {
            hostname: "node-1".into(),
            memory: HostMemory {
                total_bytes: 8 << 30,
                free_bytes: 1 << 30,
                available_bytes: Some(2 << 30),
                cached_bytes: 1 << 30,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            },
        }),
        processes: ProcessesResponse {
            processes: vec![leaking.clone(), process(8, "steady", Some(Verdict::Stable))],
            overflow: Overflow::default(),
        },
        suspects: vec![Suspect {
            process: leaking,
            history: Ok(history(7)),
            flame: Flame::Missing(
                "profiling is off: start the agent with --enable-profiling".into(),
            ),
        }],
        pools: Ok(PoolsResponse {
            pools: Vec::new(),
            overflow_recycles: 0,
            overflow_pools: 0,
        }),
        tasks: Ok(TasksResponse {
            socket: None,
            markers: MarkerCounters {
                received: 0,
                dropped: Default::default(),
                queue_full: 0,
                abandoned: 0,
                tid_unverified: 0,
                names_refused: Default::default(),
            },
            open_jobs: 0,
            tasks: vec![hostile_task()],
        }),
        oom: Ok(OomResponse {
            oom_kills: Vec::new(),
        }),
    }
}
