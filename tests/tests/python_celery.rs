//! A real Celery worker (Redis broker, solo pool) running tests/celery_app: while a client
//! enqueues runs of a task that leaks and of one that releases what it takes, `leakscope
//! investigate` names the leaking task's function, file and line, without any help from the
//! worker.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{Spawned, agent_bin, free_port, kernel_tests_enabled, wait_for};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The virtualenv `cargo xtask setup --tests` prepared (CPython 3.11 with Celery and redis).
fn python() -> String {
    std::env::var("LEAKSCOPE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn celery_present() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(python())
            .args(["-c", "import celery, redis"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        let why = format!(
            "redis-server or Celery for {} missing; `cargo xtask setup --tests` installs them",
            python()
        );
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true: {why}"
        );
        eprintln!("SKIPPED {why}");
    }
    ok
}

fn redis() -> (Spawned, u16) {
    let port = free_port();
    let server = Spawned::new(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
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
    assert!(up.is_some(), "redis-server did not answer on port {port}");
    (server, port)
}

fn app_cmd(broker: &str) -> Command {
    let app_dir = root().join("tests/celery_app");
    let mut cmd = Command::new(python());
    cmd.current_dir(&app_dir)
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                root().join("integrations/python/src").display(),
                app_dir.display()
            ),
        )
        // No agent listens: the markers are dropped, which the hook tolerates.
        .env(
            "LEAKSCOPE_SOCKET",
            "/nonexistent/leakscope-python-celery.sock",
        )
        .env("LEAKSCOPE_TEST_BROKER", broker)
        .env("LEAKSCOPE_TEST_LEAK_BYTES", (256 << 10).to_string())
        .env("LEAKSCOPE_TEST_CLEAN_BYTES", (1 << 20).to_string())
        // As in tasks.rs: glibc's dynamic mmap threshold would keep `clean`'s freed buffers in
        // the heap, where `leaky` reuses pages `clean` faulted in first, and growth mode
        // charges a page to the code that first touched it. Alloc mode is immune.
        .env("MALLOC_MMAP_THRESHOLD_", "131072");
    cmd
}

/// Enqueues a run of each task every 20 ms for up to two minutes.
const PACED_CLIENT: &str = "\
import time
from leakscope_test_app import clean, leaky
end = time.monotonic() + 120
while time.monotonic() < end:
    leaky.delay()
    clean.delay()
    time.sleep(0.02)
";

#[test]
fn investigate_names_the_leaking_celery_task_function() {
    if !kernel_tests_enabled("investigate_names_the_leaking_celery_task_function")
        || !celery_present()
    {
        return;
    }
    let (_redis, port) = redis();
    let broker = format!("redis://127.0.0.1:{port}/0");
    let log = std::env::temp_dir().join(format!("leakscope-py-celery-{}.log", std::process::id()));
    let worker = Spawned::new(
        app_cmd(&broker)
            .args(["-m", "celery", "-A", "leakscope_test_app", "worker"])
            .args(["--pool", "solo", "--without-gossip", "--without-mingle"])
            .args(["--without-heartbeat", "--loglevel", "INFO"])
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let ready = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains(" ready."))
    });
    assert!(
        ready.is_some(),
        "worker not ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Paced runs for longer than the trace (the client is killed when the test ends): a
    // queue drained before the trace would leave nothing to see.
    let _client = Spawned::new(
        app_cmd(&broker)
            .args(["-c", PACED_CLIENT])
            .stderr(Stdio::null()),
    );
    // Traced once runs flow, not while the client starts up.
    let flowing = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.matches("leakscope_test.leaky").count() >= 6)
    });
    assert!(
        flowing.is_some(),
        "no runs of leaky: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let out = Command::new(agent_bin())
        .args(["investigate", "--pid", &worker.pid().to_string(), "--json"])
        .args(["--mode", "both", "--duration", "8s", "--min-age", "1s"])
        .output()
        .expect("run leakscope investigate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (mode, source) in [("growth", "page_fault"), ("alloc", "alloc")] {
        let report = reports.iter().find(|r| r["mode"] == mode).unwrap();
        let top = report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == source)
            .unwrap_or_else(|| panic!("no {source} stacks: {report}"));
        let user = top["frames"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| {
                f["python"] == true
                    && !f["file"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("/lib/python3")
            })
            .unwrap_or_else(|| panic!("{mode}: no user Python frame in the top stack: {top}"));
        assert_eq!(user["function"], "leaky", "{mode}: {top}");
        assert!(
            user["file"]
                .as_str()
                .unwrap()
                .ends_with("leakscope_test_app.py"),
            "{mode}: {user}"
        );
        assert!(user["line"].as_u64().is_some_and(|l| l > 0), "{user}");
        // Celery's own frames are below it, in site-packages.
        assert!(
            top["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["file"].as_str().is_some_and(|p| p.contains("/celery/"))),
            "{mode}: {top}"
        );
    }
    // Without task markers, folded by the user entry frame: the top row is the task function
    // Celery called.
    let out = Command::new(agent_bin())
        .args(["investigate", "--pid", &worker.pid().to_string(), "--json"])
        .args([
            "--mode",
            "growth",
            "--duration",
            "5s",
            "--fold",
            "user-entry",
        ])
        .output()
        .expect("run leakscope investigate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let growth = &reports[0];
    let top = growth["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "page_fault")
        .unwrap_or_else(|| panic!("no page_fault stacks: {growth}"));
    let entry = &top["frames"][0];
    assert_eq!(entry["function"], "leaky", "{top}");
    assert!(
        entry["file"]
            .as_str()
            .unwrap()
            .ends_with("leakscope_test_app.py"),
        "{entry}"
    );
    let _ = std::fs::remove_file(&log);
}
