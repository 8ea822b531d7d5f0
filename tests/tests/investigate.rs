//! `leakscope investigate` and `/debug/pprof/growth` end to end: real C programs that leak
//! from one code path and churn from another, traced by the real kernel programs.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, Spawned, Static, agent_bin, attached_tracepoints, kernel_tests_enabled, scenario_bin,
    static_mapper, syscall_tracepoints, uprobes_on, wait_for,
};
use serde_json::Value;

/// Runs `leakscope investigate --pid PID ARGS... --json`.
fn investigate(pid: u32, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(["investigate", "--pid", &pid.to_string(), "--json"])
        .args(args)
        .output()
        .expect("run leakscope investigate")
}

/// `investigate --json` in growth mode (one fault in 16) for `duration`, left running: its
/// probes can be looked at while it samples.
fn investigate_in_background(pid: u32, duration: &str) -> std::process::Child {
    Command::new(agent_bin())
        .args(["investigate", "--pid", &pid.to_string(), "--json"])
        .args(["--duration", duration, "--sample-period", "16"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run leakscope investigate")
}

fn reports(out: &Output) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "investigate failed: {stderr}");
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}); stderr: {stderr}"))
}

fn report<'a>(reports: &'a [Value], mode: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {mode} report in {reports:?}"))
}

/// Functions named in a stack, leaf first.
fn functions(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect()
}

fn stacks<'a>(report: &'a Value, source: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["source"] == source)
        .collect()
}

/// Bytes of the stacks that pass through `function`.
fn bytes_through(stacks: &[&Value], function: &str) -> u64 {
    stacks
        .iter()
        .filter(|s| functions(s).contains(&function))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum()
}

fn leak_paths(binary: &str) -> Spawned {
    let s = Spawned::new(&mut Command::new(scenario_bin(binary)));
    // Past start-up: the churn has reached its steady state.
    std::thread::sleep(Duration::from_millis(500));
    s
}

#[test]
fn alloc_mode_ranks_the_leaking_function_first_and_not_the_churning_one() {
    if !kernel_tests_enabled("alloc_mode_ranks_the_leaking_function_first_and_not_the_churning_one")
    {
        return;
    }
    // leak_here keeps 256 KiB/s; churn_here allocates 8 MiB/s and frees all of it.
    let target = leak_paths("leak_paths");
    let out_dir = std::env::temp_dir().join(format!("leakscope-inv-{}", target.pid()));
    let out = investigate(
        target.pid(),
        &[
            "--mode",
            "both",
            "--duration",
            "8s",
            "--min-age",
            "2s",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    let all = reports(&out);
    let alloc = report(&all, "alloc");
    let held = stacks(alloc, "alloc");
    let top = held.first().expect("no outstanding allocation stacks");
    let top_functions = functions(top);
    let first_user = top_functions
        .iter()
        .find(|f| !f.contains("malloc"))
        .unwrap();
    assert_eq!(*first_user, "leak_here", "top stack: {top_functions:?}");
    assert!(top_functions.contains(&"run_loop") && top_functions.contains(&"main"));
    // Blocks older than 2 s of an ~8 s run at 256 KiB/s: about 1.5 MiB.
    let leaked = bytes_through(&held, "leak_here");
    assert!(
        (512 << 10..=4 << 20).contains(&leaked),
        "leak_here holds {leaked} bytes"
    );
    let churned = bytes_through(&held, "churn_here");
    assert!(churned * 20 < leaked, "churn_here holds {churned} bytes");
    // Source lines come from DWARF.
    let leaf = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "leak_here")
        .unwrap();
    assert!(leaf["file"].as_str().unwrap().ends_with("leak_paths.c"));
    assert!(leaf["line"].as_u64().unwrap() > 0);

    // The files for pprof readers and browsers.
    for mode in ["alloc", "growth"] {
        let pb = std::fs::read(out_dir.join(format!("{mode}.pb.gz"))).unwrap();
        assert_eq!(&pb[..2], &[0x1f, 0x8b], "{mode}.pb.gz is not gzip");
        let svg = std::fs::read_to_string(out_dir.join(format!("{mode}.svg"))).unwrap();
        assert!(svg.contains("<svg"));
    }
    let svg = std::fs::read_to_string(out_dir.join("alloc.svg")).unwrap();
    assert!(svg.contains("leak_here"));
    let table = std::fs::read_to_string(out_dir.join("alloc.txt")).unwrap();
    let first_row = table.lines().find(|l| l.starts_with("1 ")).unwrap();
    assert!(first_row.contains("leak_here"), "{table}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn growth_mode_catches_a_leak_through_mmap_without_malloc() {
    if !kernel_tests_enabled("growth_mode_catches_a_leak_through_mmap_without_malloc") {
        return;
    }
    // map_and_keep keeps 256 KiB/s of touched mappings; map_and_release maps, touches and
    // unmaps 8 MiB/s.
    let target = Spawned::new(&mut Command::new(scenario_bin("mmap_leak")));
    std::thread::sleep(Duration::from_millis(300));
    // One fault in 16: the default (64) could miss a 64-pages-a-second leak in 6 s.
    let all = reports(&investigate(
        target.pid(),
        &["--duration", "6s", "--sample-period", "16"],
    ));
    let growth = report(&all, "growth");
    let faults = stacks(growth, "page_fault");
    let top = faults.first().expect("no page-fault stacks");
    assert!(
        functions(top).contains(&"map_and_keep"),
        "top: {:?}",
        functions(top)
    );
    // Released pages are not growth: the churn path, 30x the leak's rate, holds nothing.
    assert_eq!(bytes_through(&faults, "map_and_release"), 0);
    let kept = bytes_through(&faults, "map_and_keep");
    assert!((256 << 10..=8 << 20).contains(&kept), "kept {kept}");
    // Address space: both paths map; the caller of the libc wrapper is spliced in.
    let mapped = stacks(growth, "mmap");
    assert!(bytes_through(&mapped, "map_and_keep") > 0, "{mapped:?}");
}

#[test]
fn growth_sampling_probes_the_targets_own_memory_calls_not_every_syscall() {
    if !kernel_tests_enabled(
        "growth_sampling_probes_the_targets_own_memory_calls_not_every_syscall",
    ) {
        return;
    }
    let target = Spawned::new(&mut Command::new(scenario_bin("mmap_leak")));
    std::thread::sleep(Duration::from_millis(300));
    let run = investigate_in_background(target.pid(), "4s");
    // While it samples: uprobes on the target's mmap, mremap, brk, munmap and madvise, in the
    // target's own libc, and no syscalls:* tracepoint for the rest of the host to pay.
    let probes = wait_for(Duration::from_secs(10), || {
        let on = uprobes_on(run.id(), target.pid());
        (on.len() == 5).then_some(on)
    })
    .unwrap_or_else(|| {
        panic!(
            "the target's five memory calls were never probed: {:?}",
            uprobes_on(run.id(), target.pid())
        )
    });
    assert!(
        probes.iter().all(|(kind, _)| kind == "uprobe"),
        "{probes:?}"
    );
    assert_eq!(syscall_tracepoints(run.id()), Vec::<String>::new());
    let all = reports(&run.wait_with_output().expect("investigate output"));
    let growth = report(&all, "growth");
    let mapped = stacks(growth, "mmap");
    assert!(bytes_through(&mapped, "map_and_keep") > 0, "{mapped:?}");
    let notes = growth["notes"].to_string();
    assert!(!notes.contains("not probed"), "{notes}");
}

#[test]
fn a_target_whose_memory_calls_cannot_be_probed_still_gets_its_page_faults_and_a_note() {
    if !kernel_tests_enabled(
        "a_target_whose_memory_calls_cannot_be_probed_still_gets_its_page_faults_and_a_note",
    ) {
        return;
    }
    // A stripped static binary: no libc mapped, no symbol naming its mmap.
    let dir = std::env::temp_dir().join(format!("leakscope-inv-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut target = Static::spawn(&static_mapper(&dir, "inv-stripped", true));
    let run = investigate_in_background(target.pid(), "3s");
    // Once sampling is on: the page-fault program is attached.
    wait_for(Duration::from_secs(10), || {
        attached_tracepoints(run.id())
            .iter()
            .any(|t| t == "page_fault_user")
            .then_some(())
    })
    .expect("the page-fault program was never attached");
    target.map();
    let all = reports(&run.wait_with_output().expect("investigate output"));
    let growth = report(&all, "growth");
    let notes = growth["notes"].to_string();
    assert!(
        notes.contains(&format!(
            "pid {}: memory calls not probed (pid {} maps no libc",
            target.pid(),
            target.pid()
        )) && notes.contains("page faults still are"),
        "{notes}"
    );
    let faults = stacks(growth, "page_fault");
    let held: u64 = faults.iter().filter_map(|s| s["bytes"].as_u64()).sum();
    // Sampled (and with transparent huge pages, faulted) coarsely: some, not a figure.
    assert!(held > 0, "64 MiB touched, none sampled: {faults:?}");
    assert!(stacks(growth, "mmap").is_empty(), "{growth}");
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn frames_fall_back_to_symbol_names_then_module_offsets() {
    if !kernel_tests_enabled("frames_fall_back_to_symbol_names_then_module_offsets") {
        return;
    }
    let nodebug = leak_paths("leak_paths.nodebug");
    let stripped = leak_paths("leak_paths.stripped");
    let args = ["--mode", "alloc", "--duration", "4s", "--min-age", "1s"];
    let nodebug_run = investigate(nodebug.pid(), &args);
    let stripped_run = investigate(stripped.pid(), &args);

    let all = reports(&nodebug_run);
    let top = stacks(report(&all, "alloc"), "alloc")[0].clone();
    let frame = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "leak_here")
        .cloned()
        .unwrap_or_else(|| panic!("leak_here not named without DWARF: {top}"));
    assert!(frame["file"].is_null(), "no DWARF, yet a file: {frame}");

    let all = reports(&stripped_run);
    let top = stacks(report(&all, "alloc"), "alloc")[0].clone();
    let own: Vec<&Value> = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["module"]
                .as_str()
                .unwrap()
                .ends_with("leak_paths.stripped")
        })
        .collect();
    assert!(!own.is_empty(), "no frame in the stripped binary: {top}");
    for f in own {
        assert!(f["function"].is_null(), "a name in a stripped binary: {f}");
        assert!(f["offset"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_missing_pid_and_a_pid_that_exits_are_clear_errors() {
    if !kernel_tests_enabled("a_missing_pid_and_a_pid_that_exits_are_clear_errors") {
        return;
    }
    let out = investigate(4_000_000, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no process with pid 4000000"), "{stderr}");

    let short = Spawned::new(Command::new(scenario_bin("leak_paths")).args(["--duration", "2"]));
    let started = Instant::now();
    let out = investigate(short.pid(), &["--mode", "both", "--duration", "30s"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "did not notice the exit"
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited") && stderr.contains("into the 30s run"),
        "{stderr}"
    );
    // What it saw until then is still reported.
    let partial: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(partial.len(), 2);
}

#[test]
fn the_agent_serves_growth_profiles_on_request() {
    if !kernel_tests_enabled("the_agent_serves_growth_profiles_on_request") {
        return;
    }
    let agent = Agent::start(&["--no-task-socket", "--enable-profiling"]);
    let target = Spawned::new(&mut Command::new(scenario_bin("mmap_leak")));
    let pid = target.pid();
    let (status, text) = agent.get(&format!(
        "/debug/pprof/growth?pid={pid}&seconds=3&format=txt&period=16"
    ));
    assert_eq!(status, 200, "{text}");
    let first_row = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_default();
    assert!(first_row.contains("write_every_page") || first_row.contains("map_and_keep"));
    assert!(text.contains("map_and_keep"), "{text}");

    let url = format!(
        "http://{}/debug/pprof/growth?pid={pid}&seconds=1",
        agent.addr
    );
    let mut resp = ureq::get(&url).call().expect("pprof profile");
    let body = resp.body_mut().read_to_vec().unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b]);

    let (status, text) = agent.get("/debug/pprof/growth?pid=4000000");
    assert_eq!((status, text.trim()), (404, "no process with pid 4000000"));
    let (status, _) = agent.get(&format!("/debug/pprof/growth?pid={pid}&seconds=0"));
    assert_eq!(status, 400);
    let (status, text) = agent.get(&format!("/debug/pprof/growth?pid={pid}&period=0"));
    assert_eq!(status, 400);
    assert!(text.contains("period must be"), "{text}");
}

#[test]
fn auto_growth_samples_a_process_once_it_is_called_leaking() {
    if !kernel_tests_enabled("auto_growth_samples_a_process_once_it_is_called_leaking") {
        return;
    }
    // Detector time runs 10x: 2 MiB/s of real time is 12 MiB per nominal minute.
    let agent = Agent::start(&[
        "--no-task-socket",
        "--detector-time-scale",
        "0.1",
        "--match",
        "comm=^mmap_leak$",
        "--enable-profiling",
        "--auto-growth",
        "--auto-growth-period",
        "16",
    ]);
    let target = Spawned::new(Command::new(scenario_bin("mmap_leak")).args([
        "--leak-kib-per-s",
        "2048",
        "--churn-kib-per-s",
        "4096",
    ]));
    let pid = target.pid();
    let sampled = integration_tests::wait_for(Duration::from_secs(40), || {
        agent
            .process(pid)
            .filter(|p| p["growth_sampled"] == true)
            .map(|p| p["leak"]["verdict"].clone())
    });
    assert_eq!(
        sampled,
        Some(Value::from("leaking")),
        "not sampled: {:?}\n{}",
        agent.process(pid),
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains(&format!("growth sampling on for pid {pid} (mmap_leak)")),
        "{}",
        agent.log()
    );
    assert_eq!(
        agent
            .metrics()
            .value("leakscope_growth_sampled_processes", &[]),
        Some(1.0)
    );
    // Let stacks gather, then the profile comes at once: no `seconds`, no waiting.
    std::thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    let (status, text) = agent.get(&format!("/debug/pprof/growth?pid={pid}&format=txt"));
    assert_eq!(status, 200, "{text}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let first_row = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_default();
    assert!(
        first_row.contains("write_every_page") || first_row.contains("map_and_keep"),
        "{text}"
    );
    assert!(text.contains("map_and_keep"), "{text}");

    // Gone from the table, gone from sampling.
    drop(target);
    let off = integration_tests::wait_for(Duration::from_secs(10), || {
        (agent
            .metrics()
            .value("leakscope_growth_sampled_processes", &[])
            == Some(0.0))
        .then_some(())
    });
    assert!(off.is_some(), "{}", agent.log());
    assert!(
        agent
            .log()
            .contains(&format!("growth sampling off for pid {pid}"))
    );
}
