//! Per-job attribution end to end, with real parts: a real redis-server, a real Celery worker
//! (prefork pool, two children) running tests/celery_app with the `leakscope.celery` hook from
//! integrations/python, and the real agent. One task keeps a growing module-level list, the
//! other allocates and frees; leakscope must flag the first with its per-run size and not the
//! second, and say which thread grew.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{Agent, MIB, Spawned, free_port, kernel_tests_enabled, wait_for};

const LEAK_BYTES: u64 = 4 * MIB;
const CLEAN_BYTES: u64 = 16 * MIB;
const RUNS: u64 = 40;
const LEAKY: &str = "leakscope_test.leaky";
const CLEAN: &str = "leakscope_test.clean";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python `cargo xtask setup --tests` prepared (its virtualenv), else the system's.
fn python() -> String {
    std::env::var("LEAKSCOPE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether redis-server and Celery (with redis-py) are here. Missing ones skip the test with
/// the reason, or fail it under CI=true: CI installs them (`cargo xtask setup --tests`).
fn dependencies_present(test: &str) -> bool {
    let mut missing = Vec::new();
    let ran = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ran(Command::new("redis-server").arg("--version")) {
        missing.push("redis-server (Debian package redis-server)".to_string());
    }
    if !ran(Command::new(python()).args(["-c", "import celery, redis"])) {
        missing.push(format!(
            "the Python packages celery and redis for {} \
             (integrations/python/requirements-test.txt)",
            python()
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test}: missing {}; `cargo xtask setup --tests` installs them",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{why} (under CI=true this test may not be skipped)");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// A redis-server on a free loopback port, without persistence; killed when dropped.
struct Redis {
    _server: Spawned,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = free_port();
        let server = Spawned::new(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stderr(Stdio::null()),
        );
        let up = wait_for(Duration::from_secs(10), || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).ok()?;
            (&buf == b"+PONG\r\n").then_some(())
        });
        assert!(
            up.is_some(),
            "redis-server did not answer PING on port {port}"
        );
        Self {
            _server: server,
            port,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn python_cmd(socket: &Path, broker: &str) -> Command {
    let app_dir = root().join("tests/celery_app");
    let pythonpath = format!(
        "{}:{}",
        root().join("integrations/python/src").display(),
        app_dir.display()
    );
    let mut cmd = Command::new(python());
    cmd.current_dir(&app_dir)
        .env("PYTHONPATH", pythonpath)
        .env("LEAKSCOPE_SOCKET", socket)
        .env("LEAKSCOPE_TEST_BROKER", broker)
        .env("LEAKSCOPE_TEST_LEAK_BYTES", LEAK_BYTES.to_string())
        .env("LEAKSCOPE_TEST_CLEAN_BYTES", CLEAN_BYTES.to_string())
        // glibc raises its mmap threshold to the size of the last large block freed, and
        // then keeps freed blocks in its heap, where the next task of *another* kind reuses
        // them: retention then moves between task types sharing the heap. Pinning the
        // threshold keeps each buffer its own mapping, so the ground truth is known.
        .env("MALLOC_MMAP_THRESHOLD_", "131072");
    cmd
}

fn tasks_json(agent: &Agent) -> serde_json::Value {
    let (status, body) = agent.get("/api/v1/tasks");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("tasks JSON")
}

fn task<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    v["tasks"].as_array()?.iter().find(|t| t["task"] == name)
}

fn ppid_of(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_celery_task_that_leaks_is_flagged_and_a_clean_one_is_not() {
    let test = "a_celery_task_that_leaks_is_flagged_and_a_clean_one_is_not";
    if !kernel_tests_enabled(test) || !dependencies_present(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leakscope-tasks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("tasks.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    // The workers run as root here: opting root's markers in to per-thread accounting (which
    // markers alone never turn on) gives the per-thread numbers checked below.
    // Per-thread RSS growth is counted at each change of the RSS counters, which only
    // --rss-events watches (by default RSS is read, not listened to).
    let agent = Agent::start(&[
        "--rss-events",
        "--task-socket",
        &socket_arg,
        "--match",
        "cmdline=leakscope_test_app",
        "--threads-for-uid",
        "0",
    ]);
    assert!(socket.exists(), "agent did not create {}", socket.display());
    let redis = Redis::start();

    let worker_log = dir.join("worker.log");
    let worker = Spawned::new(
        python_cmd(&socket, &redis.url())
            .args(["-m", "celery", "-A", "leakscope_test_app", "worker"])
            .args(["--pool", "prefork", "--concurrency", "2"])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .args(["--loglevel", "INFO", "--hostname", "leakscope-test@%h"])
            .stderr(std::fs::File::create(&worker_log).expect("worker log")),
    );
    let log = || std::fs::read_to_string(&worker_log).unwrap_or_default();

    // The client enqueues the runs interleaved and waits for every result.
    let mut client = python_cmd(&socket, &redis.url())
        .args(["enqueue.py", &RUNS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the enqueue client");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = client.try_wait().expect("wait for the client") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            panic!("tasks did not complete in 180 s; worker log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = client.wait_with_output().expect("client output");
    assert!(
        status.success(),
        "enqueue failed: {}\n{}\nworker log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log()
    );

    // Every end marker is in once both tasks show all their runs, and the allocator fit
    // (refitted once an interval, after the runs arrive) has the runs a verdict needs.
    let v = wait_for(Duration::from_secs(20), || {
        let v = tasks_json(&agent);
        let done = |name| {
            task(&v, name).is_some_and(|t| {
                t["runs"].as_u64() == Some(RUNS)
                    && t["verdict"]["allocator"]["runs"]
                        .as_u64()
                        .is_none_or(|r| r >= 30)
            })
        };
        (done(LEAKY) && done(CLEAN)).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "not all runs recorded: {:#}\nagent log:\n{}\nworker log:\n{}",
            tasks_json(&agent),
            agent.log(),
            log()
        )
    });
    let leaky = task(&v, LEAKY).unwrap();
    let clean = task(&v, CLEAN).unwrap();
    eprintln!("leaky: {}", leaky["verdict"]);
    eprintln!("clean: {}", clean["verdict"]);

    assert_eq!(leaky["leak_suspected"], true, "{leaky:#}");
    let per_run = leaky["retained_bytes_per_run"].as_f64().unwrap();
    let truth = LEAK_BYTES as f64;
    assert!(
        per_run >= truth / 2.0 && per_run <= truth * 2.0,
        "leaky retains {per_run} bytes a run, truly {truth}: {leaky:#}"
    );
    assert_eq!(leaky["failed_runs"], 0);
    assert_eq!(clean["leak_suspected"], false, "{clean:#}");
    assert!(
        clean["retained_bytes_per_run"].as_f64().unwrap() < truth / 4.0,
        "{clean:#}"
    );

    // The runs came from the pool's children, pids given by the kernel.
    let worker_pid = u64::from(worker.pid());
    let mut children: Vec<u64> = leaky["recent_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(clean["recent_jobs"].as_array().unwrap())
        .map(|j| j["pid"].as_u64().unwrap())
        .collect();
    children.sort_unstable();
    children.dedup();
    assert!(!children.is_empty());
    for pid in &children {
        assert_eq!(
            ppid_of(*pid),
            Some(worker_pid),
            "job pid {pid} is not a child of the worker {worker_pid}"
        );
    }
    // Jobs name the thread that ran them, and what it grew inside them. Not every run shows
    // its growth (the marker thread runs at normal priority, so a 2 ms job can be over before
    // its begin marker is read; the allocator may reuse what a clean run freed): one that
    // does is enough to show the thread's own numbers come through.
    let jobs = leaky["recent_jobs"].as_array().unwrap();
    assert!(jobs.iter().all(|j| j["tid"].is_u64()), "{jobs:#?}");
    let thread_grew = |job: &serde_json::Value| -> i64 {
        job["threads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["tid"] == job["tid"])
            .map(|t| t["rss_growth_bytes"].as_i64().unwrap())
            .sum()
    };
    assert!(
        jobs.iter().any(|j| thread_grew(j) as f64 >= truth / 2.0),
        "no leaky job's thread grew {truth} bytes: {jobs:#?}"
    );

    // Per thread: the child's busiest thread is the one that ran the leaking task.
    let child = children[0] as u32;
    let p = wait_for(Duration::from_secs(5), || {
        agent
            .process(child)
            .filter(|p| p["threads"].as_array().is_some_and(|t| !t.is_empty()))
    })
    .unwrap_or_else(|| {
        panic!(
            "no per-thread numbers for {child}: {:?}",
            agent.process(child)
        )
    });
    let top = &p["threads"][0];
    assert!(
        top["rss_growth_bytes"].as_f64().unwrap() >= truth,
        "top thread of {child}: {top:#}"
    );

    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_task_leak_suspected", &[("task", LEAKY)]),
        Some(1.0)
    );
    assert_eq!(
        m.value("leakscope_task_leak_suspected", &[("task", CLEAN)]),
        Some(0.0)
    );
    assert_eq!(
        m.value("leakscope_task_runs_total", &[("task", LEAKY)]),
        Some(RUNS as f64)
    );
    assert_eq!(
        m.value("leakscope_task_retained_bytes_count", &[("task", CLEAN)]),
        Some(RUNS as f64)
    );
    assert!(
        !m.find(
            "leakscope_thread_rss_growth_bytes",
            &[("pid", &child.to_string())]
        )
        .is_empty(),
        "no thread series for {child}"
    );
    let dropped: f64 = m
        .find("leakscope_markers_dropped_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(dropped, 0.0, "markers dropped:\n{}", m.text);
    assert_eq!(
        m.value("leakscope_markers_received_total", &[]),
        Some((4 * RUNS) as f64)
    );
    drop(worker);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn markers_from_a_process_are_measured_and_hostile_ones_dropped() {
    let test = "markers_from_a_process_are_measured_and_hostile_ones_dropped";
    if !kernel_tests_enabled(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leakscope-markers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("tasks.sock");
    let agent = Agent::start(&["--task-socket", &socket.to_string_lossy()]);
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for bad in [
        &b"LS1 begin"[..],
        b"LS9 begin t",
        b"LS1 begin t status=ok",
        b"LS1 end nothing.open",
        &[b'x'; 1000][..],
    ] {
        sender.send_to(bad, &socket).unwrap();
    }
    // This test process is the sender: its pid comes from the kernel, not the message.
    sender
        .send_to(b"LS1 begin local.job job=1 tid=1", &socket)
        .unwrap();
    sender.send_to(b"LS1 end local.job job=1", &socket).unwrap();
    let v = wait_for(Duration::from_secs(5), || {
        let v = tasks_json(&agent);
        (task(&v, "local.job")?["runs"] == 1).then_some(v)
    })
    .unwrap_or_else(|| panic!("job not recorded: {:#}", tasks_json(&agent)));
    let job = &task(&v, "local.job").unwrap()["recent_jobs"][0];
    assert_eq!(job["pid"].as_u64(), Some(u64::from(std::process::id())));
    assert!(job["tid"].is_null(), "tid=1 is not ours: {job:#}");
    // This test process predates the agent and may not have changed its anon RSS since:
    // then the numbers come from /proc.
    assert!(
        job["source"] == "kernel" || job["source"] == "proc",
        "{job:#}"
    );
    let d = &v["markers"]["dropped"];
    for reason in [
        "missing_task",
        "unsupported_version",
        "status_on_begin",
        "unmatched_end",
        "too_long",
    ] {
        assert_eq!(d[reason], 1, "{reason}: {d:#}");
    }
    assert_eq!(v["markers"]["tid_unverified"], 1);
    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_markers_dropped_total", &[("reason", "too_long")]),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "leakscope_markers_dropped_total",
            &[("reason", "uid_rate_limited")]
        ),
        Some(0.0)
    );
    drop(agent);
    assert!(!socket.exists(), "the agent removes its socket at exit");
    let _ = std::fs::remove_dir_all(&dir);
}
