//! A local unprivileged user against the task-marker socket (mode 0666): what they send is
//! budgeted per uid, however many processes send it; their markers never turn on anything
//! host-wide; and a directory they control is never where the root agent puts its socket.
//!
//! The user is `nobody`, through `runuser`; its senders are /usr/bin/python3 (the test venv's
//! interpreter may sit under a directory only root can enter). Markers from root are sent by
//! this test process. The socket of `Agent::start` is in /tmp (root's, sticky), which the
//! agent accepts: others cannot remove or rename its entry there.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::MetadataExt as _, net::UnixDatagram, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, SharedTmp, as_unprivileged, kernel_tests_enabled, unprivileged_uid, wait_for,
};

const PYTHON: &str = "/usr/bin/python3";

/// The socket `Agent::start` gives an agent of its own.
fn socket_of(agent: &Agent) -> PathBuf {
    std::env::temp_dir().join(format!("leakscope-test-{}.sock", agent.addr.port()))
}

fn dropped(agent: &Agent, reason: &str) -> f64 {
    agent
        .metrics()
        .value("leakscope_markers_dropped_total", &[("reason", reason)])
        .unwrap_or_else(|| panic!("no dropped counter for {reason}"))
}

fn tasks_json(agent: &Agent) -> serde_json::Value {
    let (status, body) = agent.get("/api/v1/tasks");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("tasks JSON")
}

/// Python, as the unprivileged user, run with `script` and `args`: it forks `procs` senders,
/// prints `ready` once they wait, starts them on a line on its stdin, prints `sent` when every
/// one has sent, and keeps them alive (their jobs open) until it is killed.
fn unprivileged_senders(script: &str, procs: usize, args: &[&str]) -> (Group, Senders) {
    let driver = format!(
        r#"
import os, socket, sys
procs = {procs}
path = sys.argv[1]
args = sys.argv[2:]
def send_all(me):
{script}
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
hold_r, hold_w = os.pipe()
for me in range(procs):
    if os.fork() == 0:
        os.close(go_w); os.close(hold_w)
        os.read(go_r, 1)
        send_all(me)
        os.write(done_w, b"x")
        os.read(hold_r, 1)
        os._exit(0)
os.close(go_r); os.close(done_w); os.close(hold_r)
print("ready", flush=True)
sys.stdin.readline()
os.write(go_w, b"x" * procs)
got = 0
while got < procs:
    got += len(os.read(done_r, procs))
print("sent", flush=True)
sys.stdin.readline()
"#
    );
    let mut child = as_unprivileged(PYTHON)
        .arg("-c")
        .arg(driver)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the unprivileged senders");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let group = Group(child);
    let mut s = Senders { stdin, stdout };
    s.expect("ready");
    (group, s)
}

/// The senders' process group, killed whole when dropped.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: a plain signal to the process group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

struct Senders {
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Senders {
    fn expect(&mut self, what: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the senders");
        assert_eq!(line.trim(), what, "the unprivileged senders said {line:?}");
    }

    fn go(&mut self) {
        writeln!(self.stdin, "go").expect("start the senders");
    }
}

/// Root's markers, from this process: `n` jobs of `task`, begun and ended.
fn root_jobs(socket: &Path, task: &str, n: usize) {
    let s = UnixDatagram::unbound().unwrap();
    for i in 0..n {
        s.send_to(format!("LS1 begin {task} job={i}").as_bytes(), socket)
            .unwrap();
        s.send_to(format!("LS1 end {task} job={i}").as_bytes(), socket)
            .unwrap();
    }
}

fn root_runs(agent: &Agent, task: &str) -> Option<f64> {
    agent
        .metrics()
        .value("leakscope_task_runs_total", &[("task", task)])
}

#[test]
fn a_flood_from_many_processes_of_one_uid_stays_within_that_uids_budget() {
    if !kernel_tests_enabled("a_flood_from_many_processes_of_one_uid_stays_within_that_uids_budget")
    {
        return;
    }
    const PROCS: usize = 16;
    const EACH: usize = 5000;
    const RATE: f64 = 200.0;
    const ROOT_JOBS: usize = 50;
    let agent = Agent::start(&["--marker-rate", "200"]);
    let socket = socket_of(&agent);
    // Blocking sends: when the queue is full a sender waits, so every datagram reaches the
    // agent and is counted one way or the other. `end`s that pass the budget match nothing
    // (unmatched_end), which counts exactly what the uid got through.
    let (_flood, mut senders) = unprivileged_senders(
        &format!(
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    \
             for i in range({EACH}):\n        s.sendto(b'LS1 end flood.x', path)"
        ),
        PROCS,
        &[&socket.to_string_lossy()],
    );
    let started = Instant::now();
    senders.go();
    // Root's jobs go in while the flood does.
    root_jobs(&socket, "root.during_flood", ROOT_JOBS);
    senders.expect("sent");
    let total = (PROCS * EACH) as f64;
    let counted = wait_for(Duration::from_secs(60), || {
        let through = dropped(&agent, "unmatched_end");
        let limited = dropped(&agent, "uid_rate_limited");
        (through + limited >= total).then_some((through, limited))
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (through, limited) = counted.unwrap_or_else(|| {
        panic!(
            "not every datagram of the flood was counted:\n{}",
            agent.metrics().text
        )
    });
    // The uid's bucket: its burst (one second's worth) and its rate since the flood began.
    let bound = RATE + RATE * elapsed + 1.0;
    eprintln!("{through} of {total} markers got through in {elapsed:.2} s (bound {bound:.0})");
    assert!(
        through <= bound,
        "{through} markers of one uid got through in {elapsed:.2} s, more than its budget \
         {bound:.0}"
    );
    assert_eq!(through + limited, total);
    assert!(
        limited >= total - bound,
        "{limited} counted as uid_rate_limited"
    );
    // Root's markers, sent during the flood, all went in: a budget of their own.
    let runs = wait_for(Duration::from_secs(10), || {
        root_runs(&agent, "root.during_flood").filter(|r| *r == ROOT_JOBS as f64)
    });
    assert!(
        runs.is_some(),
        "root's jobs: {:?}\n{}",
        root_runs(&agent, "root.during_flood"),
        agent.metrics().text
    );
    let m = agent.metrics();
    assert_eq!(
        m.value("leakscope_markers_received_total", &[]),
        Some(2.0 * ROOT_JOBS as f64)
    );
    assert_eq!(
        m.value(
            "leakscope_markers_dropped_total",
            &[("reason", "cgroup_rate_limited")]
        ),
        Some(0.0),
        "one uid cannot spend its cgroup's budget alone"
    );
}

#[test]
fn one_user_cannot_squat_task_names_or_open_jobs() {
    if !kernel_tests_enabled("one_user_cannot_squat_task_names_or_open_jobs") {
        return;
    }
    // 40 names: a uid may register 16 (the floor is above a quarter).
    const MAX_TASKS: usize = 40;
    const SHARE: usize = 16;
    let agent = Agent::start(&["--max-tasks", &MAX_TASKS.to_string()]);
    let socket = socket_of(&agent);
    let socket_arg = socket.to_string_lossy().into_owned();

    // More names than the whole table: on an agent without shares, root's task would then
    // land in (overflow).
    let names = MAX_TASKS + 20;
    let (squatter, mut senders) = unprivileged_senders(
        &format!(
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    \
             for i in range(me, {names}, 4):\n        \
             s.sendto(b'LS1 begin squat.%d' % i, path)\n        \
             s.sendto(b'LS1 end squat.%d' % i, path)"
        ),
        4,
        &[&socket_arg],
    );
    senders.go();
    senders.expect("sent");
    let refused = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics();
        let v = m.value(
            "leakscope_share_refused_total",
            &[("table", "task_names"), ("owner", "uid")],
        )?;
        (v == (names - SHARE) as f64).then_some(m)
    })
    .unwrap_or_else(|| panic!("squatting not refused:\n{}", agent.metrics().text));
    let own = refused
        .find("leakscope_task_runs_total", &[])
        .iter()
        .filter(|s| s.labels["task"].starts_with("squat."))
        .count();
    assert_eq!(
        own, SHARE,
        "names of the unprivileged user with series of their own"
    );
    assert_eq!(
        refused.value("leakscope_task_runs_total", &[("task", "(overflow)")]),
        Some((names - SHARE) as f64)
    );
    drop(squatter);

    root_jobs(&socket, "root.legit", 1);
    let own = wait_for(Duration::from_secs(5), || root_runs(&agent, "root.legit"));
    assert_eq!(
        own,
        Some(1.0),
        "root's task has no series of its own:\n{}",
        agent.metrics().text
    );

    // Open jobs: 200 processes keep 16 jobs open each (one key per process: their tid= is
    // not sent), 3200 in all; a uid may hold 2048 of the agent's 8192.
    const PROCS: usize = 200;
    const DEPTH: usize = 16;
    const JOBS_SHARE: usize = 2048;
    let (_holders, mut senders) = unprivileged_senders(
        &format!(
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    \
             for i in range({DEPTH}):\n        \
             s.sendto(b'LS1 begin hold job=%d.%d' % (me, i), path)"
        ),
        PROCS,
        &[&socket_arg],
    );
    senders.go();
    senders.expect("sent");
    let sent = (PROCS * DEPTH) as f64;
    let over = sent - JOBS_SHARE as f64;
    let seen = wait_for(Duration::from_secs(20), || {
        let v = tasks_json(&agent);
        let refused = dropped(&agent, "uid_open_jobs_share");
        (refused >= over).then_some((v["open_jobs"].as_f64()?, refused))
    });
    let (open, refused) = seen.unwrap_or_else(|| {
        panic!(
            "open jobs of one uid not refused beyond its share: {:#}",
            tasks_json(&agent)["markers"]
        )
    });
    assert_eq!(refused, over);
    assert_eq!(open, JOBS_SHARE as f64);
    // Root still opens and ends its jobs.
    root_jobs(&socket, "root.after_squat", 3);
    let runs = wait_for(Duration::from_secs(5), || {
        root_runs(&agent, "root.after_squat").filter(|r| *r == 3.0)
    });
    assert!(runs.is_some(), "{:#}", tasks_json(&agent)["markers"]);
    assert_eq!(dropped(&agent, "too_many_open_jobs"), 0.0);
}

const ATTACHED: &str = "per-thread uprobes attached";

#[test]
fn markers_turn_the_per_thread_uprobes_on_only_for_an_opted_in_uid() {
    if !kernel_tests_enabled("markers_turn_the_per_thread_uprobes_on_only_for_an_opted_in_uid") {
        return;
    }
    let uid = unprivileged_uid().to_string();
    let job = "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    \
               s.sendto(b'LS1 begin user.job job=%d' % me, path)\n    \
               s.sendto(b'LS1 end user.job job=%d' % me, path)";

    // Not opted in: the user's jobs are measured, and nothing host-wide is attached.
    let agent = Agent::start(&[]);
    let socket = socket_of(&agent);
    let (sender, mut senders) = unprivileged_senders(job, 4, &[&socket.to_string_lossy()]);
    senders.go();
    senders.expect("sent");
    let runs = wait_for(Duration::from_secs(5), || {
        root_runs(&agent, "user.job").filter(|r| *r == 4.0)
    });
    assert!(runs.is_some(), "{:#}", tasks_json(&agent));
    // The senders live on: several intervals (200 ms each) in which anything would attach.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!agent.log().contains(ATTACHED), "{}", agent.log());
    let m = agent.metrics();
    assert_eq!(m.value("leakscope_threads_processes", &[]), Some(0.0));
    assert_eq!(
        m.value("leakscope_probe_events_total", &[("probe", "mem_uprobes")])
            .unwrap_or(0.0),
        0.0
    );
    drop(sender);
    drop(agent);

    // Opted in with --threads-for-uid: the same markers turn per-thread accounting on.
    let agent = Agent::start(&["--threads-for-uid", &uid]);
    let socket = socket_of(&agent);
    let (_sender, mut senders) = unprivileged_senders(job, 4, &[&socket.to_string_lossy()]);
    senders.go();
    senders.expect("sent");
    let on = wait_for(Duration::from_secs(6), || {
        agent.log().contains(ATTACHED).then_some(())
    });
    assert!(on.is_some(), "not attached for uid {uid}:\n{}", agent.log());
    let processes = agent
        .metrics()
        .value("leakscope_threads_processes", &[])
        .unwrap_or(0.0);
    assert!(
        processes >= 4.0,
        "{processes} processes with per-thread accounting"
    );
}

/// `--task-socket` in `dir`; the agent runs on without markers when it refuses the place.
fn refused_socket(dir: &Path) -> (Agent, PathBuf) {
    let socket = dir.join("tasks.sock");
    let agent = Agent::start(&["--task-socket", &socket.to_string_lossy()]);
    (agent, socket)
}

fn assert_markers_off(agent: &Agent, socket: &Path, why: &str) {
    let (status, health) = agent.get("/healthz");
    assert_eq!(status, 200, "the agent serves on without markers");
    assert!(
        health.contains("task markers are off") && health.contains(why),
        "/healthz: {health}\nlog:\n{}",
        agent.log()
    );
    assert!(agent.log().contains(why), "{}", agent.log());
    assert!(tasks_json(agent)["socket"].is_null());
    assert!(
        std::fs::symlink_metadata(socket).is_err(),
        "{} was created",
        socket.display()
    );
}

#[test]
fn a_socket_directory_another_user_controls_is_refused_and_a_symlink_not_followed() {
    if !kernel_tests_enabled(
        "a_socket_directory_another_user_controls_is_refused_and_a_symlink_not_followed",
    ) {
        return;
    }
    let shared = SharedTmp::new("marker-dirs");
    let run_as_user = |args: &[&str]| {
        let status = as_unprivileged(args[0])
            .args(&args[1..])
            .status()
            .expect("runuser");
        assert!(status.success(), "{args:?} as the unprivileged user");
    };

    // The user made the directory first (the default path's /run/leakscope is root's, but
    // any path under a shared directory can be taken this way).
    let owned = shared.0.join("owned");
    run_as_user(&["mkdir", &owned.to_string_lossy()]);
    assert_eq!(std::fs::metadata(&owned).unwrap().uid(), unprivileged_uid());
    let (agent, socket) = refused_socket(&owned);
    assert_markers_off(&agent, &socket, "owned by uid");
    drop(agent);

    // Root's, but writable by anyone and not sticky.
    let open = shared.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (agent, socket) = refused_socket(&open);
    assert_markers_off(&agent, &socket, "writable by group or others");
    drop(agent);

    // A symlink planted where the directory would be, to a directory only root may write.
    let target = std::env::temp_dir().join(format!("leakscope-target-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir(&target).unwrap();
    let link = shared.0.join("link");
    run_as_user(&[
        "ln",
        "-s",
        &target.to_string_lossy(),
        &link.to_string_lossy(),
    ]);
    let (agent, socket) = refused_socket(&link);
    assert_markers_off(&agent, &socket, "symbolic link");
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "the agent put something in the symlink's target"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&target);

    // A directory the agent creates itself in the shared one is fine, and workers of any
    // user reach the socket in it.
    let made = shared.0.join("made");
    let socket = made.join("tasks.sock");
    let agent = Agent::start(&["--task-socket", &socket.to_string_lossy()]);
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
    let sent = as_unprivileged(PYTHON)
        .arg("-c")
        .arg(
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             s.sendto(b'LS1 begin user.ok', sys.argv[1])\n\
             s.sendto(b'LS1 end user.ok', sys.argv[1])",
        )
        .arg(&socket)
        .status()
        .expect("send as the unprivileged user");
    assert!(sent.success());
    let runs = wait_for(Duration::from_secs(5), || root_runs(&agent, "user.ok"));
    assert_eq!(runs, Some(1.0), "{}", agent.log());
    assert_eq!(agent.get("/healthz").1.trim(), "ok");
}
