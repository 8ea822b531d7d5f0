//! Names of the metric families the agent exports.
//!
//! [`ALL`] is the complete list: the agent's tests check that it renders nothing else, and the
//! integration tests check the shipped dashboard and alert rules against it.

// Per process (leakscope_process_*: pid, comm, container_id, pod_uid labels).
pub const PROCESS_RSS_BYTES: &str = "leakscope_process_rss_bytes";
pub const PROCESS_PEAK_RSS_BYTES: &str = "leakscope_process_peak_rss_bytes";
pub const PROCESS_RSS_GROWTH_BYTES_PER_SECOND: &str =
    "leakscope_process_rss_growth_bytes_per_second";
pub const PROCESS_LEAK_SUSPECTED: &str = "leakscope_process_leak_suspected";
pub const PROCESS_LEAK_CONFIDENCE: &str = "leakscope_process_leak_confidence";
pub const PROCESS_TIME_TO_LIMIT_SECONDS: &str = "leakscope_process_time_to_limit_seconds";
pub const PROCESS_MEMORY_LIMIT_BYTES: &str = "leakscope_process_memory_limit_bytes";
/// `{pid, comm, unit} 1`: the systemd unit of a process with series, joined on `pid`.
pub const PROCESS_UNIT_INFO: &str = "leakscope_process_unit_info";

// Worker pools, pods and OOM kills.
pub const POOL_RECYCLES_TOTAL: &str = "leakscope_pool_recycles_total";
pub const POOL_LEAK_SUSPECTED: &str = "leakscope_pool_leak_suspected";
pub const POOL_CHILDREN: &str = "leakscope_pool_children";
/// `{pool, member}` (member: children, parent): resident bytes of a pool's live processes.
pub const POOL_RESIDENT_BYTES: &str = "leakscope_pool_resident_bytes";
/// `{pool}`: when children and parent together reach the limit they share, at the pool's rate.
pub const POOL_TIME_TO_LIMIT_SECONDS: &str = "leakscope_pool_time_to_limit_seconds";
pub const POD_INFO: &str = "leakscope_pod_info";
/// `{container_id, container_name, image, compose_project, compose_service} 1`: the Docker
/// names of a container whose processes have series, joined on `container_id`.
pub const CONTAINER_INFO: &str = "leakscope_container_info";
/// `{result}` (ok, no_socket, error): lists of the Docker daemon's containers.
pub const DOCKER_LOOKUPS_TOTAL: &str = "leakscope_docker_lookups_total";
/// Containers left out of a Docker list because the name cache was full.
pub const DOCKER_CONTAINERS_DROPPED_TOTAL: &str = "leakscope_docker_containers_dropped_total";
pub const OOM_KILLS_TOTAL: &str = "leakscope_oom_kills_total";

// The agent itself: table, probes, kernel maps, health.
pub const PROCESSES_TRACKED: &str = "leakscope_processes_tracked";
pub const PROCESSES_OVERFLOW: &str = "leakscope_processes_overflow";
pub const PROBE_ATTACHED: &str = "leakscope_probe_attached";
pub const PROBE_EVENTS_TOTAL: &str = "leakscope_probe_events_total";
pub const PROBE_EVENTS_LOST_TOTAL: &str = "leakscope_probe_events_lost_total";
pub const RSS_EVENTS_IGNORED_TOTAL: &str = "leakscope_rss_events_ignored_total";
pub const KERNEL_MAP_ENTRIES: &str = "leakscope_kernel_map_entries";
pub const GROWTH_SAMPLED_PROCESSES: &str = "leakscope_growth_sampled_processes";
pub const KERNEL_MAP_EVICTIONS_TOTAL: &str = "leakscope_kernel_map_evictions_total";
pub const PROC_READ_ERRORS_TOTAL: &str = "leakscope_proc_read_errors_total";
pub const AGENT_DEGRADED: &str = "leakscope_agent_degraded";
pub const BUILD_INFO: &str = "leakscope_build_info";

// The HTTP server's own bounds.
pub const HTTP_CONNECTIONS_OPEN: &str = "leakscope_http_connections_open";
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "leakscope_http_connections_refused_total";
pub const HTTP_WRITE_TIMEOUTS_TOTAL: &str = "leakscope_http_write_timeouts_total";
pub const HTTP_CONNECTIONS_DROPPED_AT_SHUTDOWN_TOTAL: &str =
    "leakscope_http_connections_dropped_at_shutdown_total";
pub const HTTP_AUTH_BCRYPT_VERIFICATIONS_TOTAL: &str =
    "leakscope_http_auth_bcrypt_verifications_total";
pub const HTTP_AUTH_RATE_LIMITED_TOTAL: &str = "leakscope_http_auth_rate_limited_total";

// Per task name and marker traffic.
pub const TASK_RUNS_TOTAL: &str = "leakscope_task_runs_total";
pub const TASK_RETAINED_BYTES: &str = "leakscope_task_retained_bytes";
pub const TASK_LEAK_SUSPECTED: &str = "leakscope_task_leak_suspected";
pub const TASK_JOBS_ABANDONED_TOTAL: &str = "leakscope_task_jobs_abandoned_total";
pub const MARKERS_RECEIVED_TOTAL: &str = "leakscope_markers_received_total";
pub const MARKERS_DROPPED_TOTAL: &str = "leakscope_markers_dropped_total";
pub const MARKER_QUEUE_FULL_TOTAL: &str = "leakscope_marker_queue_full_total";
pub const SHARE_REFUSED_TOTAL: &str = "leakscope_share_refused_total";

// Per thread.
pub const THREAD_RSS_GROWTH_BYTES: &str = "leakscope_thread_rss_growth_bytes";
pub const THREAD_MAPPED_GROWTH_BYTES: &str = "leakscope_thread_mapped_growth_bytes";
pub const THREADS_PROCESSES: &str = "leakscope_threads_processes";
pub const THREAD_TRACKING_REFUSED_TOTAL: &str = "leakscope_thread_tracking_refused_total";

/// Every family the agent can export (a histogram's `_bucket`, `_sum` and `_count` series
/// belong to its family).
pub const ALL: &[&str] = &[
    PROCESS_RSS_BYTES,
    PROCESS_PEAK_RSS_BYTES,
    PROCESS_RSS_GROWTH_BYTES_PER_SECOND,
    PROCESS_LEAK_SUSPECTED,
    PROCESS_LEAK_CONFIDENCE,
    PROCESS_TIME_TO_LIMIT_SECONDS,
    PROCESS_MEMORY_LIMIT_BYTES,
    PROCESS_UNIT_INFO,
    POOL_RECYCLES_TOTAL,
    POOL_LEAK_SUSPECTED,
    POOL_CHILDREN,
    POOL_RESIDENT_BYTES,
    POOL_TIME_TO_LIMIT_SECONDS,
    POD_INFO,
    CONTAINER_INFO,
    DOCKER_LOOKUPS_TOTAL,
    DOCKER_CONTAINERS_DROPPED_TOTAL,
    OOM_KILLS_TOTAL,
    PROCESSES_TRACKED,
    PROCESSES_OVERFLOW,
    PROBE_ATTACHED,
    PROBE_EVENTS_TOTAL,
    PROBE_EVENTS_LOST_TOTAL,
    RSS_EVENTS_IGNORED_TOTAL,
    KERNEL_MAP_ENTRIES,
    GROWTH_SAMPLED_PROCESSES,
    KERNEL_MAP_EVICTIONS_TOTAL,
    PROC_READ_ERRORS_TOTAL,
    AGENT_DEGRADED,
    BUILD_INFO,
    HTTP_CONNECTIONS_OPEN,
    HTTP_CONNECTIONS_REFUSED_TOTAL,
    HTTP_WRITE_TIMEOUTS_TOTAL,
    HTTP_CONNECTIONS_DROPPED_AT_SHUTDOWN_TOTAL,
    HTTP_AUTH_BCRYPT_VERIFICATIONS_TOTAL,
    HTTP_AUTH_RATE_LIMITED_TOTAL,
    TASK_RUNS_TOTAL,
    TASK_RETAINED_BYTES,
    TASK_LEAK_SUSPECTED,
    TASK_JOBS_ABANDONED_TOTAL,
    MARKERS_RECEIVED_TOTAL,
    MARKERS_DROPPED_TOTAL,
    MARKER_QUEUE_FULL_TOTAL,
    SHARE_REFUSED_TOTAL,
    THREAD_RSS_GROWTH_BYTES,
    THREAD_MAPPED_GROWTH_BYTES,
    THREADS_PROCESSES,
    THREAD_TRACKING_REFUSED_TOTAL,
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_valid_and_prefixed() {
        let mut seen = HashSet::new();
        for name in ALL {
            assert!(seen.insert(name), "{name} listed twice");
            assert!(name.starts_with("leakscope_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not a plain Prometheus name"
            );
        }
    }
}
