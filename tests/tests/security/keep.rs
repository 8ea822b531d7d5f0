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

/// Ids of the BPF programs of this project loaded on the host now (every one of the agent's
/// and investigate's programs is named with one of these prefixes).
fn our_programs() -> std::collections::BTreeSet<u64> {
    const PREFIXES: &[&str] = &["rss_", "sched_", "oom_", "mem_", "growth_", "alloc_"];
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
        .into_iter()
        .flatten()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| PREFIXES.iter().any(|x| n.starts_with(x)))
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Waits for programs of `killed` (pid) to load, kills it, and checks every program that came
/// with it is gone: ids, not counts, so another test's agent still exiting cannot confuse it.
fn killing_releases_everything(before: &std::collections::BTreeSet<u64>, killed: u32) {
    let came = wait_for(Duration::from_secs(20), || {
        let now: Vec<u64> = our_programs().difference(before).copied().collect();
        (!now.is_empty()).then_some(now)
    })
    .expect("no program was loaded");
    kill(killed);
    let gone = wait_for(Duration::from_secs(15), || {
        let now = our_programs();
        came.iter().all(|id| !now.contains(id)).then_some(())
    });
    assert!(
        gone.is_some(),
        "programs {came:?} outlived SIGKILL: {:?}",
        our_programs()
    );
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
    let before = our_programs();
    let agent = Agent::start(&["--no-task-socket"]);
    killing_releases_everything(&before, agent.pid());

    let before = our_programs();
    let hog = MemHog::spawn(&[]);
    let investigate = Spawned::new(
        Command::new(agent_bin())
            .args(["investigate", "--pid", &hog.pid.to_string()])
            .args(["--mode", "both", "--duration", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    killing_releases_everything(&before, investigate.pid());
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

/// A local user cannot speak for another process: the kernel refuses credentials that are not
/// the sender's own, and the agent takes the pid from the kernel, never from the datagram.
#[test]
fn forged_marker_credentials_are_refused() {
    if !kernel_tests_enabled("forged_marker_credentials_are_refused") {
        return;
    }
    let agent = Agent::start(&[]);
    let socket = std::env::temp_dir().join(format!("leakscope-test-{}.sock", agent.addr.port()));
    // Claims pid 1 and uid 0, then its own pid with uid 0; then a marker that only names
    // another pid in its text. Prints what the kernel said to each.
    let script = format!(
        "import os, socket, struct\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.connect({socket:?})\n\
         def send(pid, uid, gid):\n    \
         try:\n        \
         s.sendmsg([b'LS1 begin forged.task job=1'], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack('iII', pid, uid, gid))])\n        \
         print('sent')\n    \
         except PermissionError:\n        \
         print('refused')\n\
         send(1, 0, 0)\n\
         send(os.getpid(), 0, 0)\n\
         s.send(b'LS1 begin spoofed.task job=2 tid=1')\n\
         print('plain')\n",
        socket = socket.display().to_string()
    );
    let out = integration_tests::as_unprivileged("python3")
        .args(["-c", &script])
        .output()
        .expect("run python3 as the unprivileged user");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["refused", "refused", "plain"],
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks = wait_for(Duration::from_secs(5), || {
        let (_, body) = agent.get("/api/v1/tasks");
        body.contains("spoofed.task").then_some(body)
    })
    .expect("the plain marker was not recorded");
    assert!(!tasks.contains("forged.task"), "{tasks}");
    // One marker arrived: the plain one, under the pid the kernel gave its sender.
    let metrics = agent.metrics();
    assert_eq!(
        metrics.value("leakscope_markers_received_total", &[]),
        Some(1.0),
        "{}",
        metrics.text
    );
}
