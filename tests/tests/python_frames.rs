//! Python frames in `leakscope investigate` and `/debug/pprof/growth`: a real CPython worker
//! that keeps every job's parsed document (tests/python/json_keeper.py), under both CPython
//! 3.11 builds of the machine: Debian's `python3.11` (static libpython, stripped) and the
//! pyenv build with a shared `libpython3.11.so`; pyenv's 3.13, whose layout comes from its own
//! `_Py_DebugOffsets`; and pyenv's 3.12 where the machine has it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use integration_tests::{Agent, Spawned, agent_bin, kernel_tests_enabled, scenario_bin};
use serde_json::Value;

const WORKER: &str = "json_keeper.py";

fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(WORKER)
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// pyenv's builds whose version starts with one of `prefixes`, as `bin/NAME`, sorted.
fn pyenv_builds(prefixes: &[&str], name: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/root/.pyenv/versions")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|v| {
                    let version = v.file_name().to_string_lossy().into_owned();
                    prefixes.iter().any(|p| version.starts_with(p))
                })
                .map(|v| v.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The CPython 3.11 builds to test: Debian's by path, pyenv's by glob. Under CI=true a
/// missing one fails the test (xtask setup installs Debian's; CI machines carry pyenv's).
fn pythons() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let debian = PathBuf::from("/usr/bin/python3.11");
    if debian.is_file() {
        found.push(debian);
    } else {
        assert!(
            !ci(),
            "CI=true: /usr/bin/python3.11 (package python3.11) is missing"
        );
        eprintln!("SKIPPED Debian's python3.11: not installed");
    }
    let mut pyenv = pyenv_builds(&["3.11."], "python3.11");
    // 3.12 has a table too: tested when the machine has it (CI's guarantee is 3.11).
    let mut pyenv_3_12 = pyenv_builds(&["3.12."], "python3.12");
    found.extend(pyenv_3_12.pop());
    match pyenv_builds(&["3.13."], "python3.13").pop() {
        Some(p) => found.push(p),
        None => {
            assert!(
                !ci(),
                "CI=true: no /root/.pyenv/versions/3.13.*/bin/python3.13 to test the layout \
                 read from _Py_DebugOffsets with"
            );
            eprintln!("SKIPPED pyenv's python3.13: not found");
        }
    }
    match pyenv.pop() {
        Some(p) => found.push(p),
        None => {
            assert!(
                !ci(),
                "CI=true: no /root/.pyenv/versions/3.11.*/bin/python3.11 (the shared-libpython \
                 build) to test Python frames with"
            );
            eprintln!("SKIPPED pyenv's python3.11: not found");
        }
    }
    // pyenv's 3.11 last: the tests that need one interpreter pop it.
    found
}

/// The worker, started and past its start-up, with the line it leaks from.
fn start_worker(python: &Path) -> (Spawned, u64) {
    start_worker_with(Command::new(python))
}

/// The worker run by `launcher` (the interpreter, or a command that runs it).
fn start_worker_with(mut launcher: Command) -> (Spawned, u64) {
    use std::os::unix::process::CommandExt as _;
    let mut child = launcher
        .arg(worker_script())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {launcher:?}: {e}"));
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let line = first
        .strip_prefix("ready ")
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{launcher:?} said {first:?}"));
    (Spawned { child }, line)
}

/// The agent's 4-second growth profile of `pid` as a table, and its first row.
fn agent_growth_profile(agent: &Agent, pid: u32) -> (String, String) {
    let (status, text) = agent.get(&format!(
        "/debug/pprof/growth?pid={pid}&seconds=4&format=txt"
    ));
    assert_eq!(status, 200, "{text}");
    let first_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_default()
        .to_owned();
    (text, first_row)
}

fn investigate(pid: u32, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(["investigate", "--pid", &pid.to_string(), "--json"])
        .args(args)
        .output()
        .expect("run leakscope investigate")
}

fn report(out: &Output, mode: &str) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}); stderr: {stderr}"));
    all.into_iter()
        .find(|r| r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {mode} report; stderr: {stderr}"))
}

fn notes(report: &Value) -> Vec<String> {
    report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// The frame the table shows first for a Python stack: the innermost Python frame outside
/// the standard library.
fn user_python_frame(stack: &Value) -> Option<&Value> {
    stack["frames"].as_array().unwrap().iter().find(|f| {
        f["python"] == true
            && !f["file"]
                .as_str()
                .is_some_and(|p| p.contains("/lib/python3") || p.starts_with('<'))
    })
}

fn assert_charged_to_keep_document(report: &Value, source: &str, keep_line: u64, python: &Path) {
    let stacks: Vec<&Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["source"] == source)
        .collect();
    let top = stacks
        .first()
        .unwrap_or_else(|| panic!("{}: no {source} stacks: {report}", python.display()));
    let frame = user_python_frame(top).unwrap_or_else(|| {
        panic!(
            "{}: top {source} stack has no Python frame: {top}",
            python.display()
        )
    });
    assert_eq!(
        frame["function"],
        "keep_document",
        "{}: {top}",
        python.display()
    );
    assert!(
        frame["file"].as_str().unwrap().ends_with(WORKER),
        "{}: {frame}",
        python.display()
    );
    assert_eq!(
        frame["line"].as_u64(),
        Some(keep_line),
        "{}: {frame}",
        python.display()
    );
    assert_eq!(frame["start_line"].as_u64(), Some(keep_line - 1), "{frame}");
    // No agent runs beside these: no task maps to read, no task, and no error.
    assert!(top["task"].is_null(), "{top}");
    // Its callers follow, outermost last.
    let names: Vec<&str> = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["python"] == true)
        .filter_map(|f| f["function"].as_str())
        .collect();
    let at = names.iter().position(|n| *n == "keep_document").unwrap();
    assert_eq!(names[at + 1..], ["handle_job", "main", "<module>"], "{top}");
}

#[test]
fn growth_and_alloc_modes_name_the_python_function_file_and_line_under_both_cpython_builds() {
    if !kernel_tests_enabled("growth_and_alloc_modes_name_the_python_function_file_and_line") {
        return;
    }
    for python in pythons() {
        let (worker, keep_line) = start_worker(&python);
        let out = investigate(
            worker.pid(),
            &["--mode", "both", "--duration", "6s", "--min-age", "1s"],
        );
        for (mode, source) in [("growth", "page_fault"), ("alloc", "alloc")] {
            let found = report(&out, mode);
            let said = notes(&found);
            assert!(
                said.iter()
                    .any(|n| n.starts_with("Python frames from CPython 3.1")),
                "{} {mode}: {said:?}",
                python.display()
            );
            assert_charged_to_keep_document(&found, source, keep_line, &python);
        }
        // The python family is probed: pymalloc's blocks are seen, not only malloc's.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(":PyObject_Malloc"), "{stderr}");
    }
}

#[test]
fn a_worker_in_its_own_pid_namespace_gets_python_frames() {
    if !kernel_tests_enabled("a_worker_in_its_own_pid_namespace_gets_python_frames") {
        return;
    }
    let Some(python) = pythons().pop() else {
        return;
    };
    // As in a container: the worker's thread ids are not the host's.
    let mut unshare = Command::new("unshare");
    unshare.args(["--pid", "--fork"]).arg(&python);
    let (launcher, keep_line) = start_worker_with(unshare);
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", launcher.pid())).unwrap();
    let worker: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t1"), "{nspid}");
    let out = investigate(worker, &["--mode", "growth", "--duration", "4s"]);
    let growth = report(&out, "growth");
    assert_charged_to_keep_document(&growth, "page_fault", keep_line, &python);
}

#[test]
fn the_agent_serves_growth_profiles_with_python_frames() {
    if !kernel_tests_enabled("the_agent_serves_growth_profiles_with_python_frames") {
        return;
    }
    let Some(python) = pythons().pop() else {
        return;
    };
    let agent = Agent::start(&["--no-task-socket", "--enable-profiling"]);
    let (worker, keep_line) = start_worker(&python);
    let pid = worker.pid();
    let (text, first_row) = agent_growth_profile(&agent, pid);
    assert!(
        first_row.contains("keep_document") && first_row.contains(&format!("{WORKER}:{keep_line}")),
        "{text}"
    );
}

#[test]
fn every_python_path_under_call_churn_is_whole_or_marked_truncated() {
    if !kernel_tests_enabled("every_python_path_under_call_churn_is_whole_or_marked_truncated") {
        return;
    }
    // Calls pushed and popped as fast as the interpreter goes, objects allocated at every
    // depth: allocator calls caught mid-call, while the interpreter links a frame in or out,
    // are where a walk can find a chain that changes under it.
    let churn = "kept = []\n\
                 def down(n):\n    [object() for _ in range(4)]\n    return down(n - 1) if n else None\n\
                 def keep():\n    kept.append(bytearray(8192))\n\
                 while True:\n    for d in range(1, 60):\n        down(d)\n    keep()\n";
    for python in pythons() {
        let worker = Spawned::new(Command::new(&python).args(["-c", churn]));
        std::thread::sleep(std::time::Duration::from_millis(500));
        let out = investigate(
            worker.pid(),
            &[
                "--mode",
                "both",
                "--duration",
                "3s",
                "--sample-bytes",
                "4096",
                "--sample-period",
                "4",
                "--min-age",
                "0s",
            ],
        );
        assert!(
            out.status.success(),
            "{}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let (mut paths, mut marked_paths) = (0, 0);
        for mode in ["growth", "alloc"] {
            for stack in report(&out, mode)["stacks"].as_array().unwrap() {
                let frames = stack["frames"].as_array().unwrap();
                let Some(outermost) = frames.iter().rfind(|f| f["python"] == true) else {
                    continue;
                };
                paths += 1;
                let marked = frames
                    .iter()
                    .any(|f| f["function"] == "[python stack truncated]");
                assert!(
                    outermost["function"] == "<module>" || marked,
                    "{}: a {mode} path ends at {outermost} unmarked: {stack}",
                    python.display()
                );
                marked_paths += usize::from(marked);
            }
        }
        assert!(paths > 0, "{}: no Python paths at all", python.display());
        eprintln!(
            "{}: {paths} Python paths, {marked_paths} marked truncated",
            python.display()
        );
    }
}

#[test]
fn python_frames_can_be_turned_off_for_a_cheaper_sample() {
    if !kernel_tests_enabled("python_frames_can_be_turned_off_for_a_cheaper_sample") {
        return;
    }
    let python = pythons().into_iter().next().expect("a CPython 3.11 build");
    let (worker, _) = start_worker(&python);
    let out = investigate(
        worker.pid(),
        &["--mode", "growth", "--duration", "3s", "--no-python-frames"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let growth = report(&out, "growth");
    let said: Vec<String> = notes(&growth)
        .into_iter()
        .filter(|n| n.contains("Python frames"))
        .collect();
    assert_eq!(
        said,
        ["Python frames off (--no-python-frames): native stacks only"],
        "{}",
        python.display()
    );
    let stacks = growth["stacks"].as_array().unwrap();
    assert!(!stacks.is_empty(), "{growth}");
    assert!(
        stacks
            .iter()
            .flat_map(|s| s["frames"].as_array().unwrap())
            .all(|f| f["python"] == false),
        "{growth}"
    );
}

#[test]
fn a_process_without_python_keeps_its_native_stacks_and_says_so() {
    if !kernel_tests_enabled("a_process_without_python_keeps_its_native_stacks_and_says_so") {
        return;
    }
    let target = Spawned::new(&mut Command::new(scenario_bin("mmap_leak")));
    let out = investigate(target.pid(), &["--mode", "growth", "--duration", "3s"]);
    let growth = report(&out, "growth");
    assert!(
        notes(&growth)
            .iter()
            .any(|n| n == "not a CPython process: native stacks only"),
        "{:?}",
        notes(&growth)
    );
    let stacks = growth["stacks"].as_array().unwrap();
    assert!(!stacks.is_empty(), "{growth}");
    assert!(
        stacks
            .iter()
            .flat_map(|s| s["frames"].as_array().unwrap())
            .all(|f| f["python"] == false)
    );
    assert!(
        stacks
            .iter()
            .flat_map(|s| s["frames"].as_array().unwrap())
            .any(|f| f["function"] == "map_and_keep"),
        "{growth}"
    );
}

#[test]
fn a_python_worker_that_exits_mid_trace_still_gets_its_report() {
    if !kernel_tests_enabled("a_python_worker_that_exits_mid_trace_still_gets_its_report") {
        return;
    }
    let Some(python) = pythons().pop() else {
        return;
    };
    // Keeps memory for about 2 s, then exits while the 8 s trace runs.
    let script = "import time\nkept = []\nend = time.monotonic() + 2\n\
                  while time.monotonic() < end:\n    kept.append(bytearray(64 * 1024))\n    \
                  time.sleep(0.001)\n";
    let worker = Spawned::new(Command::new(&python).args(["-c", script]));
    let out = investigate(worker.pid(), &["--mode", "growth", "--duration", "8s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("exited"), "{stderr}");
    let growth = report(&out, "growth");
    let said = notes(&growth);
    assert!(said.iter().any(|n| n.contains("exited")), "{said:?}");
    // Code objects can no longer be read: frames are left out or the stack is marked, and
    // no row is missing its frames.
    for stack in growth["stacks"].as_array().unwrap() {
        assert!(!stack["frames"].as_array().unwrap().is_empty(), "{stack}");
    }
}

#[test]
fn an_unsupported_interpreter_gets_one_note_and_native_stacks() {
    if !kernel_tests_enabled("an_unsupported_interpreter_gets_one_note_and_native_stacks") {
        return;
    }
    let leak = "import time\nkept = []\nwhile True:\n    kept.append(bytearray(64 * 1024))\n    \
                time.sleep(0.002)\n";
    // 3.10 has no Py_Version (nor debug offsets); a 3.13 whose `_Py_DebugOffsets` cookie was
    // overwritten (the interpreter never reads it itself) must not be believed.
    let spoiled = format!(
        "import ctypes\nruntime = ctypes.c_char.in_dll(ctypes.pythonapi, '_PyRuntime')\n\
         ctypes.memmove(ctypes.addressof(runtime), b'notdebug', 8)\n{leak}"
    );
    let mut cases: Vec<(PathBuf, String, &str)> = pyenv_builds(&["3.10."], "python3")
        .into_iter()
        .map(|p| (p, leak.to_owned(), "supported for CPython"))
        .collect();
    cases.extend(
        pyenv_builds(&["3.13."], "python3.13")
            .pop()
            .map(|p| (p, spoiled, "_Py_DebugOffsets cookie")),
    );
    if cases.is_empty() {
        eprintln!("SKIPPED: no pyenv CPython 3.10 or 3.13 on this machine");
        return;
    }
    for (python, script, why) in cases {
        let worker = Spawned::new(Command::new(&python).args(["-c", &script]));
        std::thread::sleep(std::time::Duration::from_millis(500));
        let out = investigate(worker.pid(), &["--mode", "growth", "--duration", "2s"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let growth = report(&out, "growth");
        let said: Vec<String> = notes(&growth)
            .into_iter()
            .filter(|n| n.contains("Python frames"))
            .collect();
        assert_eq!(said.len(), 1, "{}: {said:?}", python.display());
        assert!(
            said[0].starts_with("no Python frames:")
                && said[0].contains("supported for CPython")
                && said[0].contains(why),
            "{}: {said:?}",
            python.display()
        );
        let stacks = growth["stacks"].as_array().unwrap();
        assert!(!stacks.is_empty(), "{growth}");
        assert!(
            stacks
                .iter()
                .flat_map(|s| s["frames"].as_array().unwrap())
                .all(|f| f["python"] == false)
        );
    }
}

/// The row a JSON report ranks first among its `source` rows.
fn top_stack<'a>(report: &'a Value, source: &str) -> &'a Value {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == source)
        .unwrap_or_else(|| panic!("no {source} stacks: {report}"))
}

#[test]
fn samples_carry_the_task_their_thread_ran_and_rows_fold_by_task_function() {
    use std::os::unix::process::CommandExt as _;
    let test = "samples_carry_the_task_their_thread_ran_and_rows_fold_by_task_function";
    if !kernel_tests_enabled(test) {
        return;
    }
    let Some(python) = pythons().pop() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("leakscope-py-tasks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("tasks.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let agent = Agent::start(&["--task-socket", &socket_arg, "--enable-profiling"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/task_pair.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&socket)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", python.display()));
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "ready", "{}", python.display());
    let worker = Spawned { child };
    let pid = worker.pid();

    // The agent's own profile: its first row is the leaking task's.
    let (text, first_row) = agent_growth_profile(&agent, pid);
    assert!(
        first_row.contains("jobs.leaky") && first_row.contains("leaky_task"),
        "{text}"
    );

    // `investigate` beside the agent sees the agent's tasks; folded by the user entry, the
    // task function heads each row.
    let out = investigate(
        pid,
        &[
            "--mode",
            "both",
            "--duration",
            "4s",
            "--min-age",
            "1s",
            "--fold",
            "user-entry",
        ],
    );
    let growth = report(&out, "growth");
    let top = top_stack(&growth, "page_fault");
    assert_eq!(top["task"], "jobs.leaky", "{top}");
    // Alloc mode: the task of the thread a block was allocated on.
    let alloc = report(&out, "alloc");
    let kept = top_stack(&alloc, "alloc");
    assert_eq!(kept["task"], "jobs.leaky", "{kept}");
    assert_eq!(kept["frames"][0]["function"], "leaky_task", "{kept}");
    let entry = &top["frames"][0];
    assert_eq!(entry["function"], "leaky_task", "{top}");
    assert!(
        entry["file"].as_str().unwrap().ends_with("task_pair.py"),
        "{entry}"
    );
    assert!(
        notes(&growth)
            .iter()
            .any(|n| n.contains("folded by their user entry frame")),
        "{:?}",
        notes(&growth)
    );
    // A folded row that went through a task function starts at it, not inside it.
    for stack in growth["stacks"].as_array().unwrap() {
        let frames = stack["frames"].as_array().unwrap();
        if let Some(task) = frames
            .iter()
            .find(|f| f["function"] == "leaky_task" || f["function"] == "clean_task")
        {
            assert_eq!(&frames[0], task, "{stack}");
        }
    }
    drop(worker);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    // Without an agent, no pins: investigate runs and its rows carry no task.
    assert!(
        !std::path::Path::new("/sys/fs/bpf/leakscope/task_threads").exists(),
        "the agent removes its pins at exit"
    );
}
