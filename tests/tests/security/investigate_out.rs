//! `leakscope investigate` runs as root: what a local user can stage around `--out DIR` must
//! never make it write anywhere but into a directory of root's own, and what it refuses it
//! says so, once, before anything is traced.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use integration_tests::{
    MemHog, SharedTmp, agent_bin, as_unprivileged, kernel_tests_enabled, unprivileged_uid,
};

/// What `--mode growth` (the default) writes.
const REPORTS: [&str; 4] = ["growth.pb.gz", "growth.svg", "growth.txt", "report.json"];
const VICTIM_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n";

/// `leakscope investigate --pid PID --duration 1s --json --out OUT`, as root, with umask 022
/// so the files' modes do not depend on the caller's umask.
fn investigate_into(pid: u32, out: &Path) -> Output {
    Command::new("sh")
        .args(["-c", "umask 022 && exec \"$@\"", "sh"])
        .arg(agent_bin())
        .args(["investigate", "--pid", &pid.to_string()])
        .args(["--duration", "1s", "--json", "--out"])
        .arg(out)
        .output()
        .expect("run leakscope investigate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory only root can enter, like /etc/ssl/private: where the victims live.
/// Removed when dropped.
struct RootOnly(PathBuf);

impl RootOnly {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leakscope-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create root-only dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        Self(dir)
    }

    /// A root-owned file with known content.
    fn victim(&self) -> PathBuf {
        let victim = self.0.join("passwd");
        fs::write(&victim, VICTIM_TEXT).expect("write victim");
        victim
    }
}

impl Drop for RootOnly {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn as_nobody(program: &str, args: &[&Path]) {
    let status = as_unprivileged(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("runuser {program}: {e}"));
    assert!(status.success(), "{program} {args:?} as nobody: {status}");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_directory_planted_by_another_user_is_refused_and_its_link_not_followed() {
    if !kernel_tests_enabled(
        "a_directory_planted_by_another_user_is_refused_and_its_link_not_followed",
    ) {
        return;
    }
    let shared = SharedTmp::new("inv-out-planted");
    let root = RootOnly::new("inv-out-planted-victim");
    let victim = root.victim();
    // The attack: a directory of nobody's where root will write, holding a link to root's file.
    let out = shared.0.join("reports");
    as_nobody("mkdir", &[&out]);
    as_nobody("ln", &[Path::new("-s"), &victim, &out.join("report.json")]);

    let mode = fs::metadata(&out).unwrap().mode() & 0o7777;

    let target = MemHog::spawn(&[]);
    let run = investigate_into(target.pid, &out);
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "refusing to write reports into {}: it is owned by uid {} (mode {mode:04o})",
            out.display(),
            unprivileged_uid()
        )) && err.contains("a path that does not exist yet"),
        "{err}"
    );
    assert!(
        !err.contains("tracing pid"),
        "refused only after tracing: {err}"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM_TEXT);
    assert_eq!(names_in(&out), ["report.json"]);
}

#[test]
fn a_link_of_another_users_is_followed_neither_as_the_directory_nor_on_the_way() {
    if !kernel_tests_enabled(
        "a_link_of_another_users_is_followed_neither_as_the_directory_nor_on_the_way",
    ) {
        return;
    }
    let shared = SharedTmp::new("inv-out-link");
    let root = RootOnly::new("inv-out-link-target");
    // Inside a directory of nobody's own (not sticky), so the kernel's protected_symlinks
    // would not stop root from following the link: only leakscope can.
    let evil = shared.0.join("evil");
    as_nobody("mkdir", &[&evil]);
    let link = evil.join("out");
    as_nobody("ln", &[Path::new("-s"), &root.0, &link]);
    let target = MemHog::spawn(&[]);
    // The link as the directory asked for, then one level above it: followed, root would
    // write its reports into (or create a directory in) a place nobody chose.
    let below = link.join("reports");
    for (out, said) in [
        (
            &link,
            format!("refusing --out {}: it is a symbolic link", link.display()),
        ),
        (
            &below,
            format!(
                "refusing --out {}: it goes through the symbolic link {} (owner uid {})",
                below.display(),
                link.display(),
                unprivileged_uid()
            ),
        ),
    ] {
        let run = investigate_into(target.pid, out);
        let err = stderr(&run);
        assert!(!run.status.success(), "{err}");
        assert!(err.contains(&said), "{said:?} not in: {err}");
        assert!(
            !err.contains("tracing pid"),
            "refused only after tracing: {err}"
        );
        assert!(names_in(&root.0).is_empty(), "{:?}", names_in(&root.0));
    }
}

#[test]
fn a_missing_directory_is_created_0700_with_root_owned_0644_reports() {
    if !kernel_tests_enabled("a_missing_directory_is_created_0700_with_root_owned_0644_reports") {
        return;
    }
    let parent = RootOnly::new("inv-out-new");
    let out = parent.0.join("a/b/reports");
    let target = MemHog::spawn(&[]);
    let run = investigate_into(target.pid, &out);
    assert!(run.status.success(), "{}", stderr(&run));

    let dir = fs::symlink_metadata(&out).unwrap();
    assert!(dir.is_dir());
    assert_eq!((dir.mode() & 0o7777, dir.uid()), (0o700, 0));
    assert_eq!(names_in(&out), REPORTS, "temporary files left behind?");
    for name in REPORTS {
        let m = fs::symlink_metadata(out.join(name)).unwrap();
        assert!(m.file_type().is_file(), "{name}");
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o644, 0), "{name}");
    }
    let written: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(written, printed);
}

#[test]
fn a_link_raced_into_roots_own_directory_is_replaced_not_followed() {
    if !kernel_tests_enabled("a_link_raced_into_roots_own_directory_is_replaced_not_followed") {
        return;
    }
    let root = RootOnly::new("inv-out-race");
    let victim = root.victim();
    let out = root.0.join("reports");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
    // As if a link had won a race into the directory between its check and the write.
    symlink(&victim, out.join("report.json")).unwrap();

    let target = MemHog::spawn(&[]);
    let run = investigate_into(target.pid, &out);
    assert!(run.status.success(), "{}", stderr(&run));
    let report = fs::symlink_metadata(out.join("report.json")).unwrap();
    assert!(report.file_type().is_file(), "report.json is still a link");
    let written: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(written.is_array(), "{written}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM_TEXT);
    assert_eq!(names_in(&out), REPORTS);
}

#[test]
fn a_directory_others_can_write_to_is_refused_even_when_root_owns_it() {
    if !kernel_tests_enabled("a_directory_others_can_write_to_is_refused_even_when_root_owns_it") {
        return;
    }
    let root = RootOnly::new("inv-out-writable");
    let target = MemHog::spawn(&[]);
    for (name, mode) in [("group", 0o775), ("world", 0o1777)] {
        let out = root.0.join(name);
        fs::create_dir(&out).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(mode)).unwrap();
        let run = investigate_into(target.pid, &out);
        let err = stderr(&run);
        assert!(!run.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "refusing to write reports into {}: it is group- or world-writable (owner uid \
                 0, mode {mode:04o})",
                out.display()
            )),
            "{err}"
        );
        assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
    }
}

/// A kernel thread visible here: kthreadd (pid 2) on a host, else any task flagged
/// PF_KTHREAD.
fn kernel_thread() -> (u32, String) {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort();
    pids.into_iter()
        .find_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
            let comm = head.split_once('(')?.1.to_owned();
            (flags & PF_KTHREAD != 0).then_some((pid, comm))
        })
        .expect("no kernel thread visible in /proc: run the tests in the host's pid namespace")
}

#[test]
fn a_kernel_thread_is_refused_up_front() {
    if !kernel_tests_enabled("a_kernel_thread_is_refused_up_front") {
        return;
    }
    let (pid, comm) = kernel_thread();
    let run = Command::new(agent_bin())
        .args(["investigate", "--pid", &pid.to_string(), "--duration", "1s"])
        .output()
        .expect("run leakscope investigate");
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "pid {pid} ({comm}) is a kernel thread: it has no user memory to investigate"
        )),
        "{err}"
    );
    assert!(
        !err.contains("tracing pid") && !err.contains("exited"),
        "{err}"
    );
}

#[test]
fn a_failed_listen_names_its_cause_once() {
    if !kernel_tests_enabled("a_failed_listen_names_its_cause_once") {
        return;
    }
    // TEST-NET-1 is never a local address: bind fails with EADDRNOTAVAIL, and no packet is
    // sent. The agent binds before it loads anything.
    let run = Command::new(agent_bin())
        .args(["run", "--listen", "192.0.2.1:9633", "--no-task-socket"])
        .output()
        .expect("run leakscope run");
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    let cause = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL).to_string();
    assert!(err.contains("cannot listen on 192.0.2.1:9633: "), "{err}");
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
}
