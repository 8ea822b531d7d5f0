//! Per-thread accounting through uprobes on each target's own libc: the thread that maps is
//! named, no `syscalls:*` tracepoint is ever attached, a process that is not a target keeps
//! its code untouched, and the probes go when the target exits.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::FileExt as _,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use integration_tests::{
    Agent, MIB, Static, kernel_tests_enabled, static_mapper, syscall_tracepoints, uprobes_on,
    wait_for,
};

/// x86-64's breakpoint instruction, which the kernel writes where a uprobe sits.
const INT3: u8 = 0xcc;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/thread_mapper.py")
}

/// tests/scripts/thread_mapper.py, running as `name`.
struct Mapper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    /// Where libc's `mmap` is in this process.
    mmap: u64,
    tids: serde_json::Value,
}

impl Mapper {
    fn spawn(name: &str) -> Self {
        // Debian's python3: the tests need nothing from the venv here.
        let mut child = Command::new("/usr/bin/python3")
            .arg(script())
            .arg(name)
            // One malloc arena: glibc would otherwise map 64 MiB for each thread's own.
            .env("MALLOC_ARENA_MAX", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start /usr/bin/python3 (cargo xtask setup --tests installs it)");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the mapper's hello");
        let hello: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Self {
            pid: child.id(),
            mmap: hello["mmap"].as_u64().expect("mmap address"),
            tids: hello["tids"].clone(),
            child,
            stdin,
            stdout,
        }
    }

    fn tid(&self, name: &str) -> u64 {
        self.tids[name].as_u64().expect("tid")
    }

    /// Its `mapper` thread maps 64 MiB and touches every page.
    fn map(&mut self) {
        writeln!(self.stdin.as_mut().expect("stdin"), "go").expect("write go");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "mapped");
    }

    /// First byte of libc's `mmap` as this process sees it.
    fn first_byte_of_mmap(&self) -> u8 {
        let mem = std::fs::File::open(format!("/proc/{}/mem", self.pid)).expect("open mem");
        let mut b = [0u8; 1];
        mem.read_exact_at(&mut b, self.mmap).expect("read mem");
        b[0]
    }

    /// Ends its input; it exits and is reaped.
    fn exit(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("reap the mapper");
        assert!(status.success(), "{status}");
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_no_syscall_tracepoints(agent: &Agent, when: &str) {
    let hooks = syscall_tracepoints(agent.pid());
    assert!(hooks.is_empty(), "{when}: syscalls:* attached: {hooks:?}");
}

#[test]
fn the_thread_that_maps_is_named_through_uprobes_on_its_own_libc_only() {
    if !kernel_tests_enabled("the_thread_that_maps_is_named_through_uprobes_on_its_own_libc_only") {
        return;
    }
    // The class keeps the agent's own command line (which holds the pattern) from matching.
    let agent = Agent::start(&["--no-task-socket", "--threads-for", "cmdline=lst-targe[t]"]);
    assert_no_syscall_tracepoints(&agent, "at start");
    let mut target = Mapper::spawn("lst-target");
    let mut bystander = Mapper::spawn("lst-bystander");

    let attached = format!("per-thread uprobes attached to pid {}", target.pid);
    let on = wait_for(Duration::from_secs(20), || {
        agent.log().contains(&attached).then_some(())
    });
    assert!(
        on.is_some(),
        "no uprobes for {}:\n{}",
        target.pid,
        agent.log()
    );
    let links = uprobes_on(agent.pid(), target.pid);
    let entries = links.iter().filter(|(k, _)| k == "uprobe").count();
    let returns = links.iter().filter(|(k, _)| k == "uretprobe").count();
    assert_eq!(
        (entries, returns),
        (4, 4),
        "mmap, munmap, mremap, brk: {links:?}"
    );
    assert!(uprobes_on(agent.pid(), bystander.pid).is_empty());
    assert_no_syscall_tracepoints(&agent, "with a target");

    target.map();
    bystander.map();
    // The breakpoint is in the target's copy of libc's mmap, not in the bystander's.
    assert_eq!(target.first_byte_of_mmap(), INT3);
    assert_ne!(bystander.first_byte_of_mmap(), INT3);

    let mapper = target.tid("mapper");
    let threads = wait_for(Duration::from_secs(10), || {
        let p = agent.process(target.pid)?;
        let threads = p["threads"].as_array()?.clone();
        threads
            .iter()
            .any(|t| {
                t["tid"] == mapper && t["mapped_growth_bytes"].as_i64() >= Some(64 * MIB as i64)
            })
            .then_some(threads)
    })
    .unwrap_or_else(|| {
        panic!(
            "mapper thread {mapper} not credited with 64 MiB: {:#?}\n{}",
            agent.process(target.pid),
            agent.log()
        )
    });
    assert_eq!(threads[0]["tid"], mapper, "{threads:#?}");
    let calls = agent
        .metrics()
        .value("leakscope_probe_events_total", &[("probe", "mem_uprobes")])
        .unwrap_or(0.0);
    assert!(calls >= 1.0, "no memory call counted: {calls}");
    assert_eq!(threads[0]["comm"], "mapper", "{threads:#?}");
    for idle in ["idle0", "idle1"] {
        let tid = target.tid(idle);
        if let Some(t) = threads.iter().find(|t| t["tid"] == tid) {
            assert!(
                t["mapped_growth_bytes"].as_i64().unwrap() < 16 * MIB as i64,
                "{idle} was credited with the mapping: {t:#}"
            );
        }
    }
    // The bystander mapped the same, and nobody counted it.
    let b = agent.process(bystander.pid);
    assert!(b.as_ref().is_none_or(|p| p["threads"].is_null()), "{b:#?}");

    let pid = target.pid;
    target.exit();
    let detached = format!("per-thread uprobes detached from pid {pid}");
    let off = wait_for(Duration::from_secs(20), || {
        agent.log().contains(&detached).then_some(())
    });
    assert!(off.is_some(), "not detached:\n{}", agent.log());
    assert!(uprobes_on(agent.pid(), pid).is_empty());
    assert_no_syscall_tracepoints(&agent, "after the target exited");
    bystander.exit();
    assert_eq!(agent.get("/healthz").1.trim(), "ok");
}

#[test]
fn a_uprobe_the_kernel_refuses_turns_mapped_bytes_off_for_that_process_and_says_why() {
    if !kernel_tests_enabled(
        "a_uprobe_the_kernel_refuses_turns_mapped_bytes_off_for_that_process_and_says_why",
    ) {
        return;
    }
    let agent = Agent::start(&[
        "--no-task-socket",
        "--threads-for",
        "cmdline=lst-refuse[d]",
        "--break-probe",
        "mem_uprobes",
    ]);
    let target = Mapper::spawn("lst-refused");
    let said = format!("per-thread mapped bytes are off for pid {}", target.pid);
    let line = wait_for(Duration::from_secs(20), || {
        agent
            .log()
            .lines()
            .find(|l| l.contains(&said))
            .map(str::to_string)
    });
    let line = line.unwrap_or_else(|| panic!("no reason given:\n{}", agent.log()));
    assert!(
        line.contains("the kernel refused a uprobe on mmap"),
        "{line}"
    );
    assert!(uprobes_on(agent.pid(), target.pid).is_empty());
    let p = wait_for(Duration::from_secs(10), || {
        agent
            .process(target.pid)
            .filter(|p| p["threads_mapped_off"].is_string())
    });
    assert!(p.is_some(), "{:#?}", agent.process(target.pid));
    assert_eq!(agent.get("/healthz").1.trim(), "ok");
}

#[test]
fn a_static_binary_is_probed_in_itself_and_a_stripped_one_is_said_to_be_off() {
    if !kernel_tests_enabled(
        "a_static_binary_is_probed_in_itself_and_a_stripped_one_is_said_to_be_off",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("leakscope-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let with_symbols = static_mapper(&dir, "lst-static", false);
    let stripped = static_mapper(&dir, "lst-stripped", true);
    let agent = Agent::start(&[
        "--no-task-socket",
        "--threads-for",
        "cmdline=lst-(stati[c]|strippe[d])",
    ]);
    let mut own = Static::spawn(&with_symbols);
    let bare = Static::spawn(&stripped);

    let attached = format!(
        "per-thread uprobes attached to pid {}: {}",
        own.pid(),
        with_symbols.display()
    );
    let on = wait_for(Duration::from_secs(20), || {
        agent.log().contains(&attached).then_some(())
    });
    assert!(on.is_some(), "{attached:?} not in:\n{}", agent.log());
    assert_eq!(uprobes_on(agent.pid(), own.pid()).len(), 8);
    own.map();
    let main_thread = u64::from(own.pid());
    let credited = wait_for(Duration::from_secs(10), || {
        let p = agent.process(own.pid())?;
        p["threads"].as_array()?.iter().find_map(|t| {
            (t["tid"] == main_thread && t["mapped_growth_bytes"].as_i64() >= Some(64 * MIB as i64))
                .then_some(())
        })
    });
    assert!(
        credited.is_some(),
        "{:#?}\n{}",
        agent.process(own.pid()),
        agent.log()
    );

    let said = format!(
        "per-thread mapped bytes are off for pid {}: pid {} maps no libc and its executable \
         defines no mmap/munmap",
        bare.pid(),
        bare.pid()
    );
    let off = wait_for(Duration::from_secs(20), || {
        agent.log().contains(&said).then_some(())
    });
    assert!(off.is_some(), "{said:?} not in:\n{}", agent.log());
    assert!(uprobes_on(agent.pid(), bare.pid()).is_empty());
    let api = wait_for(Duration::from_secs(10), || {
        agent.process(bare.pid()).and_then(|p| {
            p["threads_mapped_off"]
                .as_str()
                .filter(|why| why.contains("no libc"))
                .map(str::to_string)
        })
    });
    assert!(api.is_some(), "{:#?}", agent.process(bare.pid()));
    assert_no_syscall_tracepoints(&agent, "with static targets");
    drop(own);
    drop(bare);
    let _ = std::fs::remove_dir_all(&dir);
}
