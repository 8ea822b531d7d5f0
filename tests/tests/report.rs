//! Issue 17's incident report end to end: a real process that leaks until the agent calls it
//! leaking, `leakscope report` against the running agent, and the page as headless Chromium
//! renders it. The page and a screenshot are kept in target/test-outputs/report/.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use base64::Engine as _;
use integration_tests::{
    Agent, MemHog, agent_bin, kernel_tests_enabled, memhog_bin, memory_cgroup_root, wait_for,
};
use leakscope_api::{PoolsResponse, TasksResponse, paths};

/// The leaking process's name: markup, which the report must show as text.
const NAME: &str = "<script>hog";

fn outputs() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-outputs/report");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's chromium. Missing, it fails under CI (`cargo xtask setup` installs it), and skips
/// outside.
fn chromium(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why =
            format!("{test}: needs chromium (apt-get install chromium, or cargo xtask setup)");
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED {why}");
    }
    found
}

/// Headless Chromium on `page` with `args`; a profile directory of its own, so runs never
/// share one.
fn headless(chromium: &Path, page: &Path, args: &[&str]) -> Output {
    let profile = std::env::temp_dir().join(format!(
        "leakscope-report-chromium-{}-{}",
        std::process::id(),
        args.len()
    ));
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    out
}

fn report(agent: &Agent, out: &Path, extra: &[&str]) -> Output {
    Command::new(agent_bin())
        .args([
            "report",
            "--agent",
            &format!("http://{}", agent.addr),
            "--out",
        ])
        .arg(out)
        .args(extra)
        .output()
        .expect("run leakscope report")
}

/// A copy of memhog under a name of markup, in `dir`.
fn named_hog_bin(dir: &Path) -> PathBuf {
    let bin = dir.join(NAME);
    std::fs::copy(memhog_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A cgroup named like a systemd service (the agent reads names, not systemd), removed when
/// dropped.
struct ServiceCgroup(PathBuf);

impl ServiceCgroup {
    fn new(unit: &str) -> Self {
        let (root, _) = memory_cgroup_root().expect("no memory cgroup hierarchy on this host");
        let dir = root.join(unit);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }

    /// `bin` started in this cgroup: moved before exec, so the agent reads the cgroup when
    /// it selects the process.
    fn spawn(&self, bin: &Path) -> MemHog {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo $$ > "$1/cgroup.procs" && exec "$2""#, "sh"])
            .arg(&self.0)
            .arg(bin);
        MemHog::spawn_with(&mut cmd)
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        // Only empty once its process is gone.
        wait_for(Duration::from_secs(5), || std::fs::remove_dir(&self.0).ok());
    }
}

#[test]
fn the_report_shows_a_leaking_process_its_chart_and_flame_graph_in_chromium() {
    let test = "the_report_shows_a_leaking_process_its_chart_and_flame_graph_in_chromium";
    if !kernel_tests_enabled(test) {
        return;
    }
    let Some(chromium) = chromium(test) else {
        return;
    };
    let outputs = outputs();
    let scratch = std::env::temp_dir().join(format!("leakscope-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    // Three agents watch the same process: one samples suspects' growth by itself, one
    // profiles on request (the report asks for --profile-seconds), and one has profiling
    // off, and the report must say so instead of drawing a graph.
    let matcher = "comm=^<script>hog$";
    let common = [
        "--detector-time-scale",
        "0.1",
        "--leak-warmup",
        "0s",
        "--match",
        matcher,
        "--limit",
        "comm=^<script>hog$:4GiB",
    ];
    let profiling = [
        "--enable-profiling",
        "--auto-growth",
        "--auto-growth-period",
        "16",
    ];
    let agent = Agent::start(&[&common[..], &profiling[..]].concat());
    let plain = Agent::start(&common);
    let on_request = Agent::start(&[&common[..], &["--enable-profiling"][..]].concat());
    let bin = named_hog_bin(&scratch);
    let unit = format!("leakscope-report-{}.service", std::process::id());
    let cgroup = ServiceCgroup::new(&unit);
    let mut hog = cgroup.spawn(&bin);
    let pid = hog.pid;

    // A sibling of the same name that exits after a while: this test process becomes a pool
    // with one recycle.
    let sibling = MemHog::spawn_with(&mut Command::new(&bin));
    let recycled = sibling.pid;

    // Grow until every agent calls it leaking and the first samples it, then some more so
    // the sampler sees the growth; the steps it takes depend on the machine, not what is
    // checked. It keeps growing while the agents are asked, so no verdict cools meanwhile.
    let leaking = |a: &Agent| a.process(pid).filter(|p| p["leak"]["verdict"] == "leaking");
    let ready = wait_for(Duration::from_secs(120), || {
        hog.grow(2);
        std::thread::sleep(Duration::from_millis(200));
        let sampled = leaking(&agent).filter(|p| p["growth_sampled"] == true);
        (sampled.is_some() && leaking(&plain).is_some() && leaking(&on_request).is_some())
            .then_some(())
    });
    assert!(
        ready.is_some(),
        "not leaking everywhere, or not sampled: {:?} {:?} {:?}\nlog:\n{}",
        agent.process(pid),
        plain.process(pid),
        on_request.process(pid),
        agent.log()
    );
    for _ in 0..8 {
        hog.grow(2);
    }
    // The sibling has lived the two seconds a pool's child must (a verdict takes longer).
    sibling.exit();
    let pool = format!("{}/{NAME}", std::process::id());
    let pooled = wait_for(Duration::from_secs(10), || {
        hog.grow(1);
        let (_, body) = agent.get(paths::POOLS);
        let pools: PoolsResponse = serde_json::from_str(&body).ok()?;
        pools
            .pools
            .iter()
            .any(|p| p.exits.iter().any(|e| e.pid == recycled))
            .then_some(())
    });
    assert!(pooled.is_some(), "{}", agent.get(paths::POOLS).1);
    // A task type from this test process's own markers (the harness gives each agent a task
    // socket of its own): the page lists its verdict.
    let socket = std::env::temp_dir().join(format!("leakscope-test-{}.sock", agent.addr.port()));
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for job in 0..3 {
        for phase in ["begin", "end"] {
            let marker = format!("LS1 {phase} report.task job={job}");
            sender.send_to(marker.as_bytes(), &socket).unwrap();
        }
    }
    let tasks = wait_for(Duration::from_secs(10), || {
        let (_, body) = agent.get(paths::TASKS);
        let tasks: TasksResponse = serde_json::from_str(&body).ok()?;
        tasks
            .tasks
            .iter()
            .any(|t| t.task == "report.task" && t.runs == 3)
            .then_some(())
    });
    assert!(tasks.is_some(), "{}", agent.get(paths::TASKS).1);

    let page = outputs.join("incident.html");
    let made = report(&agent, &page, &["--profile-seconds", "0"]);
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "report failed: {stderr}");
    assert!(stderr.contains("suspects: 1, flame graphs: 1"), "{stderr}");
    // The page may hold profiles, which only some users may see.
    let mode = std::fs::metadata(&page).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("<script"),
        "markup from a name reached the page"
    );

    let dom = headless(&chromium, &page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    std::fs::write(outputs.join("incident.dom.html"), &dom).unwrap();
    // The process's name is text in the rendered page, and no element came of it.
    assert!(dom.contains("&lt;script&gt;hog"), "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
    assert!(
        dom.contains(&format!("id=\"pid-{pid}\"")) && dom.contains(&format!("pid {pid}")),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<span class="verdict leaking">leaking</span>"#),
        "{dom}"
    );
    // Evidence, rate and the configured limit with its time to limit.
    assert!(
        dom.contains(&format!(r#"<span class="k">unit</span> {unit}</span>"#)),
        "{dom}"
    );
    assert!(dom.contains("the lowest resident size rose"), "{dom}");
    assert!(dom.contains("MiB/min") || dom.contains("MiB/h"), "{dom}");
    assert!(
        dom.contains("4.0 GiB (--limit given to the agent)"),
        "{dom}"
    );
    assert!(dom.contains("at the current rate, to the 4.0 GiB"), "{dom}");
    // The RSS chart, with axes in units.
    let chart = dom
        .split("<svg class=\"chart\"")
        .nth(1)
        .and_then(|rest| rest.split("</svg>").next())
        .unwrap_or_else(|| panic!("no chart in:\n{dom}"));
    assert!(chart.contains("resident memory (MiB)"), "{chart}");
    assert!(chart.contains(" MiB</text>"), "{chart}");
    assert!(chart.contains("time (UTC)"), "{chart}");
    assert!(chart.contains("<polyline class=\"series rss\""), "{chart}");
    // The flame graph is the agent's, of this process's growth.
    let encoded = dom
        .split("<img class=\"flame\"")
        .nth(1)
        .and_then(|rest| rest.split("data:image/svg+xml;base64,").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no flame graph in:\n{dom}"));
    let svg = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 flame graph");
    let svg = String::from_utf8_lossy(&svg);
    assert!(
        svg.contains("<svg") && svg.contains(&format!("pid {pid}")),
        "{svg}"
    );
    // Health and the host's memory.
    assert!(dom.contains("agent health"), "{dom}");
    assert!(dom.contains("host memory</th><td>"), "{dom}");
    assert!(dom.contains("GiB total"), "{dom}");
    for section in [
        "Worker pools",
        "Task verdicts",
        "Recent OOM kills",
        "Watched processes",
    ] {
        assert!(dom.contains(section), "{section} missing:\n{dom}");
    }
    assert!(
        dom.contains("<td><code>report.task</code></td><td>3</td>"),
        "{dom}"
    );
    // The pool, its recycle on the chart, and the exit in its table.
    let escaped_pool = pool.replace('<', "&lt;").replace('>', "&gt;");
    assert!(
        dom.contains(&format!("pool <code>{escaped_pool}</code>")),
        "{dom}"
    );
    assert!(dom.contains("peak at exit (MiB)"), "{dom}");
    assert!(dom.contains("<circle class=\"marker clean\""), "{dom}");
    assert!(dom.contains(&format!("<td>{recycled}</td>")), "{dom}");

    let png = outputs.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = headless(
        &chromium,
        &page,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
        ],
    );
    let image = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");

    // The agent without profiling: the same suspect, and the reason instead of a graph.
    let page = outputs.join("incident-no-profiling.html");
    let made = report(&plain, &page, &["--profile-seconds", "1"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let dom = headless(&chromium, &page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains(&format!("id=\"pid-{pid}\"")), "{dom}");
    assert!(!dom.contains("<img class=\"flame\""), "{dom}");
    assert!(
        dom.contains("No flame graph:") && dom.contains("start the agent with --enable-profiling"),
        "{dom}"
    );

    // The agent that profiles on request: the report takes a profile while the process grows.
    let page = outputs.join("incident-on-request.html");
    let made = std::thread::scope(|s| {
        let made = s.spawn(|| report(&on_request, &page, &["--profile-seconds", "2"]));
        while !made.is_finished() {
            hog.grow(1);
            std::thread::sleep(Duration::from_millis(100));
        }
        made.join().unwrap()
    });
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "profiling the growth of suspect 1 (pid {pid}) for 2s"
        )) && stderr.contains("flame graphs: 1"),
        "{stderr}"
    );
    let dom = headless(&chromium, &page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("<img class=\"flame\""), "{dom}");

    drop(hog);
    drop(cgroup);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn without_an_agent_the_report_says_how_to_start_one_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("leakscope-report-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("incident.html");
    let port = integration_tests::free_port();
    let out = Command::new(agent_bin())
        .args([
            "report",
            "--agent",
            &format!("http://127.0.0.1:{port}"),
            "--out",
        ])
        .arg(&page)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "no leakscope agent is listening at http://127.0.0.1:{port}"
        )) && stderr.contains("leakscope run"),
        "{stderr}"
    );
    assert!(!page.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_agent_behind_basic_auth_gets_credentials_or_says_which_to_give() {
    let test = "an_agent_behind_basic_auth_gets_credentials_or_says_which_to_give";
    if !kernel_tests_enabled(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leakscope-report-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.join("web.yml");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&config, format!("basic_auth_users:\n  oncall: '{hash}'\n")).unwrap();
    let password = dir.join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let agent = Agent::start(&["--web-config-file", config_arg, "--match", "comm=^memhog$"]);
    let page = dir.join("incident.html");

    for creds in [
        &[][..],
        &[
            "--user",
            "oncall",
            "--password-file",
            wrong.to_str().unwrap(),
        ],
    ] {
        let out = report(&agent, &page, creds);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("asks for credentials") && stderr.contains("--password-file"),
            "{stderr}"
        );
        assert!(!page.exists());
    }
    let out = report(
        &agent,
        &page,
        &[
            "--user",
            "oncall",
            "--password-file",
            password.to_str().unwrap(),
            "--profile-seconds",
            "0",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<h2>Watched processes</h2>"), "{html}");
    assert!(html.contains("GiB total"), "{html}");
    let _ = std::fs::remove_dir_all(&dir);
}
