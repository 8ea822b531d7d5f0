//! Harness for tests that run the real agent, as root, against real processes.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use dev_agent::Launch;
use leakscope_api::paths;

pub const MIB: u64 = 1 << 20;

/// True when kernel tests can run. Outside CI a missing privilege skips with a printed reason;
/// under `CI=true` it fails the test.
pub fn kernel_tests_enabled(test: &str) -> bool {
    let euid = unsafe { libc::geteuid() };
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    let privileged = cap_eff & CAP_SYS_ADMIN != 0
        || cap_eff & (CAP_BPF | CAP_PERFMON) == (CAP_BPF | CAP_PERFMON);
    if euid == 0 && privileged {
        return true;
    }
    let why = format!(
        "{test}: needs root with CAP_BPF and CAP_PERFMON (euid {euid}, CapEff {cap_eff:#x})"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{why}: under CI=true a kernel test may not be skipped");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// The agent binary `cargo xtask test` built.
pub fn agent_bin() -> PathBuf {
    let path = std::env::var_os("LEAKSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/leakscope")
        });
    assert!(
        path.is_file(),
        "agent binary {} not found: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    dev_agent::free_port().expect("no free loopback port")
}

/// A running `leakscope run`, started and stopped (when dropped) by the launcher xtask's
/// benchmarks use too.
pub struct Agent {
    inner: dev_agent::Agent,
    pub addr: SocketAddr,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_listening(addr, extra)
    }

    /// An agent serving on `listen`; an unspecified address (0.0.0.0) is reached, by the
    /// harness, on loopback.
    pub fn start_listening(listen: SocketAddr, extra: &[&str]) -> Self {
        let tmp = std::env::temp_dir();
        let mut launch = Launch::new(agent_bin())
            .listen(listen)
            .log(tmp.join(format!("leakscope-test-{}.log", listen.port())));
        // Quick by default; a test that needs a long interval gives its own.
        if !extra.contains(&"--interval") {
            launch = launch.args(["--interval", "200ms"]);
        }
        // A task socket of its own, so that test agents never contend for the default path
        // with each other or with an agent running on the host.
        let own_socket = !extra
            .iter()
            .any(|a| *a == "--task-socket" || *a == "--no-task-socket");
        if own_socket {
            let socket = tmp.join(format!("leakscope-test-{}.sock", listen.port()));
            launch = launch.arg("--task-socket").arg(socket);
        }
        let inner = launch.args(extra).start().unwrap_or_else(|e| panic!("{e}"));
        Self {
            addr: inner.addr(),
            inner,
        }
    }

    pub fn log(&self) -> String {
        self.inner.log()
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// SIGTERM, then up to `within` for the agent to exit by itself: its status, or None while
    /// it still runs (dropping the agent then kills it).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.inner.terminate(within)
    }

    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        self.inner.get(path).ok()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed; agent log:\n{}", self.log()))
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    pub fn process(&self, pid: u32) -> Option<serde_json::Value> {
        let (_, body) = self.get(&format!("{}?pid={pid}", paths::PROCESSES));
        let v: serde_json::Value = serde_json::from_str(&body).expect("processes JSON");
        v["processes"].as_array()?.first().cloned()
    }
}

/// SIGTERM, up to five seconds to exit, then SIGKILL; always reaped.
pub fn stop(child: &mut Child) {
    dev_agent::stop(child, Duration::from_secs(5));
}

/// One sample of the exposition: name, labels, value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.trim_matches('"').to_string()))
                    })
                    .collect();
                Some(Sample {
                    name: name.to_string(),
                    labels,
                    value: value.parse().ok()?,
                })
            })
            .collect();
        Self {
            samples,
            text: text.to_string(),
        }
    }

    /// Samples of `name` whose labels include every pair in `with`.
    pub fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    pub fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.find(name, with).first().map(|s| s.value)
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `memhog` binary cargo builds beside the test executables (`target/<profile>/memhog`).
pub fn memhog_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps layout");
    let bin = profile_dir.join("memhog");
    assert!(bin.is_file(), "{} not built", bin.display());
    bin
}

/// A child process that grows its anonymous memory on command (the `memhog` binary).
pub struct MemHog {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl MemHog {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(Command::new(memhog_bin()).args(args))
    }

    pub fn spawn_with(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn memhog");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let pid = child.id();
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    fn command(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to memhog");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read from memhog");
        answer
    }

    pub fn grow(&mut self, mib: u64) {
        let a = self.command(&format!("grow {mib}"));
        assert!(a.starts_with("grown"), "memhog answered {a:?}");
    }

    /// Asks for `mib` more; the process may be killed on the way (an OOM kill), which is fine.
    pub fn try_grow(&mut self, mib: u64) {
        let _ = writeln!(self.stdin, "grow {mib}");
        let mut answer = String::new();
        let _ = self.stdout.read_line(&mut answer);
    }

    /// Releases everything it grew.
    pub fn free(&mut self) {
        let a = self.command("free");
        assert!(a.starts_with("freed"), "memhog answered {a:?}");
    }

    /// Exits with `code` and is reaped; returns once the pid is gone.
    pub fn exit_with(mut self, code: u8) -> u32 {
        let _ = writeln!(self.stdin, "exit {code}");
        let status = self.child.wait().expect("reap memhog");
        assert_eq!(status.code(), Some(i32::from(code)), "{status}");
        self.pid
    }

    /// Exits and is reaped; returns once the pid is gone.
    pub fn exit(mut self) -> u32 {
        let _ = writeln!(self.stdin, "exit");
        self.child.wait().expect("reap memhog");
        self.pid
    }
}

impl Drop for MemHog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in bytes.
pub fn vmrss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A compiled C scenario from `scenarios/c/` (built once with `make`, into the target dir).
pub fn scenario_bin(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/scenarios");
    let status = Command::new("make")
        .args(["-s", "-C"])
        .arg(root.join("scenarios"))
        .arg(format!("OUT={}", out.display()))
        .status()
        .expect("make (the tests need make and a C compiler: `cargo xtask setup --tests`)");
    assert!(status.success(), "building the C scenarios failed");
    let bin = out.join(name);
    assert!(bin.is_file(), "{} not built", bin.display());
    bin
}

pub fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// A memory cgroup with a limit, removed when dropped: v2 where the unified hierarchy has the
/// memory controller, else v1.
pub struct TestCgroup {
    pub dir: PathBuf,
    v2: bool,
}

impl TestCgroup {
    pub fn with_limit(name: &str, limit_bytes: u64) -> Self {
        let (root, v2) = memory_cgroup_root().expect("no memory cgroup hierarchy on this host");
        let dir = root.join(format!("leakscope-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(file), limit_bytes.to_string()).expect("set the memory limit");
        if v2 {
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        }
        Self { dir, v2 }
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
    }

    pub fn is_v2(&self) -> bool {
        self.v2
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The cgroup can only go once its processes have; give them a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The memory controller's hierarchy and whether it is cgroup v2 (preferred when it has the
/// controller) or v1.
pub fn memory_cgroup_root() -> Option<(PathBuf, bool)> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut v1 = None;
    for line in mounts.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = PathBuf::from(left.split_whitespace().nth(4)?);
        let mut right = right.split_whitespace();
        match (right.next(), right.nth(1)) {
            (Some("cgroup2"), _) => {
                let controllers = std::fs::read_to_string(mount_point.join("cgroup.controllers"))
                    .unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "memory") {
                    return Some((mount_point, true));
                }
            }
            (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == "memory") => {
                v1 = Some((mount_point, false));
            }
            _ => {}
        }
    }
    v1
}

/// A child process killed (with its process group) when dropped.
/// tests/scripts/static_mapper.c built static into a directory of the test's own, stripped
/// of its symbols or not.
pub fn static_mapper(dir: &std::path::Path, name: &str, strip: bool) -> PathBuf {
    let out = dir.join(name);
    let mut cc = Command::new("cc");
    cc.args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/static_mapper.c"));
    if strip {
        cc.arg("-s");
    }
    let status = cc
        .status()
        .expect("cc (cargo xtask setup --tests installs gcc)");
    assert!(status.success(), "cc -static failed (libc6-dev has libc.a)");
    out
}

/// A static binary: started, then answered `ready`.
pub struct Static {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
}

impl Static {
    pub fn spawn(bin: &std::path::Path) -> Self {
        Self::spawn_from(&mut Command::new(bin))
    }

    /// `cmd`, which ends up running the static mapper.
    pub fn spawn_from(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the static mapper");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready");
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn map(&mut self) {
        writeln!(self.stdin.as_mut().expect("stdin"), "go").expect("write go");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "mapped");
    }
}

impl Drop for Static {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Spawned {
    pub child: Child,
}

impl Spawned {
    pub fn new(cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The unprivileged user the security tests act as: any local account a root agent must not
/// trust.
pub const UNPRIVILEGED: &str = "nobody";

/// `program args…` run as [`UNPRIVILEGED`]: `setpriv` drops every privilege (uid, gid,
/// supplementary groups, and with them all capabilities) and execs `program` in place, so
/// the child's pid is the program's (runuser would fork and wait).
pub fn as_unprivileged(program: &str) -> Command {
    let uid = unprivileged_uid().to_string();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        &uid,
        "--regid",
        &uid,
        "--clear-groups",
        "--",
        program,
    ])
    // As a login would: root's PATH can lead into /root, which the user cannot enter.
    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    .env("HOME", "/");
    cmd
}

/// The uid of [`UNPRIVILEGED`].
pub fn unprivileged_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", UNPRIVILEGED])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no uid for {UNPRIVILEGED}"))
}

/// A fresh directory that every user may write into, sticky like /tmp: where the attacks on
/// paths are staged. Removed when dropped.
pub struct SharedTmp(pub PathBuf);

impl SharedTmp {
    pub fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("leakscope-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create shared tmp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
            .expect("chmod shared tmp dir");
        Self(dir)
    }
}

impl Drop for SharedTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tracepoints `pid` holds BPF links on, from its fds' `tp_name` in /proc/PID/fdinfo:
/// what the kernel really has attached on its behalf.
pub fn attached_tracepoints(pid: u32) -> Vec<String> {
    let mut hooks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("tp_name:"))
                .map(|t| t.trim().to_string())
        })
        .collect();
    hooks.sort();
    hooks
}

/// The `syscalls:*` tracepoints process `pid` holds attached: each sends every syscall of
/// every process on the host through the kernel's slow path.
pub fn syscall_tracepoints(pid: u32) -> Vec<String> {
    attached_tracepoints(pid)
        .into_iter()
        .filter(|h| h.starts_with("sys_enter") || h.starts_with("sys_exit"))
        .collect()
}

/// The uprobe links process `holder` has (fdinfo of its perf links) on files of process
/// `pid`: (`uprobe`/`uretprobe`, offset).
pub fn uprobes_on(holder: u32, pid: u32) -> Vec<(String, String)> {
    let prefix = format!("/proc/{pid}/");
    std::fs::read_dir(format!("/proc/{holder}/fdinfo"))
        .expect("fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
            };
            let kind = field("event_type:")?;
            let name = field("name:")?;
            (matches!(kind.as_str(), "uprobe" | "uretprobe") && name.starts_with(&prefix))
                .then(|| (kind, field("offset:").unwrap_or_default()))
        })
        .collect()
}

/// `status body` of a GET of `url` made by `python3` run through `launcher` (another user,
/// another network namespace): a client that is not this test process.
pub fn python_get(mut launcher: Command, url: &str) -> (u16, String) {
    let script = format!(
        "import urllib.request, urllib.error\n\
         try:\n    r = urllib.request.urlopen('{url}', timeout=20)\n    \
         print(r.status); print(r.read().decode(errors='replace'))\n\
         except urllib.error.HTTPError as e:\n    \
         print(e.code); print(e.read().decode(errors='replace'))\n"
    );
    let out = launcher
        .args(["-c", &script])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    let status = status.trim().parse().unwrap_or_else(|_| {
        panic!(
            "no status: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status, body.to_string())
}
