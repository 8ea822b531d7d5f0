//! The always-on tier as it runs by default: RSS read by a task iterator (the exact per-CPU
//! sum), exits read by the exit program, no program on the page-fault or fork path; the
//! per-change probes behind `--rss-events`; each fallback named when its part is refused.

use std::time::Duration;

use integration_tests::{
    Agent, MIB, MemHog, attached_tracepoints, kernel_tests_enabled, vmrss, wait_for,
};

/// The agent's resident bytes for `pid` and how far they may be from the exact sum.
fn resident_of(agent: &Agent, pid: u32) -> Option<(u64, Option<u64>, String)> {
    let p = agent.process(pid)?;
    Some((
        p["resident_bytes"].as_u64()?,
        p["rss_error_bytes"].as_u64(),
        p["source"]["anon"].as_str()?.to_string(),
    ))
}

/// Waits until the agent's number for an idle `hog` is /proc's VmRSS (the kernel's exact
/// sum since 6.16), and returns it.
fn agrees_with_vmrss(agent: &Agent, hog: &MemHog) -> u64 {
    let mut last = None;
    wait_for(Duration::from_secs(10), || {
        let (resident, error, source) = resident_of(agent, hog.pid)?;
        let truth = vmrss(hog.pid);
        last = Some((resident, error, source.clone(), truth));
        (resident == truth && error == Some(0) && source == "kernel").then_some(resident)
    })
    .unwrap_or_else(|| {
        panic!(
            "agent never agreed with VmRSS (resident, error bound, source, VmRSS): {last:?}; \
             log:\n{}",
            agent.log()
        )
    })
}

#[test]
fn rss_is_the_exact_kernel_sum_while_growing_and_shrinking() {
    if !kernel_tests_enabled("rss_is_the_exact_kernel_sum_while_growing_and_shrinking") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut hog = MemHog::spawn(&[]);
    let start = agrees_with_vmrss(&agent, &hog);
    hog.grow(64);
    let grown = agrees_with_vmrss(&agent, &hog);
    assert!(grown >= start + 64 * MIB, "{start} -> {grown}");
    hog.free();
    let freed = agrees_with_vmrss(&agent, &hog);
    assert!(freed + 60 * MIB <= grown, "{grown} -> {freed}");
    let p = agent.process(hog.pid).unwrap();
    assert!(
        p["peak_rss_bytes"].as_u64().unwrap() >= grown,
        "the high-water mark keeps the peak: {p}"
    );
}

#[test]
fn a_process_shorter_than_one_interval_is_seen_at_exit() {
    if !kernel_tests_enabled("a_process_shorter_than_one_interval_is_seen_at_exit") {
        return;
    }
    // The raw tracepoint reads through typed pointers; the classic one, its fallback, with
    // the helper: both must give the same exit.
    for (extra, hook) in [
        (None, "raw_tracepoint:sched_process_exit (BTF)"),
        (Some("sched_exit_btf"), "sched:sched_process_exit"),
    ] {
        let mut args = vec!["--interval", "5s"];
        if let Some(program) = extra {
            args.extend(["--break-probe", program]);
        }
        let agent = Agent::start(&args);
        assert!(
            agent
                .log()
                .contains(&format!("probe sched_exit attached to {hook}")),
            "{}",
            agent.log()
        );
        short_process_seen_at_exit(&agent);
    }
}

fn short_process_seen_at_exit(agent: &Agent) {
    let mut hog = MemHog::spawn(&[]);
    hog.grow(64);
    std::thread::sleep(Duration::from_millis(300));
    let pid = hog.exit_with(3);
    let exit = wait_for(Duration::from_secs(5), || {
        let (_, body) = agent.get("/api/v1/exits");
        let v: serde_json::Value = serde_json::from_str(&body).expect("exits JSON");
        v["exits"]
            .as_array()?
            .iter()
            .find(|e| e["pid"].as_u64() == Some(u64::from(pid)))
            .cloned()
    })
    .unwrap_or_else(|| panic!("pid {pid} not in /api/v1/exits; log:\n{}", agent.log()));
    assert_eq!(exit["exit_code"].as_u64(), Some(3 << 8), "{exit}");
    assert_eq!(exit["comm"], "memhog", "{exit}");
    assert!(
        exit["peak_rss_bytes"].as_u64().unwrap() >= 64 * MIB,
        "peak at exit: {exit}"
    );
    assert!(
        exit["resident_bytes"].as_u64().unwrap() >= 64 * MIB,
        "it still held its 64 MiB when it exited: {exit}"
    );
    assert_eq!(
        exit["ppid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{exit}"
    );
}

#[test]
fn by_default_no_program_runs_on_page_faults_or_forks() {
    if !kernel_tests_enabled("by_default_no_program_runs_on_page_faults_or_forks") {
        return;
    }
    let agent = Agent::start(&[]);
    let (status, body) = agent.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let hooks = attached_tracepoints(agent.pid());
    assert!(hooks.iter().any(|h| h == "sched_process_exit"), "{hooks:?}");
    for per_change in ["rss_stat", "task_newtask"] {
        assert!(
            !hooks.iter().any(|h| h == per_change),
            "{per_change} attached by default: {hooks:?}"
        );
    }
    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_probe_attached", &[("probe", "task_iter")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("leakscope_probe_attached", &[("probe", "rss_stat")]),
        None,
        "off by choice is not listed as refused"
    );
    assert!(
        agent
            .log()
            .contains("probe task_iter attached to iter/task")
    );
}

#[test]
fn rss_events_attach_the_per_change_probes() {
    if !kernel_tests_enabled("rss_events_attach_the_per_change_probes") {
        return;
    }
    let agent = Agent::start(&["--rss-events"]);
    let hooks = attached_tracepoints(agent.pid());
    for hook in ["rss_stat", "task_newtask", "sched_process_exit"] {
        assert!(hooks.iter().any(|h| h == hook), "{hook}: {hooks:?}");
    }
    let mut hog = MemHog::spawn(&[]);
    hog.grow(32);
    let pid = hog.pid;
    wait_for(Duration::from_secs(5), || {
        let p = agent.process(pid)?;
        (p["rss_bytes"]["anon"].as_u64()? >= 31 * MIB).then_some(())
    })
    .expect("RSS tracked from rss_stat events");
    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_probe_attached", &[("probe", "rss_stat")]),
        Some(1.0)
    );
    assert!(
        m.value("leakscope_probe_events_total", &[("probe", "rss_stat")])
            .unwrap()
            > 0.0
    );
    assert_eq!(
        m.value("leakscope_probe_attached", &[("probe", "task_iter")]),
        None,
        "the iterator is not used with --rss-events"
    );
}

#[test]
fn refused_iterator_falls_back_to_procfs() {
    if !kernel_tests_enabled("refused_iterator_falls_back_to_procfs") {
        return;
    }
    let agent = Agent::start(&["--break-probe", "task_iter"]);
    let (status, body) = agent.get("/healthz");
    assert_eq!(status, 200);
    assert!(
        body.starts_with("degraded: probe task_iter (iter/task) is off"),
        "{body}"
    );
    assert!(body.contains("through /proc"), "{body}");
    assert!(
        agent.log().contains("probe task_iter is OFF"),
        "{}",
        agent.log()
    );
    let mut hog = MemHog::spawn(&[]);
    hog.grow(32);
    let pid = hog.pid;
    let p = wait_for(Duration::from_secs(10), || {
        let p = agent.process(pid)?;
        (p["rss_bytes"]["anon"].as_u64()? >= 31 * MIB).then_some(p)
    })
    .unwrap_or_else(|| panic!("memhog not found through /proc; log:\n{}", agent.log()));
    assert_eq!(p["source"]["anon"], "proc", "{p}");
    assert_eq!(
        agent
            .metrics()
            .value("leakscope_probe_attached", &[("probe", "task_iter")]),
        Some(0.0)
    );
    hog.exit();
    wait_for(Duration::from_secs(5), || {
        agent.process(pid).is_none().then_some(())
    })
    .expect("exit still seen");
}

#[test]
fn the_typed_walk_and_the_field_by_field_walk_give_the_same_records() {
    if !kernel_tests_enabled("the_typed_walk_and_the_field_by_field_walk_give_the_same_records") {
        return;
    }
    // Side by side on the same processes: the default agent walks with typed loads, the other
    // is refused them and reads each field with the helper.
    let typed = Agent::start(&[]);
    let helper = Agent::start(&["--break-probe", "task_iter_typed"]);
    let m = typed.metrics();
    assert_eq!(
        m.value("leakscope_probe_attached", &[("probe", "task_iter_typed")]),
        Some(1.0),
        "the typed walk is the default; log:\n{}",
        typed.log()
    );
    let (_, body) = helper.get("/healthz");
    assert!(
        body.contains("probe task_iter_typed (iter/task) is off")
            && body.contains("bpf_probe_read_kernel"),
        "{body}"
    );
    assert_eq!(
        helper
            .metrics()
            .value("leakscope_probe_attached", &[("probe", "task_iter_typed")]),
        Some(0.0)
    );
    let mut hog = MemHog::spawn(&[]);
    hog.grow(48);
    // Each agrees with VmRSS, so with the other, to the byte.
    let by_typed = agrees_with_vmrss(&typed, &hog);
    let by_helper = agrees_with_vmrss(&helper, &hog);
    assert_eq!(by_typed, by_helper);
    let (a, b) = (
        typed.process(hog.pid).unwrap(),
        helper.process(hog.pid).unwrap(),
    );
    for field in [
        "ppid",
        "comm",
        "start_time_seconds",
        "cgroup_id",
        "peak_rss_bytes",
    ] {
        assert_eq!(a[field], b[field], "{field}: typed {a} vs helper {b}");
    }
    assert_eq!(
        a["ppid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{a}"
    );
    assert_ne!(a["cgroup_id"].as_u64(), Some(0), "{a}");
    assert!(
        a["peak_rss_bytes"].as_u64().unwrap() >= by_typed,
        "the peak is at least the resident size: {a}"
    );
}

#[test]
fn refused_per_cpu_read_says_rss_is_approximate() {
    if !kernel_tests_enabled("refused_per_cpu_read_says_rss_is_approximate") {
        return;
    }
    let agent = Agent::start(&["--break-probe", "per_cpu_offset"]);
    let (_, body) = agent.get("/healthz");
    assert!(body.contains("batched count"), "{body}");
    assert!(agent.log().contains("batched count"), "{}", agent.log());
    let mut hog = MemHog::spawn(&[]);
    hog.grow(32);
    let pid = hog.pid;
    let (resident, error, _) = wait_for(Duration::from_secs(5), || {
        resident_of(&agent, pid).filter(|(r, _, _)| *r >= 32 * MIB)
    })
    .expect("RSS still read");
    let error = error.expect("an error bound is given");
    assert!(error > 0, "{error}");
    assert!(
        resident.abs_diff(vmrss(pid)) <= 3 * error,
        "{resident} vs VmRSS {} (bound {error} per kind)",
        vmrss(pid)
    );
}

#[test]
fn refused_exit_read_says_the_last_snapshot_stands() {
    if !kernel_tests_enabled("refused_exit_read_says_the_last_snapshot_stands") {
        return;
    }
    let agent = Agent::start(&["--break-probe", "exit_rss"]);
    let (_, body) = agent.get("/healthz");
    assert!(
        body.contains("exit numbers are the last snapshot"),
        "{body}"
    );
    let mut hog = MemHog::spawn(&[]);
    hog.grow(32);
    let pid = hog.pid;
    wait_for(Duration::from_secs(5), || {
        resident_of(&agent, pid).filter(|(r, _, _)| *r >= 32 * MIB)
    })
    .expect("snapshot taken");
    hog.exit_with(0);
    let exit = wait_for(Duration::from_secs(5), || {
        let (_, body) = agent.get("/api/v1/exits");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["exits"]
            .as_array()?
            .iter()
            .find(|e| e["pid"].as_u64() == Some(u64::from(pid)))
            .cloned()
    })
    .expect("exit recorded");
    assert!(
        exit["resident_bytes"].as_u64().unwrap() >= 32 * MIB,
        "the last snapshot's numbers: {exit}"
    );
}
