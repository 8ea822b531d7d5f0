//! Docker names (issue 17 §1): a real dockerd, a local image made with `docker import` from
//! busybox-static (no registry, no pull), containers with `--network none` and Compose labels.
//! The agent must name the container's processes in the API, export one
//! `leakscope_container_info` series per container, forget removed containers, and keep
//! serving (counting `no_socket`/`error`) once the daemon is gone.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{Agent, kernel_tests_enabled, stop, wait_for};

const IMAGE: &str = "leakscope-test/busybox:1";
const NAME: &str = "leakscope-shop-worker-1";
const OTHER: &str = "leakscope-shop-cron-1";
const INFO: &str = "leakscope_container_info";
const LOOKUPS: &str = "leakscope_docker_lookups_total";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

fn docker_ok(args: &[&str]) -> String {
    let (ok, text) = docker(args);
    assert!(ok, "docker {args:?} failed: {text}");
    text
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// The daemon this test started, stopped when dropped.
struct Daemon(Option<Child>);

impl Daemon {
    /// The running daemon, or one started for the test (its log under target/).
    fn ensure() -> Self {
        if docker(&["info"]).0 {
            return Self(None);
        }
        let log_path = target_dir().join("dockerd-test.log");
        let log = std::fs::File::create(&log_path).expect("dockerd log");
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut daemon = Self(Some(child));
        if wait_for(Duration::from_secs(60), || {
            docker(&["info"]).0.then_some(())
        })
        .is_none()
        {
            daemon.stop();
            panic!(
                "dockerd did not come up within 60 s; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        daemon
    }

    fn started(&self) -> bool {
        self.0.is_some()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // dockerd may take a while to stop its containers: up to 30 s before SIGKILL.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_for(Duration::from_secs(30), || child.try_wait().ok().flatten()).is_none() {
                stop(&mut child);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `IMAGE`, imported from a root filesystem that holds busybox-static and its applets.
fn import_image() {
    let busybox = which("busybox").expect("busybox");
    let root = target_dir().join(format!("docker-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "head", "tr", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let out = Command::new("docker")
        .args(["import", "-", IMAGE])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("docker import");
    let tar_status = tar.wait().expect("tar");
    let _ = std::fs::remove_dir_all(&root);
    assert!(tar_status.success(), "tar of the root filesystem failed");
    assert!(
        out.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container with Compose labels whose shell holds a few MiB and sleeps; its host pid.
fn run_container(name: &str, service: &str) -> (String, u32) {
    let _ = docker(&["rm", "-f", name]);
    let service = format!("com.docker.compose.service={service}");
    let id = docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        "com.docker.compose.project=shop",
        "--label",
        &service,
        "--name",
        name,
        IMAGE,
        "/bin/sh",
        "-c",
        "a=$(head -c 4000000 /dev/zero | tr '\\0' x); while :; do sleep 1; done",
    ]);
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    (id, pid.parse().unwrap_or_else(|_| panic!("pid {pid:?}")))
}

fn lookups(agent: &Agent, result: &str) -> f64 {
    agent
        .metrics()
        .value(LOOKUPS, &[("result", result)])
        .unwrap_or_else(|| panic!("{LOOKUPS}{{result={result}}} missing"))
}

#[test]
fn docker_containers_are_named() {
    if !kernel_tests_enabled("docker_containers_are_named") {
        return;
    }
    let missing: Vec<&str> = ["dockerd", "docker", "busybox", "tar"]
        .into_iter()
        .filter(|p| which(p).is_none())
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "docker_containers_are_named: {missing:?} not installed (cargo xtask setup --tests)"
        );
        assert!(!ci(), "{why}: under CI=true this test may not be skipped");
        eprintln!("SKIPPED {why}");
        return;
    }
    let mut daemon = Daemon::ensure();
    import_image();
    let (id, pid) = run_container(NAME, "worker");

    let agent = Agent::start(&["--match", "cgroup=docker"]);
    let named = wait_for(Duration::from_secs(30), || {
        let p = agent.process(pid)?;
        (p["container"]["name"] == NAME).then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "pid {pid} not named {NAME}: {:?}\nagent log:\n{}",
            agent.process(pid),
            agent.log()
        )
    });
    assert_eq!(named["container_id"], id.as_str(), "{named}");
    assert_eq!(named["runtime"], "docker", "{named}");
    assert_eq!(named["container"]["image"], IMAGE, "{named}");
    assert_eq!(named["container"]["compose_project"], "shop", "{named}");
    assert_eq!(named["container"]["compose_service"], "worker", "{named}");

    let m = agent.metrics();
    let info = m.find(INFO, &[("container_id", &id)]);
    assert_eq!(info.len(), 1, "{}", m.text);
    let labels = &info[0].labels;
    assert_eq!(labels["container_name"], NAME);
    assert_eq!(labels["image"], IMAGE);
    assert_eq!(labels["compose_project"], "shop");
    assert_eq!(labels["compose_service"], "worker");
    // The hot series carry the id only.
    let rss: Vec<_> = m.find(
        "leakscope_process_rss_bytes",
        &[("pid", &pid.to_string()), ("kind", "anon")],
    );
    assert_eq!(rss.len(), 1, "{}", m.text);
    assert_eq!(rss[0].labels["container_id"], id);
    assert!(!rss[0].labels.contains_key("container_name"));
    assert!(lookups(&agent, "ok") >= 1.0);
    let errors_before = lookups(&agent, "error");

    // A container started after the agent is named too; removed, it leaves the info series.
    let (other, _) = run_container(OTHER, "cron");
    wait_for(Duration::from_secs(30), || {
        let m = agent.metrics();
        (m.find(
            INFO,
            &[("container_id", &other), ("compose_service", "cron")],
        )
        .len()
            == 1)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{OTHER} never named:\n{}", agent.metrics().text));
    docker_ok(&["rm", "-f", OTHER]);
    wait_for(Duration::from_secs(30), || {
        agent
            .metrics()
            .find(INFO, &[("container_id", &other)])
            .is_empty()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{OTHER} still exported:\n{}", agent.metrics().text));
    // After at least one more list (every 10 s), still no errors and the first still named.
    let ok = lookups(&agent, "ok");
    wait_for(Duration::from_secs(25), || {
        (lookups(&agent, "ok") > ok).then_some(())
    })
    .expect("no Docker list after the removal");
    assert_eq!(lookups(&agent, "error"), errors_before);
    assert_eq!(
        agent.metrics().find(INFO, &[("container_id", &id)]).len(),
        1
    );

    docker_ok(&["rm", "-f", NAME]);
    if !daemon.started() {
        eprintln!("dockerd was running before the test: not stopping it");
        return;
    }
    // The daemon gone: the agent keeps serving and counts what it could not ask.
    daemon.stop();
    let failed = |agent: &Agent| lookups(agent, "no_socket") + lookups(agent, "error");
    let before = failed(&agent);
    wait_for(Duration::from_secs(25), || {
        (failed(&agent) > before).then_some(())
    })
    .unwrap_or_else(|| panic!("no failed list counted:\n{}", agent.metrics().text));
    let (status, body) = agent.get("/healthz");
    assert!(status == 200 || status == 503, "{status} {body}");
    assert!(agent.metrics().find(INFO, &[]).is_empty());
}
