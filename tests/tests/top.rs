//! `leakscope top` in a real terminal: tmux runs it at 80×24 against a real agent watching a
//! real leaking process; keys go in with `send-keys`, and the test reads the screen back with
//! `capture-pane`. Also `--once` (and a stdout that is a pipe), and the screen without agent.

use std::{
    process::{Command, Output},
    time::Duration,
};

use integration_tests::{
    Agent, Spawned, agent_bin, free_port, kernel_tests_enabled, scenario_bin, scenarios_dir,
    wait_for,
};

/// A tmux server of the test's own (its own socket), killed and its socket removed when
/// dropped.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    /// Starts `leakscope top ARGS` in an 80×24 window.
    fn top(name: &str, args: &[&str]) -> Self {
        let socket =
            std::env::temp_dir().join(format!("leakscope-top-{}-{name}", std::process::id()));
        let mut command = vec![
            shell_quote(&agent_bin().display().to_string()),
            "top".into(),
        ];
        command.extend(args.iter().map(|a| shell_quote(a)));
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "80", "-y", "24", "-s", "top"])
            // No environment of the caller's shell: a plain terminal type crossterm knows.
            .env("TERM", "xterm-256color")
            .arg(command.join(" "))
            .output()
            .expect("tmux (the tests need it: `cargo xtask setup --tests`)");
        assert!(out.status.success(), "tmux new-session: {}", text(&out));
        // The window is the pane: keep it at 80×24 whatever clients attach.
        let tmux = Self { socket };
        tmux.run(&["set-option", "-t", "top", "window-size", "manual"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux")
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "send-keys: {}", text(&out));
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.keys(&["-l", text]);
    }

    /// What the pane shows now (empty once it is gone).
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits until the screen satisfies `ok`; panics with the screen otherwise.
    fn wait(&self, what: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        wait_for(within, || Some(self.screen()).filter(|s| ok(s)))
            .unwrap_or_else(|| panic!("screen never showed {what}; it shows:\n{}", self.screen()))
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `proc` row, whether or not the live view marks it selected (`>`).
fn is_proc_row(line: &str) -> bool {
    line.trim_start_matches('>')
        .trim_start()
        .starts_with("proc ")
}

/// The screen's line for process `pid` (a `proc` row with that PID column).
fn proc_line(screen: &str, pid: u32) -> Option<String> {
    screen
        .lines()
        .find(|l| is_proc_row(l) && l.split_whitespace().any(|w| w == pid.to_string()))
        .map(str::to_string)
}

/// pids in the order their `proc` rows appear.
fn proc_order(screen: &str, pids: &[u32]) -> Vec<u32> {
    screen
        .lines()
        .filter(|l| is_proc_row(l))
        .filter_map(|l| {
            pids.iter()
                .copied()
                .find(|p| l.split_whitespace().any(|w| w == p.to_string()))
        })
        .collect()
}

/// An agent at ten times real speed watching a leaking and a steady scenario, with a
/// configured limit for the leaker (so it has a time to limit).
fn agent_with_a_leak(profiling: bool) -> (Agent, Spawned, Spawned) {
    let mut args = vec![
        "--no-task-socket",
        "--detector-time-scale",
        "0.1",
        "--match",
        "comm=^(mmap_leak|steady)$",
        "--limit",
        "comm=^mmap_leak$:8GiB",
    ];
    if profiling {
        args.push("--enable-profiling");
    }
    let agent = Agent::start(&args);
    let leaker = Spawned::new(Command::new(scenario_bin("mmap_leak")).args([
        "--leak-kib-per-s",
        "2048",
        "--churn-kib-per-s",
        "4096",
    ]));
    let steady = Spawned::new(Command::new(scenario_bin("steady")).args(["--time-scale", "0.1"]));
    let pid = leaker.pid();
    wait_for(Duration::from_secs(60), || {
        agent
            .process(pid)
            .filter(|p| p["leak"]["verdict"] == "leaking")
    })
    .unwrap_or_else(|| {
        panic!(
            "mmap_leak never called leaking: {:?}\n{}",
            agent.process(pid),
            agent.log()
        )
    });
    (agent, leaker, steady)
}

#[test]
fn top_shows_sorts_filters_drills_down_and_profiles_a_leak() {
    if !kernel_tests_enabled("top_shows_sorts_filters_drills_down_and_profiles_a_leak") {
        return;
    }
    let (agent, leaker, steady) = agent_with_a_leak(true);
    let (lpid, spid) = (leaker.pid(), steady.pid());
    let url = format!("http://{}", agent.addr);
    let tmux = Tmux::top(
        "live",
        &[
            "--agent",
            &url,
            "--interval",
            "500ms",
            "--profile-seconds",
            "3",
        ],
    );

    // The leak, with its verdict, a time to its configured limit, first by time to limit.
    let screen = tmux.wait(
        "the leak and the steady process",
        Duration::from_secs(30),
        |s| {
            proc_line(s, lpid).is_some_and(|l| l.contains("leaking"))
                && proc_line(s, spid).is_some()
        },
    );
    let line = proc_line(&screen, lpid).unwrap();
    for want in ["mmap_leak", "leaking", "--limit", "/s"] {
        assert!(line.contains(want), "{want:?} not in {line:?}\n{screen}");
    }
    assert!(screen.contains("TO LIMIT↑"), "{screen}");
    assert_eq!(proc_order(&screen, &[lpid, spid]), [lpid, spid], "{screen}");
    assert!(screen.lines().count() <= 24);

    // Sort by name, then the same key reverses it.
    tmux.keys(&["n"]);
    tmux.wait("sorted by name", Duration::from_secs(10), |s| {
        s.contains("NAME↑") && proc_order(s, &[lpid, spid]) == [lpid, spid]
    });
    tmux.keys(&["n"]);
    tmux.wait("reversed by name", Duration::from_secs(10), |s| {
        s.contains("NAME↓") && proc_order(s, &[lpid, spid]) == [spid, lpid]
    });

    // `/` filters to the steady process alone; Esc brings the leak back.
    tmux.keys(&["/"]);
    tmux.type_text("steady");
    tmux.keys(&["Enter"]);
    tmux.wait("only steady", Duration::from_secs(10), |s| {
        s.contains("/steady") && proc_line(s, spid).is_some() && proc_line(s, lpid).is_none()
    });
    tmux.keys(&["Escape"]);
    tmux.wait("the filter cleared", Duration::from_secs(10), |s| {
        proc_line(s, lpid).is_some()
    });

    // Drill down: filtered to the leak, it is the only row; Enter opens its evidence.
    tmux.keys(&["/"]);
    tmux.type_text(&lpid.to_string());
    tmux.keys(&["Enter"]);
    tmux.wait("only the leak", Duration::from_secs(10), |s| {
        proc_line(s, lpid).is_some() && proc_line(s, spid).is_none()
    });
    tmux.keys(&["Enter"]);
    let detail = tmux.wait("the leak's details", Duration::from_secs(10), |s| {
        s.contains(&format!("mmap_leak pid {lpid}")) && s.contains("history")
    });
    for want in [
        "verdict leaking",
        "limit 8.0G (--limit), reached in",
        "p takes a 3s profile",
    ] {
        assert!(detail.contains(want), "{want:?} not in:\n{detail}");
    }

    // p takes a growth profile and shows its top stacks in place: the leaking path.
    tmux.keys(&["p"]);
    tmux.wait("a profile running", Duration::from_secs(10), |s| {
        s.contains(&format!("taking a growth profile of pid {lpid}"))
    });
    let profile = tmux.wait("the profile's stacks", Duration::from_secs(90), |s| {
        s.contains(&format!("growth profile of pid {lpid}, top stacks:"))
            || s.contains("no profile")
    });
    assert!(profile.contains("map_and_keep"), "{profile}");

    // Back (one key at a time: a terminal reads two Escs at once as Alt+Esc) to the table,
    // help, and q quits.
    tmux.keys(&["Escape"]);
    tmux.wait("the details again", Duration::from_secs(10), |s| {
        s.contains("p takes a 3s profile")
    });
    tmux.keys(&["Escape"]);
    tmux.wait("the table again", Duration::from_secs(10), |s| {
        s.contains("KIND")
    });
    tmux.keys(&["?"]);
    tmux.wait("the help", Duration::from_secs(10), |s| {
        s.contains("this help")
    });
    tmux.keys(&["q"]);
    assert!(
        wait_for(Duration::from_secs(10), || (!tmux.alive()).then_some(())).is_some(),
        "top did not exit on q:\n{}",
        tmux.screen()
    );
}

#[test]
fn top_once_prints_a_snapshot_and_says_when_profiling_is_off() {
    if !kernel_tests_enabled("top_once_prints_a_snapshot_and_says_when_profiling_is_off") {
        return;
    }
    let (agent, leaker, _steady) = agent_with_a_leak(false);
    let lpid = leaker.pid();
    let url = format!("http://{}", agent.addr);

    // --once, and the same without it when stdout is a pipe.
    for args in [
        &["top", "--once", "--agent", &url][..],
        &["top", "--agent", &url],
    ] {
        let out = Command::new(agent_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with(&format!("leakscope top · {url} · ")),
            "{stdout}"
        );
        assert!(
            stdout.lines().nth(1).unwrap().starts_with("KIND"),
            "{stdout}"
        );
        let line =
            proc_line(&stdout, lpid).unwrap_or_else(|| panic!("no row for {lpid}:\n{stdout}"));
        for want in ["mmap_leak", "leaking", "--limit"] {
            assert!(line.contains(want), "{want:?} not in {line:?}");
        }
        assert!(
            !stdout.contains('\x1b'),
            "escape codes in a pipe: {stdout:?}"
        );
    }

    // The profile key on an agent without --enable-profiling says so, in place.
    let tmux = Tmux::top("noprof", &["--agent", &url, "--filter", &lpid.to_string()]);
    tmux.wait("the leak", Duration::from_secs(30), |s| {
        proc_line(s, lpid).is_some()
    });
    tmux.keys(&["p"]);
    let screen = tmux.wait("the refusal", Duration::from_secs(30), |s| {
        s.contains(&format!("no profile of pid {lpid}"))
    });
    assert!(screen.contains("--enable-profiling"), "{screen}");
}

#[test]
fn top_drills_down_from_a_recycling_pool_to_its_children() {
    if !kernel_tests_enabled("top_drills_down_from_a_recycling_pool_to_its_children") {
        return;
    }
    // The pool of leaks.rs: children leak and recycle themselves before any verdict of their
    // own; only the recycles show it.
    let agent = Agent::start(&[
        "--no-task-socket",
        "--detector-time-scale",
        "0.1",
        "--match",
        "cmdline=prefork_pool",
    ]);
    let pool = Spawned::new(
        Command::new("python3")
            .arg(scenarios_dir().join("python/prefork_pool.py"))
            .args(["--workers", "2", "--rate-mib-per-min", "30"])
            .args(["--max-memory-per-child-mib", "48", "--time-scale", "0.1"]),
    );
    let parent = pool.pid();
    let name = wait_for(Duration::from_secs(60), || {
        let pools: leakscope_api::PoolsResponse =
            serde_json::from_str(&agent.get(leakscope_api::paths::POOLS).1).ok()?;
        pools
            .pools
            .into_iter()
            .find(|p| p.parent_pid == parent && p.leak_suspected)
            .map(|p| p.pool)
    })
    .unwrap_or_else(|| panic!("pool never suspected:\n{}", agent.log()));

    let url = format!("http://{}", agent.addr);
    // Filtered by the pool's name: the pool, then its processes.
    let tmux = Tmux::top(
        "pool",
        &["--agent", &url, "--interval", "500ms", "--filter", &name],
    );
    let screen = tmux.wait("the suspected pool", Duration::from_secs(30), |s| {
        s.lines()
            .any(|l| l.contains(&format!("pool {name}")) && l.contains("suspect"))
    });
    assert!(
        screen
            .lines()
            .nth(2)
            .is_some_and(|l| l.starts_with(">pool")),
        "the pool is the first row, selected:\n{screen}"
    );
    tmux.keys(&["Enter"]);
    let pool_screen = tmux.wait("the pool's recycles", Duration::from_secs(10), |s| {
        s.contains(&format!("worker pool {name}:")) && s.contains("recent recycles")
    });
    assert!(pool_screen.contains("LEAK SUSPECTED"), "{pool_screen}");
    assert!(pool_screen.contains("clean"), "{pool_screen}");

    // A child: children live seconds and recycle together, so the list may be empty or its
    // row gone by the time Enter arrives; then try again from the pool's screen.
    let detail = |s: &str| s.contains(&format!("in: worker pool {name}")) && s.contains(" pid ");
    let child = wait_for(Duration::from_secs(90), || {
        tmux.wait("a child listed", Duration::from_secs(30), |s| {
            s.contains("recent recycles") && s.lines().any(is_proc_row)
        });
        tmux.keys(&["Enter"]);
        let opened = wait_for(Duration::from_secs(3), || {
            Some(tmux.screen()).filter(|s| detail(s) || !s.contains("recent recycles"))
        })?;
        if detail(&opened) {
            return Some(opened);
        }
        // It had exited: back to the pool.
        tmux.keys(&["Escape"]);
        None
    })
    .unwrap_or_else(|| panic!("no child opened:\n{}", tmux.screen()));
    assert!(
        child.contains(&format!("(parent {parent})")),
        "a child of the pool's parent:\n{child}"
    );
}

#[test]
fn top_shows_the_task_types_a_process_ran() {
    if !kernel_tests_enabled("top_shows_the_task_types_a_process_ran") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leakscope-top-tasks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("tasks.sock");
    let agent = Agent::start(&[
        "--task-socket",
        &socket.to_string_lossy(),
        "--match",
        "cmdline=top_task_types_worker",
    ]);
    // A worker that sends task markers (the wire format of integrations/PROTOCOL.md) around
    // 30 jobs of each of two types, then stays to be looked at. What each run retains is the
    // agent's measurement (tasks.rs checks it); here, that top lists both with their verdicts.
    let script = r#"
import socket, sys, time  # top_task_types_worker
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
kept = []
for i in range(30):
    for task in ("app.leaky", "app.clean"):
        s.sendto(b"LS1 begin %s job=%d" % (task.encode(), i), sys.argv[1])
        block = bytearray(b"x" * (1 << 20))
        if task == "app.leaky":
            kept.append(block)
        del block
        s.sendto(b"LS1 end %s job=%d" % (task.encode(), i), sys.argv[1])
        time.sleep(0.02)
time.sleep(600)
"#;
    let worker = Spawned::new(Command::new("python3").args(["-c", script]).arg(&socket));
    let pid = worker.pid();
    wait_for(Duration::from_secs(30), || {
        let (_, body) = agent.get(leakscope_api::paths::TASKS);
        let tasks: leakscope_api::TasksResponse = serde_json::from_str(&body).ok()?;
        let done = tasks
            .tasks
            .iter()
            .filter(|t| t.runs == 30 && t.recent_jobs.iter().any(|j| j.pid == pid))
            .count();
        (done == 2 && agent.process(pid).is_some()).then_some(())
    })
    .unwrap_or_else(|| panic!("no jobs of pid {pid}:\n{}", agent.log()));

    let url = format!("http://{}", agent.addr);
    let tmux = Tmux::top("tasks", &["--agent", &url, "--filter", &pid.to_string()]);
    tmux.wait("the worker", Duration::from_secs(30), |s| {
        proc_line(s, pid).is_some()
    });
    tmux.keys(&["Enter"]);
    let screen = tmux.wait("its task types", Duration::from_secs(10), |s| {
        s.contains("task types (TASK") && s.contains("app.clean")
    });
    let line = |name: &str| {
        screen
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name}:\n{screen}"))
            .to_string()
    };
    for name in ["app.leaky", "app.clean"] {
        let l = line(name);
        assert!(l.contains(" 30 "), "30 runs: {l}");
        assert!(
            l.contains(": ") && (l.contains("LEAK SUSPECTED") || l.contains(" ok")),
            "{l}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_an_agent_top_says_how_to_start_one() {
    // No kernel access needed: nothing listens at the port.
    let url = format!("http://127.0.0.1:{}", free_port());
    let tmux = Tmux::top("noagent", &["--agent", &url, "--interval", "500ms"]);
    let screen = tmux.wait("the no-agent message", Duration::from_secs(20), |s| {
        s.contains("sudo leakscope run")
    });
    assert!(
        screen.contains(&format!("No leakscope agent is listening at {url}.")),
        "{screen}"
    );
    assert!(screen.contains("cargo xtask run"), "{screen}");
    tmux.keys(&["q"]);
    assert!(
        wait_for(Duration::from_secs(10), || (!tmux.alive()).then_some(())).is_some(),
        "top did not exit on q"
    );

    let out = Command::new(agent_bin())
        .args(["top", "--once", "--agent", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no leakscope agent is listening"),
        "{stderr}"
    );
    assert!(stderr.contains("sudo leakscope run"), "{stderr}");
}

/// An agent behind TLS and basic auth (`--web-config-file`): top needs the CA and a user,
/// and says which is missing.
#[test]
fn top_logs_in_to_an_agent_with_tls_and_basic_auth() {
    if !kernel_tests_enabled("top_logs_in_to_an_agent_with_tls_and_basic_auth") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leakscope-top-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::write(dir.join("server.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), ck.signing_key.serialize_pem()).unwrap();
    let ca = dir.join("server.crt");
    let password = "correct horse battery staple";
    let config = dir.join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  oncall: {}\n",
            bcrypt::hash(password, 4).unwrap()
        ),
    )
    .unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();

    let port = free_port();
    let mut agent = Spawned::new(
        Command::new(agent_bin())
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--no-task-socket", "--interval", "200ms"])
            .arg("--web-config-file")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let url = format!("https://127.0.0.1:{port}");
    let top = |args: &[&str], env_password: Option<&str>| {
        let mut c = Command::new(agent_bin());
        c.args(["top", "--once", "--agent", &url]).args(args);
        c.env_remove("LEAKSCOPE_PASSWORD");
        if let Some(p) = env_password {
            c.env("LEAKSCOPE_PASSWORD", p);
        }
        c.output().unwrap()
    };
    let ca_arg = ca.display().to_string();
    let ok = wait_for(Duration::from_secs(30), || {
        let out = top(&["--ca-file", &ca_arg, "--user", "oncall"], Some(password));
        out.status.success().then_some(out)
    })
    .unwrap_or_else(|| {
        panic!(
            "top never logged in: {}",
            text(&top(
                &["--ca-file", &ca_arg, "--user", "oncall"],
                Some(password)
            ))
        )
    });
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.starts_with(&format!("leakscope top · {url} · ")),
        "{stdout}"
    );
    assert!(stdout.contains("KIND NAME"), "{stdout}");

    let refused = text(&top(&["--ca-file", &ca_arg], None));
    assert!(refused.contains("asks for credentials"), "{refused}");
    assert!(refused.contains("--password-file"), "{refused}");
    let wrong_arg = wrong.display().to_string();
    let refused = text(&top(
        &[
            "--ca-file",
            &ca_arg,
            "--user",
            "oncall",
            "--password-file",
            &wrong_arg,
        ],
        None,
    ));
    assert!(
        refused.contains("the user or password is wrong"),
        "{refused}"
    );
    let untrusted = text(&top(&["--user", "oncall"], Some(password)));
    assert!(untrusted.contains("--ca-file"), "{untrusted}");
    // A clean stop (SIGTERM) rather than the guard's SIGKILL.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(10), || {
        agent.child.try_wait().ok().flatten()
    });
    let _ = std::fs::remove_dir_all(&dir);
}
