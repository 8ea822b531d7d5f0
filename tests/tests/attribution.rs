//! Which task type leaks, on real workers: a real redis-server, real Celery (prefork and
//! threads) and RQ workers running tests/attribution_app with the integrations' hooks, and the
//! real agent. One type keeps a ~200 KiB object graph per run, far under the allocator's and
//! the kernel's steps; the other allocates and frees 8 MiB. Without malloc tuning the pages
//! move between them (the graph fills what the churn left free), so leakscope must go by the
//! allocator blocks the worker reports with each end: it must name the graph and not the
//! churn, in both orders of enqueueing, in a pool of processes, in one process of threads
//! whose jobs overlap, and in RQ's work horses (one process per job).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{Agent, Spawned, free_port, kernel_tests_enabled, wait_for};
use serde_json::Value;

const KEEP: &str = "attribution.keep_graph";
const CHURN: &str = "attribution.churn";
const RQ_KEEP: &str = "attribution_jobs.keep_graph";
const RQ_CHURN: &str = "attribution_jobs.churn";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python `cargo xtask setup --tests` prepared (its virtualenv), else the system's.
fn python() -> String {
    std::env::var("LEAKSCOPE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether redis-server, Celery and RQ are here; under CI=true a missing one fails the test.
fn dependencies_present(test: &str) -> bool {
    let ran = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ran(Command::new("redis-server").arg("--version"))
        && ran(Command::new(python()).args(["-c", "import celery, redis, rq"]))
    {
        return true;
    }
    let why = format!(
        "{test}: redis-server, or celery/redis/rq for {}, missing; \
         `cargo xtask setup --tests` installs them",
        python()
    );
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "{why} (under CI=true this test may not be skipped)"
    );
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
        assert!(up.is_some(), "redis-server did not answer on port {port}");
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
    let app = root().join("tests/attribution_app");
    let pythonpath = format!(
        "{}:{}",
        root().join("integrations/python/src").display(),
        app.display()
    );
    let mut cmd = Command::new(python());
    cmd.current_dir(&app)
        .env("PYTHONPATH", pythonpath)
        .env("LEAKSCOPE_SOCKET", socket)
        .env("LEAKSCOPE_TEST_BROKER", broker);
    cmd
}

/// A worker, a client that enqueues, and the agent watching; gives `/api/v1/tasks` once every
/// run is in and fitted, and what one run of the graph keeps.
struct Run<'a> {
    test: &'a str,
    /// Celery's `--pool` (with its concurrency), or None for RQ's forking worker.
    celery_pool: Option<(&'a str, u32)>,
    runs: u64,
    order: &'a str,
}

impl Run<'_> {
    fn go(&self) -> Option<(Value, f64)> {
        if !kernel_tests_enabled(self.test) || !dependencies_present(self.test) {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "leakscope-attr-{}-{}",
            std::process::id(),
            self.test
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("tasks.sock");
        let agent = Agent::start(&[
            "--task-socket",
            &socket.to_string_lossy(),
            "--match",
            "cmdline=attribution",
        ]);
        let redis = Redis::start();
        let worker_log = dir.join("worker.log");
        let log = || std::fs::read_to_string(&worker_log).unwrap_or_default();
        let kind = if self.celery_pool.is_some() {
            "celery"
        } else {
            "rq"
        };
        let mut worker = self.celery_pool.map(|(pool, concurrency)| {
            Spawned::new(
                python_cmd(&socket, &redis.url())
                    .args(["-m", "celery", "-A", "attribution_celery", "worker"])
                    .args(["--pool", pool, "--concurrency", &concurrency.to_string()])
                    .args([
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ])
                    .args(["--loglevel", "WARNING"])
                    .stderr(std::fs::File::create(&worker_log).unwrap()),
            )
        });
        let out = python_cmd(&socket, &redis.url())
            .args(["enqueue.py", kind, &self.runs.to_string(), self.order])
            .output()
            .expect("run the enqueue client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "enqueue failed: {stdout}\n{}\nworker log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            log()
        );
        let graph_bytes: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("graph_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no graph_bytes in {stdout:?}"));
        if self.celery_pool.is_none() {
            // RQ: a burst worker runs what is queued, each job in a work horse, and exits.
            let mut rq = python_cmd(&socket, &redis.url())
                .args(["-m", "rq.cli", "worker", "--burst", "--url", &redis.url()])
                .args(["--job-class", "leakscope.rq.LeakscopeJob", "attribution"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&worker_log).unwrap())
                .spawn()
                .expect("start rq worker");
            let deadline = Instant::now() + Duration::from_secs(240);
            while rq.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = rq.kill();
                    panic!("rq worker did not finish; log:\n{}", log());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let (keep, churn) = if kind == "rq" {
            (RQ_KEEP, RQ_CHURN)
        } else {
            (KEEP, CHURN)
        };
        // Every end is in, and the fit has seen them all.
        let v = wait_for(Duration::from_secs(30), || {
            let v = tasks_json(&agent);
            let fitted = |name| {
                task(&v, name).is_some_and(|t| {
                    t["runs"].as_u64() == Some(self.runs)
                        && t["verdict"]["allocator"]["runs"].as_u64() == Some(self.runs)
                })
            };
            (fitted(keep) && fitted(churn)).then_some(v)
        })
        .unwrap_or_else(|| {
            panic!(
                "not all runs fitted: {:#}\nagent log:\n{}\nworker log:\n{}",
                tasks_json(&agent),
                agent.log(),
                log()
            )
        });
        worker.take();
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
        Some((v, graph_bytes))
    }
}

fn tasks_json(agent: &Agent) -> Value {
    let (status, body) = agent.get("/api/v1/tasks");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("tasks JSON")
}

fn task<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["tasks"].as_array()?.iter().find(|t| t["task"] == name)
}

/// The graph is named with about its size and most of the floor's rise; the churn is not.
/// `low` is the least fraction of the graph's size the bytes a run may show.
fn check(v: &Value, graph_bytes: f64, keep: &str, churn: &str, low: f64) {
    let k = task(v, keep).unwrap();
    let c = task(v, churn).unwrap();
    eprintln!("{keep}: {}", k["verdict"]["evidence"]);
    eprintln!("{churn}: {}", c["verdict"]["evidence"]);
    assert_eq!(k["leak_suspected"], true, "{k:#}");
    let a = &k["verdict"]["allocator"];
    assert_eq!(a["leak_suspected"], true, "{a:#}");
    // Pages the graph takes beyond its objects (pymalloc's pools and arenas, dict tables)
    // make the bytes a run larger than what the tracer counts; not several times over.
    let per_run = a["bytes_per_run"].as_f64().unwrap();
    assert!(
        per_run >= graph_bytes * low && per_run <= graph_bytes * 3.0,
        "{keep} keeps {per_run} bytes a run, its graph is {graph_bytes}: {a:#}"
    );
    assert!(a["bytes_low"].as_f64().unwrap() > 0.0, "{a:#}");
    assert!(a["share"].as_f64().unwrap() >= 0.5, "{a:#}");
    assert_eq!(
        k["retained_bytes_per_run"].as_f64(),
        Some(per_run.trunc()),
        "{k:#}"
    );
    assert!(
        k["verdict"]["evidence"]
            .as_str()
            .unwrap()
            .contains("allocator blocks a run (95%:"),
        "{k:#}"
    );
    assert_eq!(c["leak_suspected"], false, "{c:#}");
    assert_eq!(c["verdict"]["allocator"]["leak_suspected"], false, "{c:#}");
}

#[test]
fn celery_prefork_names_the_small_leak_not_the_churn_leak_first() {
    let run = Run {
        test: "celery_prefork_names_the_small_leak_not_the_churn_leak_first",
        celery_pool: Some(("prefork", 3)),
        runs: 200,
        order: "keep-first",
    };
    if let Some((v, graph)) = run.go() {
        check(&v, graph, KEEP, CHURN, 0.5);
    }
}

#[test]
fn celery_prefork_names_the_small_leak_not_the_churn_churn_first() {
    let run = Run {
        test: "celery_prefork_names_the_small_leak_not_the_churn_churn_first",
        celery_pool: Some(("prefork", 3)),
        runs: 200,
        order: "churn-first",
    };
    if let Some((v, graph)) = run.go() {
        check(&v, graph, KEEP, CHURN, 0.5);
    }
}

#[test]
fn celery_threads_names_the_small_leak_though_jobs_overlap() {
    let run = Run {
        test: "celery_threads_names_the_small_leak_though_jobs_overlap",
        celery_pool: Some(("threads", 4)),
        runs: 300,
        order: "keep-first",
    };
    if let Some((v, graph)) = run.go() {
        check(&v, graph, KEEP, CHURN, 0.5);
    }
}

#[test]
fn rq_work_horses_name_the_small_leak_not_the_churn() {
    let run = Run {
        test: "rq_work_horses_name_the_small_leak_not_the_churn",
        celery_pool: None,
        runs: 120,
        order: "churn-first",
    };
    if let Some((v, graph)) = run.go() {
        // A work horse's graph first fills free room its heap inherited from the worker at
        // fork, so the pages it adds are fewer (measured: half to three quarters).
        check(&v, graph, RQ_KEEP, RQ_CHURN, 0.25);
    }
}
