//! `/api/v1/processes`: selected processes with their memory, the detector's verdict and what
//! limits them.

use serde::{Deserialize, Serialize};

use crate::float::nan_if_null;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessesResponse {
    /// Largest resident first: the processes with series of their own (or the one asked for
    /// with `?pid=`, wherever it is).
    pub processes: Vec<Process>,
    /// Selected processes beyond `--max-processes`, summed as in `/metrics`.
    pub overflow: Overflow,
}

/// The overflow series: every selected process beyond the cap, summed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overflow {
    pub processes: u64,
    /// Resident bytes by kind, in the kernel's order: file, anon, swap, shmem.
    pub rss: [u64; 4],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    #[serde(deserialize_with = "nan_if_null")]
    pub start_time_seconds: f64,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// Container runtime named by the cgroup path (`unknown` outside containers).
    pub runtime: Runtime,
    /// 64-hex container id, when the cgroup path names one.
    pub container_id: Option<String>,
    /// The Docker container's name, image and Compose project and service, when the Docker
    /// daemon could be asked.
    #[serde(default)]
    pub container: Option<ContainerName>,
    /// Kubernetes pod UID, when the process runs in a pod.
    pub pod_uid: Option<String>,
    /// The pod's namespace and name, when the Kubernetes API could be asked (in a cluster).
    pub pod: Option<PodName>,
    /// Kubernetes QoS class of the pod.
    pub qos: Option<QosClass>,
    /// The systemd unit (`NAME.service`, `NAME.scope`) the cgroup path names, the innermost
    /// one for a user's units; absent in a container or outside systemd.
    pub unit: Option<String>,
    pub rss_bytes: RssBytes,
    pub resident_bytes: u64,
    pub peak_rss_bytes: u64,
    /// How far each kind of `rss_bytes` may be from the kernel's exact per-CPU sum: 0 when it
    /// is that sum (the task iterator), the batched counter's bound when only the batched
    /// counter could be read; absent when the numbers come from elsewhere.
    #[serde(default)]
    pub rss_error_bytes: Option<u64>,
    /// The detector's verdict and its evidence; absent until the first sample.
    pub leak: Option<Assessment>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_limit_source: Option<LimitSource>,
    pub time_to_limit_seconds: Option<f64>,
    /// Pool the process works in, when its parent runs a pool of its name.
    pub pool: Option<String>,
    /// Where each number of `rss_bytes` comes from.
    pub source: RssSources,
    pub series: Series,
    /// Top threads by the memory growth they caused, when the process has per-thread
    /// accounting (it sends task markers, or matches `--threads-for`).
    pub threads: Option<Vec<ThreadGrowth>>,
    /// Why the threads' mapped bytes are not counted for this process, though it has
    /// per-thread accounting (no libc to probe, or the kernel refused the uprobes).
    #[serde(default)]
    pub threads_mapped_off: Option<String>,
    /// Whether the agent samples this process's growth stacks (`--auto-growth`).
    pub growth_sampled: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssBytes {
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub swap: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssSources {
    pub anon: Source,
    pub file: Source,
    pub shmem: Source,
    pub swap: Source,
}

/// Where a number came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The kernel's own counters (kmem:rss_stat, or at a task marker).
    Kernel,
    /// A `/proc` read, until the kernel has reported that kind for the address space.
    Proc,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// A Docker container's names (each at most 128 bytes, without control characters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerName {
    /// The name without Docker's leading `/`.
    pub name: String,
    pub image: String,
    /// The `com.docker.compose.project` label.
    pub compose_project: Option<String>,
    /// The `com.docker.compose.service` label.
    pub compose_service: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    /// The memory cgroup's limit.
    Cgroup,
    /// A `--limit` given to the agent.
    Configured,
}

/// Whether the process has series of its own in `/metrics` or is summed into the overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Series {
    Own,
    Overflow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Stable,
    Growing,
    Leaking,
}

impl Verdict {
    /// The name the JSON uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Growing => "growing",
            Self::Leaking => "leaking",
        }
    }
}

/// The detector's verdict plus the evidence behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Confidence in `verdict`, in [0, 1].
    #[serde(deserialize_with = "nan_if_null")]
    pub confidence: f64,
    /// Robust (Theil–Sen) growth rate over the analysed window, bytes per real second.
    #[serde(deserialize_with = "nan_if_null")]
    pub rate_bytes_per_sec: f64,
    /// Span of the analysed window (after warm-up), real seconds.
    #[serde(deserialize_with = "nan_if_null")]
    pub window_secs: f64,
    /// Floor of the last segment minus floor of the first, bytes.
    #[serde(deserialize_with = "nan_if_null")]
    pub floor_rise_bytes: f64,
    /// How steadily the floor rose, in [0, 1].
    #[serde(deserialize_with = "nan_if_null")]
    pub consistency: f64,
    /// Raw samples covered by the analysed window.
    pub samples: u64,
}

/// One thread's memory growth within its process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadGrowth {
    pub tid: u32,
    pub comm: String,
    /// Faulted in minus released: the RSS this thread's own actions added to its process.
    pub rss_growth_bytes: i64,
    pub rss_added_bytes: u64,
    pub rss_removed_bytes: u64,
    /// Mapped minus unmapped address space (mmap, munmap, mremap, brk).
    pub mapped_growth_bytes: i64,
    pub mapped_bytes: u64,
    pub unmapped_bytes: u64,
    /// False once the thread has exited (its process lives on, and may hold what it took).
    pub alive: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_are_served_in_lowercase() {
        let names = serde_json::to_value((
            Runtime::CriO,
            QosClass::BestEffort,
            Series::Overflow,
            Source::Kernel,
            LimitSource::Configured,
        ))
        .unwrap();
        assert_eq!(
            names,
            serde_json::json!(["crio", "besteffort", "overflow", "kernel", "configured"])
        );
        for v in [Verdict::Stable, Verdict::Growing, Verdict::Leaking] {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
    }

    #[test]
    fn absent_values_are_null_and_a_response_reads_back_as_it_was() {
        let p = Process {
            pid: 42,
            ppid: 1,
            comm: "celery".into(),
            start_time_seconds: 1.7e9,
            cgroup_id: 7,
            cgroup: None,
            runtime: Runtime::Unknown,
            container_id: None,
            container: None,
            pod_uid: None,
            pod: None,
            qos: None,
            unit: None,
            rss_bytes: RssBytes {
                anon: 3,
                ..RssBytes::default()
            },
            resident_bytes: 3,
            peak_rss_bytes: 4,
            rss_error_bytes: Some(0),
            leak: Some(Assessment {
                verdict: Verdict::Growing,
                confidence: 0.5,
                rate_bytes_per_sec: 10.0,
                window_secs: 90.0,
                floor_rise_bytes: 1.0,
                consistency: 1.0,
                samples: 90,
            }),
            memory_limit_bytes: None,
            memory_limit_source: None,
            time_to_limit_seconds: None,
            pool: None,
            source: RssSources {
                anon: Source::Kernel,
                file: Source::Proc,
                shmem: Source::Unknown,
                swap: Source::Unknown,
            },
            series: Series::Own,
            threads: None,
            threads_mapped_off: None,
            growth_sampled: false,
        };
        let r = ProcessesResponse {
            processes: vec![p],
            overflow: Overflow::default(),
        };
        let v = serde_json::to_value(&r).unwrap();
        let first = &v["processes"][0];
        for absent in [
            "cgroup",
            "container",
            "pod",
            "qos",
            "unit",
            "memory_limit_source",
            "threads",
        ] {
            assert!(first[absent].is_null(), "{absent} in {first}");
            assert!(first.as_object().unwrap().contains_key(absent), "{absent}");
        }
        assert_eq!(
            v["overflow"],
            serde_json::json!({"processes": 0, "rss": [0, 0, 0, 0]})
        );
        let back: ProcessesResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
