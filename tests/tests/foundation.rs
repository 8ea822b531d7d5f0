//! The agent, as root, against real processes: kernel-exact RSS, exits, pid reuse, probes the
//! kernel refuses, bad input.

use std::{process::Command, time::Duration};

use integration_tests::{Agent, MIB, MemHog, agent_bin, kernel_tests_enabled, vmrss, wait_for};

/// The kernel's RSS counters are per-CPU counters whose global value (what rss_stat reports)
/// trails the exact sum (/proc's VmRSS) by at most 32 pages per CPU; for a small process that
/// bound, not 2%, is the honest tolerance.
fn percpu_slack(truth: f64) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (0.02 * truth).max(cpus * 32.0 * 4096.0)
}

fn anon_of(agent: &Agent, pid: u32) -> Option<f64> {
    agent.metrics().value(
        "leakscope_process_rss_bytes",
        &[("pid", &pid.to_string()), ("kind", "anon")],
    )
}

#[test]
fn growth_shows_within_two_seconds_and_matches_vmrss() {
    if !kernel_tests_enabled("growth_shows_within_two_seconds_and_matches_vmrss") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut hog = MemHog::spawn(&[]);
    let pid = hog.pid.to_string();
    let before = wait_for(Duration::from_secs(5), || anon_of(&agent, hog.pid))
        .unwrap_or_else(|| panic!("memhog never showed up; log:\n{}", agent.log()));

    hog.grow(96);
    let grown = std::time::Instant::now();
    let after = wait_for(Duration::from_secs(2), || {
        anon_of(&agent, hog.pid).filter(|a| *a >= before + 0.98 * (96 * MIB) as f64)
    });
    assert!(
        after.is_some(),
        "96 MiB of growth not in /metrics within 2 s (before {before}, now {:?})",
        anon_of(&agent, hog.pid)
    );
    eprintln!("growth visible after {:?}", grown.elapsed());

    let p = agent.process(hog.pid).expect("memhog in /api/v1/processes");
    assert_eq!(p["source"]["anon"], "kernel", "{p}");
    let resident = p["resident_bytes"].as_f64().unwrap();
    let truth = vmrss(hog.pid) as f64;
    let err = (resident - truth).abs() / truth;
    assert!(
        err < 0.02,
        "agent says {resident}, VmRSS {truth}: {:.2}% off",
        err * 100.0
    );
    assert!(p["peak_rss_bytes"].as_f64().unwrap() >= resident);
    assert_eq!(p["pid"].as_u64(), Some(u64::from(hog.pid)));
    let m = agent.metrics();
    let kinds: Vec<_> = m
        .find("leakscope_process_rss_bytes", &[("pid", &pid)])
        .iter()
        .map(|s| s.labels["kind"].clone())
        .collect();
    assert_eq!(kinds.len(), 4, "anon, file, shmem, swap: {kinds:?}");
}

#[test]
fn exited_process_is_gone_from_the_next_scrape() {
    if !kernel_tests_enabled("exited_process_is_gone_from_the_next_scrape") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut hog = MemHog::spawn(&[]);
    hog.grow(16);
    let pid = hog.pid;
    wait_for(Duration::from_secs(5), || anon_of(&agent, pid)).expect("memhog tracked");
    hog.exit();
    let m = agent.metrics();
    assert!(
        m.find("leakscope_process_rss_bytes", &[("pid", &pid.to_string())])
            .is_empty(),
        "series of exited pid {pid} still exported"
    );
    assert!(
        agent.process(pid).is_none(),
        "exited pid {pid} still in the API"
    );
}

#[test]
fn reused_pid_does_not_inherit_numbers() {
    if !kernel_tests_enabled("reused_pid_does_not_inherit_numbers") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut first = MemHog::spawn(&[]);
    first.grow(200);
    let pid = first.pid;
    wait_for(Duration::from_secs(5), || {
        anon_of(&agent, pid).filter(|a| *a > (190 * MIB) as f64)
    })
    .expect("first holder of the pid tracked with 200 MiB");
    let first_start = agent.process(pid).expect("first holder")["start_time_seconds"].clone();
    first.exit();

    // Ask the kernel for the same pid again: ns_last_pid makes the next fork take pid.
    let second = wait_for(Duration::from_secs(10), || {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let hog = MemHog::spawn(&[]);
        (hog.pid == pid).then_some(hog)
    })
    .unwrap_or_else(|| panic!("could not get pid {pid} again"));

    // The second holder, told apart from the first by its start time however long the agent
    // takes to see it.
    let p = wait_for(Duration::from_secs(10), || {
        agent
            .process(pid)
            .filter(|p| p["start_time_seconds"] != first_start)
    })
    .expect("second holder tracked");
    let resident = p["resident_bytes"].as_f64().unwrap();
    let peak = p["peak_rss_bytes"].as_f64().unwrap();
    assert!(
        resident < (50 * MIB) as f64,
        "reused pid inherited RSS: {p}"
    );
    assert!(
        peak < (100 * MIB) as f64,
        "reused pid inherited the peak: {p}"
    );
    let truth = vmrss(second.pid) as f64;
    assert!(
        (resident - truth).abs() <= percpu_slack(truth),
        "{resident} vs VmRSS {truth}"
    );
}

#[test]
fn refused_probe_leaves_agent_serving_and_degraded() {
    if !kernel_tests_enabled("refused_probe_leaves_agent_serving_and_degraded") {
        return;
    }
    let agent = Agent::start(&["--break-probe", "oom_mark_victim"]);
    let (status, body) = agent.get("/healthz");
    assert_eq!(status, 200);
    assert!(
        body.starts_with("degraded: probe oom_mark_victim"),
        "{body}"
    );
    assert!(body.contains("OOM kills are not reported"), "{body}");
    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_probe_attached", &[("probe", "oom_mark_victim")]),
        Some(0.0)
    );
    assert_eq!(
        m.value("leakscope_probe_attached", &[("probe", "task_iter")]),
        Some(1.0)
    );
    assert_eq!(m.value("leakscope_agent_degraded", &[]), Some(1.0));
    let mut hog = MemHog::spawn(&[]);
    hog.grow(32);
    let pid = hog.pid;
    wait_for(Duration::from_secs(3), || {
        anon_of(&agent, pid).filter(|a| *a >= (31 * MIB) as f64)
    })
    .expect("RSS still tracked while degraded");
    assert!(
        agent.log().contains("probe oom_mark_victim is OFF"),
        "{}",
        agent.log()
    );
}

#[test]
fn healthy_agent_says_ok_and_counts_events() {
    if !kernel_tests_enabled("healthy_agent_says_ok_and_counts_events") {
        return;
    }
    let agent = Agent::start(&[]);
    let (status, body) = agent.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let hog = MemHog::spawn(&[]);
    hog.exit();
    let m = wait_for(Duration::from_secs(3), || {
        let m = agent.metrics();
        (m.value("leakscope_probe_events_total", &[("probe", "sched_exit")])? > 0.0).then_some(m)
    })
    .expect("exit events counted");
    // The per-change probes (rss_stat, sched_newtask) are off by default: iterator.rs.
    for probe in ["task_iter", "sched_exec", "sched_exit", "oom_mark_victim"] {
        assert_eq!(
            m.value("leakscope_probe_attached", &[("probe", probe)]),
            Some(1.0),
            "{probe}"
        );
    }
    assert!(m.value("leakscope_processes_tracked", &[]).unwrap() > 0.0);
    assert_eq!(
        m.value("leakscope_kernel_map_evictions_total", &[("map", "procs")]),
        Some(0.0)
    );
    assert!(m.value("leakscope_build_info", &[]).is_some());
    for reason in ["read_failed", "map_full"] {
        assert_eq!(
            m.value(
                "leakscope_probe_events_lost_total",
                &[("probe", "rss_stat"), ("reason", reason)]
            ),
            Some(0.0),
            "{reason}"
        );
    }
}

#[test]
fn selection_and_cap_with_explicit_overflow() {
    if !kernel_tests_enabled("selection_and_cap_with_explicit_overflow") {
        return;
    }
    let agent = Agent::start(&["--match", "comm=^memhog$", "--max-processes", "1"]);
    let mut big = MemHog::spawn(&[]);
    let mut small = MemHog::spawn(&[]);
    big.grow(64);
    small.grow(8);
    let m = wait_for(Duration::from_secs(5), || {
        let m = agent.metrics();
        (m.value("leakscope_processes_overflow", &[])? == 1.0
            && m.value(
                "leakscope_process_rss_bytes",
                &[("pid", &big.pid.to_string()), ("kind", "anon")],
            )? > (60 * MIB) as f64)
            .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected one own series and one overflow:\n{}",
            agent.metrics().text
        )
    });
    assert!(
        m.find(
            "leakscope_process_rss_bytes",
            &[("pid", &small.pid.to_string())]
        )
        .is_empty()
    );
    let overflow = m
        .value(
            "leakscope_process_rss_bytes",
            &[("pid", "overflow"), ("kind", "anon")],
        )
        .expect("overflow series");
    assert!(
        overflow >= (8 * MIB) as f64,
        "overflow holds the small one: {overflow}"
    );
    let pids: std::collections::HashSet<_> = m
        .find("leakscope_process_rss_bytes", &[])
        .iter()
        .map(|s| s.labels["pid"].clone())
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "only memhog processes are selected: {pids:?}"
    );
}

#[test]
fn command_lines_are_never_exported() {
    if !kernel_tests_enabled("command_lines_are_never_exported") {
        return;
    }
    let agent = Agent::start(&["--match", "cmdline=--password"]);
    let mut hog = MemHog::spawn(&["--password=hunter2-secret"]);
    hog.grow(4);
    wait_for(Duration::from_secs(5), || anon_of(&agent, hog.pid)).expect("selected by cmdline");
    let (_, api) = agent.get("/api/v1/processes");
    let metrics = agent.metrics().text;
    for body in [&api, &metrics] {
        assert!(
            !body.contains("hunter2"),
            "a command line leaked into the output"
        );
    }
}

#[test]
fn bad_flags_and_busy_port_fail_clearly() {
    let out = Command::new(agent_bin())
        .args(["run", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
    let out = Command::new(agent_bin())
        .args(["run", "--match", "comm=("])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid regex for comm"));

    if !kernel_tests_enabled("bad_flags_and_busy_port_fail_clearly") {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(agent_bin())
        .args(["run", "--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("address already in use"), "{err}");
}

#[test]
fn missing_capabilities_are_named() {
    if !kernel_tests_enabled("missing_capabilities_are_named") {
        return;
    }
    // Drop every capability and become nobody: the agent must say which capability it lacks.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(agent_bin())
        .args(["run", "--listen", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
        "{err}"
    );
}

/// `cargo xtask bench overhead` measures the agent against empty programs on the same hooks:
/// they must really be attached there, and go away on SIGTERM.
#[test]
fn bench_floor_holds_empty_programs_on_the_agents_hooks() {
    if !kernel_tests_enabled("bench_floor_holds_empty_programs_on_the_agents_hooks") {
        return;
    }
    use std::io::BufRead as _;
    let mut floor = Command::new(agent_bin())
        .arg("bench-floor")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start leakscope bench-floor");
    let mut line = String::new();
    std::io::BufReader::new(floor.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "floor programs attached");
    let hooks = integration_tests::attached_tracepoints(floor.id());
    assert_eq!(hooks, ["rss_stat", "sched_process_exit", "task_newtask"]);
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(floor.id() as i32, libc::SIGTERM) };
    let exited = wait_for(Duration::from_secs(5), || floor.try_wait().ok().flatten());
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}
