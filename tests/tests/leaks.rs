//! Leak verdicts end to end: real leaking and non-leaking programs, a real cgroup limit, a
//! real OOM kill and a real prefork pool, under the real agent. The detector runs ten times
//! faster than real time (`--detector-time-scale 0.1`) with scenarios replayed to match.

use std::{process::Command, time::Duration};

use integration_tests::{
    Agent, MIB, MemHog, Spawned, TestCgroup, kernel_tests_enabled, scenario_bin, scenarios_dir,
    wait_for,
};

const SCALE: &str = "0.1";

fn leak(agent: &Agent, pid: u32) -> Option<serde_json::Value> {
    agent
        .process(pid)
        .map(|p| p["leak"].clone())
        .filter(|l| !l.is_null())
}

#[test]
fn a_leak_is_flagged_and_a_steady_process_is_not() {
    if !kernel_tests_enabled("a_leak_is_flagged_and_a_steady_process_is_not") {
        return;
    }
    let agent = Agent::start(&[
        "--detector-time-scale",
        SCALE,
        "--match",
        "comm=^(leak_linear|steady)$",
        "--limit",
        "comm=^steady$:1GiB",
    ]);
    let leaker = Spawned::new(Command::new(scenario_bin("leak_linear")).args([
        "--rate-mib-per-min",
        "10",
        "--time-scale",
        SCALE,
    ]));
    let steady = Spawned::new(Command::new(scenario_bin("steady")).args(["--time-scale", SCALE]));
    let (lpid, spid) = (leaker.pid(), steady.pid());

    // 10 MiB/min must be flagged within 3 nominal minutes: 18 s here.
    let flagged = wait_for(Duration::from_secs(18), || {
        leak(&agent, lpid).filter(|l| l["verdict"] == "leaking")
    });
    let flagged = flagged.unwrap_or_else(|| {
        panic!(
            "leak not flagged in 180 nominal s: {:?}\n{}",
            leak(&agent, lpid),
            agent.log()
        )
    });
    // 10 MiB/min nominal is 100 MiB/min of real time.
    let rate = flagged["rate_bytes_per_sec"].as_f64().unwrap() * 60.0 / MIB as f64;
    assert!(
        (70.0..130.0).contains(&rate),
        "rate {rate} MiB/min, expected ~100"
    );
    assert!(flagged["confidence"].as_f64().unwrap() > 0.5, "{flagged}");
    assert!(
        flagged["floor_rise_bytes"].as_f64().unwrap() > (4 * MIB) as f64,
        "{flagged}"
    );

    // Keep watching the steady one for 300 nominal seconds in all.
    for _ in 0..24 {
        let s = leak(&agent, spid).expect("steady sampled");
        assert_ne!(s["verdict"], "leaking", "steady process flagged: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = agent.metrics();
    let (l, s) = (lpid.to_string(), spid.to_string());
    assert_eq!(
        m.value("leakscope_process_leak_suspected", &[("pid", &l)]),
        Some(1.0)
    );
    assert_eq!(
        m.value("leakscope_process_leak_suspected", &[("pid", &s)]),
        Some(0.0)
    );
    assert!(
        m.value(
            "leakscope_process_rss_growth_bytes_per_second",
            &[("pid", &l)]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        m.value(
            "leakscope_process_memory_limit_bytes",
            &[("pid", &s), ("source", "configured")]
        ),
        Some((1u64 << 30) as f64)
    );
    assert!(
        m.find("leakscope_process_time_to_limit_seconds", &[("pid", &s)])
            .is_empty(),
        "a stable process has no time to limit"
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("pid {lpid} (leak_linear):")) && log.contains("-> leaking"),
        "verdict change not logged:\n{log}"
    );
}

#[test]
fn time_to_limit_comes_from_the_cgroup_limit() {
    if !kernel_tests_enabled("time_to_limit_comes_from_the_cgroup_limit") {
        return;
    }
    let agent = Agent::start(&[
        "--detector-time-scale",
        SCALE,
        "--match",
        "comm=^leak_linear$",
    ]);
    let cgroup = TestCgroup::with_limit("ttl", 512 * MIB);
    let leaker = Spawned::new(Command::new(scenario_bin("leak_linear")).args([
        "--rate-mib-per-min",
        "10",
        "--time-scale",
        SCALE,
    ]));
    cgroup.add(leaker.pid());
    let pid = leaker.pid();
    let p = wait_for(Duration::from_secs(25), || {
        agent
            .process(pid)
            .filter(|p| p["leak"]["verdict"] == "leaking" && p["time_to_limit_seconds"].is_f64())
    })
    .unwrap_or_else(|| {
        panic!(
            "no time to limit: {:?}\n{}",
            agent.process(pid),
            agent.log()
        )
    });
    assert_eq!(p["memory_limit_bytes"].as_u64(), Some(512 * MIB), "{p}");
    assert_eq!(p["memory_limit_source"], "cgroup");
    // Headroom is the cgroup's (its usage counts page cache too): allow for that.
    let ttl = p["time_to_limit_seconds"].as_f64().unwrap();
    let rate = p["leak"]["rate_bytes_per_sec"].as_f64().unwrap();
    let resident = p["resident_bytes"].as_f64().unwrap();
    let expected = ((512 * MIB) as f64 - resident) / rate;
    assert!(
        ttl > 0.0 && ttl <= expected * 1.05 && ttl >= expected * 0.6,
        "ttl {ttl} s, expected about {expected} s"
    );
    let m = agent.metrics();
    let ttl_metric = m
        .value(
            "leakscope_process_time_to_limit_seconds",
            &[("pid", &pid.to_string())],
        )
        .expect("time to limit exported");
    assert!(ttl_metric > 0.0);
}

#[test]
fn oom_kills_are_counted_with_the_victim() {
    if !kernel_tests_enabled("oom_kills_are_counted_with_the_victim") {
        return;
    }
    let agent = Agent::start(&["--match", "comm=^memhog$"]);
    let cgroup = TestCgroup::with_limit("oom", 64 * MIB);
    let mut hog = MemHog::spawn(&[]);
    let pid = hog.pid;
    cgroup.add(pid);
    wait_for(Duration::from_secs(5), || agent.process(pid)).expect("memhog tracked");
    // Asking for 256 MiB inside 64 MiB: the kernel's OOM killer takes it.
    hog.try_grow(256);
    let m = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics();
        m.value("leakscope_oom_kills_total", &[("comm", "memhog")])
            .filter(|v| *v >= 1.0)?;
        Some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "no OOM kill counted:\n{}\n{}",
            agent.metrics().text,
            agent.log()
        )
    });
    let sample = &m.find("leakscope_oom_kills_total", &[("comm", "memhog")])[0];
    let cgroup_dir = cgroup
        .dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        sample.labels["cgroup"].ends_with(&cgroup_dir),
        "victim's memory cgroup: {:?}, expected …/{cgroup_dir}",
        sample.labels["cgroup"]
    );
    let (_, body) = agent.get("/api/v1/oom");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kill = v["oom_kills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("victim {pid} not in /api/v1/oom: {body}"));
    assert!(kill["anon_bytes"].as_u64().unwrap() > 32 * MIB, "{kill}");
    assert!(agent.log().contains(&format!("OOM killer chose pid {pid}")));
}

/// An agent watching the prefork pool scenario, ten times faster than real time.
fn pool_agent() -> Agent {
    Agent::start(&[
        "--detector-time-scale",
        SCALE,
        "--match",
        "cmdline=prefork_pool",
    ])
}

fn pools_json(agent: &Agent) -> serde_json::Value {
    let (_, body) = agent.get("/api/v1/pools");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn pool_of(agent: &Agent, parent: u32) -> Option<serde_json::Value> {
    pools_json(agent)["pools"]
        .as_array()?
        .iter()
        .find(|p| p["parent_pid"].as_u64() == Some(u64::from(parent)))
        .cloned()
}

#[test]
fn a_live_pool_shows_its_children_and_names_a_leaking_parent() {
    if !kernel_tests_enabled("a_live_pool_shows_its_children_and_names_a_leaking_parent") {
        return;
    }
    let agent = pool_agent();
    // Steady children that are never recycled; the parent leaks 10 MiB/min nominal.
    let pool = Spawned::new(
        Command::new("python3")
            .arg(scenarios_dir().join("python/prefork_pool.py"))
            .args(["--workers", "3", "--rate-mib-per-min", "0"])
            .args(["--max-memory-per-child-mib", "0"])
            .args(["--parent-rate-mib-per-min", "10"])
            .args(["--time-scale", SCALE]),
    );
    let parent = pool.pid();

    // A pool as soon as its children have outlived shell commands, before any recycle.
    let live = wait_for(Duration::from_secs(20), || {
        pool_of(&agent, parent).filter(|p| p["children"] == 3)
    })
    .unwrap_or_else(|| panic!("no live pool: {:#}\n{}", pools_json(&agent), agent.log()));
    assert_eq!(live["recycles"], 0, "{live:#}");
    let members = live["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{live:#}");
    assert!(
        members
            .iter()
            .all(|m| m["resident_bytes"].as_u64() > Some(MIB))
    );
    let children_bytes: u64 = members
        .iter()
        .map(|m| m["resident_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        live["children_bytes"].as_u64(),
        Some(children_bytes),
        "{live:#}"
    );
    assert_eq!(live["parent"]["pid"].as_u64(), Some(u64::from(parent)));
    assert!(
        live["total_bytes"].as_u64().unwrap() > children_bytes,
        "the parent counts in the total: {live:#}"
    );

    // The parent's own leak survives every recycle: the pool names it.
    let flagged = wait_for(Duration::from_secs(60), || {
        pool_of(&agent, parent).filter(|p| p["leak_suspected"] == true)
    })
    .unwrap_or_else(|| {
        panic!(
            "pool with a leaking parent not flagged: {:#}\nparent: {:?}\n{}",
            pools_json(&agent),
            agent.process(parent),
            agent.log()
        )
    });
    let evidence = flagged["evidence"].as_str().unwrap();
    assert!(
        evidence.contains(&format!("parent (pid {parent}) itself leaks")),
        "{flagged:#}"
    );
    assert_eq!(flagged["parent"]["verdict"], "leaking", "{flagged:#}");
    assert_eq!(flagged["recycles"], 0, "{flagged:#}");
    let name = flagged["pool"].as_str().unwrap().to_string();
    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_pool_leak_suspected", &[("pool", &name)]),
        Some(1.0)
    );
    assert_eq!(
        m.value("leakscope_pool_children", &[("pool", &name)]),
        Some(3.0)
    );
    let parent_bytes = m
        .value(
            "leakscope_pool_resident_bytes",
            &[("pool", &name), ("member", "parent")],
        )
        .expect("the parent's bytes as a series");
    assert!(parent_bytes > (8 * MIB) as f64, "{parent_bytes}");
    assert!(
        agent
            .log()
            .contains(&format!("pool {name} is suspected of leaking")),
        "{}",
        agent.log()
    );
}

#[test]
fn a_prefork_pool_that_hides_its_leak_by_recycling_is_flagged() {
    if !kernel_tests_enabled("a_prefork_pool_that_hides_its_leak_by_recycling_is_flagged") {
        return;
    }
    let agent = pool_agent();
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let started = unix_now();
    let pool = Spawned::new(
        Command::new("python3")
            .arg(scenarios_dir().join("python/prefork_pool.py"))
            .args([
                "--workers",
                "2",
                "--rate-mib-per-min",
                "30",
                "--max-memory-per-child-mib",
                "48",
            ])
            .args(["--time-scale", SCALE]),
    );
    let parent = pool.pid();
    let found = wait_for(Duration::from_secs(40), || {
        let (_, body) = agent.get("/api/v1/pools");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["pools"]
            .as_array()?
            .iter()
            .find(|p| {
                p["parent_pid"].as_u64() == Some(u64::from(parent)) && p["leak_suspected"] == true
            })
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "pool not flagged: {}\n{}",
            agent.get("/api/v1/pools").1,
            agent.log()
        )
    });
    assert!(found["recycles"].as_u64().unwrap() >= 3, "{found}");
    // Each exit has its wall-clock time, oldest first, while the scenario ran. Exits on two
    // CPUs reach the kernel's ring in the order they are written, which can differ from
    // their timestamps by microseconds.
    let now = unix_now();
    let times: Vec<f64> = found["exits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["unix_time"].as_f64().expect("exit time"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1] + 1e-3)
            && times
                .iter()
                .all(|t| (started - 1.0..=now + 1.0).contains(t)),
        "{times:?} (started {started}, now {now})"
    );
    assert!(
        found["evidence"].as_str().unwrap().contains("grew"),
        "{found}"
    );
    let name = found["pool"].as_str().unwrap();
    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_pool_leak_suspected", &[("pool", name)]),
        Some(1.0)
    );
    let clean = m
        .value(
            "leakscope_pool_recycles_total",
            &[("pool", name), ("reason", "clean")],
        )
        .unwrap();
    assert!(clean >= 3.0, "{clean}");
    assert_eq!(
        m.value(
            "leakscope_pool_recycles_total",
            &[("pool", name), ("reason", "crash")]
        ),
        Some(0.0)
    );
}
