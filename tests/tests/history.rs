//! Issue 17's on-host view: a real process's RSS history through
//! `/api/v1/processes/{pid}/history`, and the systemd unit a cgroup path names.

use std::{
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use integration_tests::{
    Agent, MIB, MemHog, kernel_tests_enabled, memhog_bin, memory_cgroup_root, wait_for,
};
use leakscope_api::{HistoryResponse, paths};

fn history(agent: &Agent, pid: u32) -> Option<HistoryResponse> {
    let (status, body) = agent.get(&paths::process_history(pid));
    (status == 200).then(|| {
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("history JSON: {e}: {body}"))
    })
}

#[test]
fn a_growing_process_shows_a_rising_history() {
    if !kernel_tests_enabled("a_growing_process_shows_a_rising_history") {
        return;
    }
    // Ten times faster than real time and no warm-up: 9 s of samples give a fitted rate.
    let agent = Agent::start(&[
        "--detector-time-scale",
        "0.1",
        "--leak-warmup",
        "0s",
        "--match",
        "comm=^memhog$",
    ]);
    let mut hog = MemHog::spawn(&[]);
    wait_for(Duration::from_secs(10), || {
        history(&agent, hog.pid).filter(|h| !h.points.is_empty())
    })
    .unwrap_or_else(|| panic!("memhog has no history; log:\n{}", agent.log()));

    // Grow in steps until the history spans a fit and a rise of 32 MiB or more; how many steps
    // that takes depends on the machine, not what is asserted.
    let h = wait_for(Duration::from_secs(90), || {
        hog.grow(4);
        std::thread::sleep(Duration::from_millis(250));
        let h = history(&agent, hog.pid)?;
        let (first, last) = (h.points.first()?, h.points.last()?);
        (h.rate_bytes_per_sec.is_some() && last.resident_bytes >= first.resident_bytes + 32 * MIB)
            .then_some(h)
    })
    .unwrap_or_else(|| {
        panic!(
            "no rising, fitted history: {:?}\nlog:\n{}",
            history(&agent, hog.pid),
            agent.log()
        )
    });

    assert_eq!(h.pid, hog.pid);
    assert_eq!(h.comm, "memhog");
    assert!(h.points.len() <= 512, "{} points", h.points.len());
    assert!(
        h.points
            .windows(2)
            .all(|w| w[0].unix_time_seconds < w[1].unix_time_seconds),
        "{:?}",
        h.points
    );
    // memhog never frees its heap; only reclaimed file pages (its own binary's) can take a
    // little back, never the 4 MiB of one step.
    assert!(
        h.points
            .windows(2)
            .all(|w| w[1].resident_bytes + 4 * MIB > w[0].resident_bytes),
        "the history fell: {:?}",
        h.points
    );
    let (first, last) = (&h.points[0], h.points.last().unwrap());
    assert!(
        last.resident_bytes >= first.resident_bytes + 32 * MIB,
        "{h:?}"
    );
    assert!(
        h.points
            .iter()
            .all(|p| p.min_resident_bytes <= p.resident_bytes)
    );
    // Wall-clock times: after the process started, and not in the future.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        first.unix_time_seconds >= h.start_time_seconds - 1.0,
        "{h:?}"
    );
    assert!(
        last.unix_time_seconds <= now + 1.0,
        "{last:?} is after {now}"
    );
    assert!(h.rate_bytes_per_sec.unwrap() > 0.0, "{h:?}");
    let (lowest, highest) = (h.floors.first().unwrap(), h.floors.last().unwrap());
    assert!(highest.floor_bytes > lowest.floor_bytes, "{:?}", h.floors);

    // The API's access rule and selection: a process the agent does not watch has none.
    let (status, body) = agent.get(&paths::process_history(std::process::id()));
    assert_eq!(status, 404, "{body}");
}

/// A cgroup named like a systemd service (the agent reads names, not systemd), removed when
/// dropped.
struct ServiceCgroup(std::path::PathBuf);

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        // Only empty once its process is gone.
        wait_for(Duration::from_secs(5), || std::fs::remove_dir(&self.0).ok());
    }
}

#[test]
fn a_process_in_a_service_cgroup_names_its_unit() {
    if !kernel_tests_enabled("a_process_in_a_service_cgroup_names_its_unit") {
        return;
    }
    let unit = format!("leakscope-test-{}.service", std::process::id());
    let (root, _) = memory_cgroup_root().expect("no memory cgroup hierarchy on this host");
    let dir = root.join(&unit);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let cgroup = ServiceCgroup(dir);
    let agent = Agent::start(&["--match", "comm=^memhog$"]);
    // Moved before exec: the agent reads the cgroup when it selects the process after exec.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"echo $$ > "$1/cgroup.procs" && exec "$2""#, "sh"])
        .arg(&cgroup.0)
        .arg(memhog_bin());
    let hog = MemHog::spawn_with(&mut cmd);
    let pid = hog.pid.to_string();
    let p = wait_for(Duration::from_secs(10), || {
        agent.process(hog.pid).filter(|p| !p["unit"].is_null())
    })
    .unwrap_or_else(|| {
        panic!(
            "no unit for memhog: {:?}\nlog:\n{}",
            agent.process(hog.pid),
            agent.log()
        )
    });
    assert_eq!(p["unit"], unit.as_str(), "{p}");
    let m = agent.metrics();
    assert_eq!(
        m.value(
            "leakscope_process_unit_info",
            &[("pid", &pid), ("comm", "memhog"), ("unit", &unit)]
        ),
        Some(1.0)
    );
    let rss = m.find("leakscope_process_rss_bytes", &[("pid", &pid)]);
    assert!(!rss.is_empty());
    assert!(
        rss.iter().all(|s| !s.labels.contains_key("unit")),
        "the unit is on the info series only"
    );
}
