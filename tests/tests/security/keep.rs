//! What held up in review and must keep holding: nothing left in the kernel after a kill,
//! hostile process names escaped, and a fork storm neither lost nor leaves stale series.

use std::{
    os::unix::fs::symlink,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{
    Agent, MemHog, SharedTmp, Spawned, agent_bin, kernel_tests_enabled, wait_for,
};

/// Names of the BPF programs loaded on the host now.
fn loaded_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Programs this project loads: every one of the agent's and investigate's is named so.
fn ours(programs: &[String]) -> usize {
    const PREFIXES: &[&str] = &[
        "rss_", "sched_", "oom_", "mem_", "growth_", "alloc_", "free_",
    ];
    programs
        .iter()
        .filter(|n| PREFIXES.iter().any(|p| n.starts_with(p)))
        .count()
}

fn kill(pid: u32) {
    // SAFETY: a plain signal to a child of this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn a_killed_agent_or_investigate_leaves_nothing_in_the_kernel() {
    if !kernel_tests_enabled("a_killed_agent_or_investigate_leaves_nothing_in_the_kernel") {
        return;
    }
    let before = ours(&loaded_programs());

    let agent = Agent::start(&["--no-task-socket"]);
    assert!(ours(&loaded_programs()) > before, "{:?}", loaded_programs());
    kill(agent.pid());
    let gone = wait_for(Duration::from_secs(15), || {
        (ours(&loaded_programs()) == before).then_some(())
    });
    assert!(gone.is_some(), "after SIGKILL: {:?}", loaded_programs());

    let hog = MemHog::spawn(&[]);
    let investigate = Spawned::new(
        Command::new(agent_bin())
            .args(["investigate", "--pid", &hog.pid.to_string()])
            .args(["--mode", "both", "--duration", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let loaded = wait_for(Duration::from_secs(20), || {
        (ours(&loaded_programs()) > before).then_some(())
    });
    assert!(loaded.is_some(), "investigate loaded nothing");
    kill(investigate.pid());
    let gone = wait_for(Duration::from_secs(15), || {
        (ours(&loaded_programs()) == before).then_some(())
    });
    assert!(gone.is_some(), "after SIGKILL: {:?}", loaded_programs());
}

#[test]
fn hostile_process_names_are_escaped() {
    if !kernel_tests_enabled("hostile_process_names_are_escaped") {
        return;
    }
    // A process's name is what its owner says it is: quotes, backslashes, a newline and
    // braces must not break out of a label.
    let dir = SharedTmp::new("hostile-name");
    let name = "q\"b\\n\n{}=,";
    let link = dir.0.join(name);
    symlink(
        Command::new("sh")
            .args(["-c", "command -v sleep"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("find sleep"),
        &link,
    )
    .expect("symlink");
    let agent = Agent::start(&["--no-task-socket", "--match", "comm=^q"]);
    let _proc = Spawned::new(Command::new(&link).arg("60"));
    let escaped = "comm=\"q\\\"b\\\\n\\n{}=,\"";
    let seen = wait_for(Duration::from_secs(10), || {
        let text = agent.get("/metrics").1;
        text.contains(escaped).then_some(text)
    });
    let text = seen.unwrap_or_else(|| agent.get("/metrics").1);
    assert!(text.contains(escaped), "no {escaped} in:\n{text}");
    // Every line is still one sample or one comment: nothing was split by the newline.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("leakscope_"),
            "a line that is not a sample: {line:?}"
        );
    }
}

#[test]
fn a_fork_storm_loses_nothing_and_leaves_no_stale_series() {
    if !kernel_tests_enabled("a_fork_storm_loses_nothing_and_leaves_no_stale_series") {
        return;
    }
    let agent = Agent::start(&["--no-task-socket"]);
    // Forks that exit at once, then fork+exec; a fixed number of each, whatever the speed.
    let mut forked = Vec::new();
    for _ in 0..5_000 {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork failed");
        forked.push(pid as u32);
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    for _ in 0..1_000 {
        let mut child = Command::new("true").spawn().expect("spawn true");
        forked.push(child.id());
        child.wait().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let metrics = agent.metrics();
    let lost: f64 = metrics
        .find("leakscope_probe_events_lost_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(lost, 0.0, "{}", metrics.text);
    let stale: Vec<&u32> = forked
        .iter()
        .filter(|pid| {
            !metrics
                .find("leakscope_process_rss_bytes", &[("pid", &pid.to_string())])
                .is_empty()
        })
        .collect();
    assert!(stale.is_empty(), "series of exited pids: {stale:?}");
    assert_eq!(agent.get("/healthz").1.trim(), "ok", "{}", agent.log());
}
