//! `investigate --unwind dwarf` end to end: a C program whose leaked pages are first touched
//! inside libc's `memset` (Debian's libc keeps no frame pointers), built by the test with and
//! without frame pointers, stripped or not, traced by the real kernel programs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use integration_tests::{Spawned, agent_bin, kernel_tests_enabled};
use serde_json::Value;

const LEAKER: &str = "leak_filled_block";

/// tests/c/leak_memset.c built with `flags` into a directory of the test's own.
fn build(name: &str, flags: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leakscope-unwind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/leak_memset.c");
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .status()
        .expect("cc (cargo xtask setup --tests installs gcc)");
    assert!(status.success(), "cc {flags:?} failed");
    out
}

fn start(binary: &Path, args: &[&str]) -> Spawned {
    let s = Spawned::new(Command::new(binary).args(args));
    // Past start-up: blocks are being leaked.
    std::thread::sleep(Duration::from_millis(300));
    s
}

/// `investigate --json` with a sample period dense enough for a few seconds; growth mode
/// unless `args` say otherwise.
fn investigate(pid: u32, args: &[&str]) -> Output {
    let mode: &[&str] = if args.contains(&"--mode") {
        &[]
    } else {
        &["--mode", "growth"]
    };
    Command::new(agent_bin())
        .args(["investigate", "--pid", &pid.to_string(), "--json"])
        .args(["--sample-period", "8"])
        .args(mode)
        .args(args)
        .output()
        .expect("run leakscope investigate")
}

fn growth_report(out: &Output) -> Value {
    mode_report(out, "growth")
}

fn mode_report(out: &Output, mode: &str) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}); stderr: {stderr}"));
    reports
        .into_iter()
        .find(|r| r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {mode} report; stderr: {stderr}"))
}

/// The page-fault stack holding the most bytes.
fn top_page_fault(report: &Value) -> &Value {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["source"] == "page_fault")
        .max_by_key(|s| s["bytes"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no page_fault stack: {report:#}"))
}

/// The frames of `stack` in `module` (the test's binary), leaf first.
fn frames_in<'a>(stack: &'a Value, module: &Path) -> Vec<&'a Value> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["module"].as_str() == module.to_str())
        .collect()
}

/// The function of the leaf-most frame in the program itself (libc's frames are below it).
fn leaf_user_function(stack: &Value, module: &Path) -> String {
    let frames = frames_in(stack, module);
    let leaf = frames
        .first()
        .unwrap_or_else(|| panic!("no frame in {}: {stack:#}", module.display()));
    leaf["function"].as_str().unwrap_or("(none)").to_owned()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("gzip");
    assert!(out.status.success(), "gzip -dc {}", path.display());
    out.stdout
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn charged_to_the_leaking_function(name: &str, flags: &[&str]) {
    let binary = build(name, flags);
    let target = start(&binary, &[]);
    let dir = std::env::temp_dir().join(format!("leakscope-unwind-out-{}", target.pid()));
    let out = investigate(
        target.pid(),
        &[
            "--mode",
            "both",
            "--min-age",
            "1s",
            "--duration",
            "4s",
            "--out",
            dir.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = growth_report(&out);
    let top = top_page_fault(&report);
    let functions: Vec<&str> = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(
        functions.first().is_some_and(|f| f.contains("memset")),
        "the pages are first touched in memset: {functions:?}"
    );
    assert_eq!(
        leaf_user_function(top, &binary),
        LEAKER,
        "{name}: {functions:?}"
    );
    assert_eq!(top["truncated"], false, "{top:#}");
    assert!(functions.contains(&"main"), "{functions:?}");
    // The files written for pprof readers say the same.
    let json = std::fs::read(dir.join("report.json")).unwrap();
    let written: Vec<Value> = serde_json::from_slice(&json).unwrap();
    let written = written.iter().find(|r| r["mode"] == "growth").unwrap();
    assert_eq!(leaf_user_function(top_page_fault(written), &binary), LEAKER);
    let pprof = gunzip(&dir.join("growth.pb.gz"));
    assert!(contains(&pprof, LEAKER), "{LEAKER} not in growth.pb.gz");
    assert!(!contains(&pprof, "[truncated]"), "a stack was truncated");
    // The sampled allocations are unwound too: malloc's caller leads.
    let alloc = mode_report(&out, "alloc");
    let blocks = alloc["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|s| s["bytes"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no outstanding blocks: {alloc:#}"));
    assert_eq!(leaf_user_function(blocks, &binary), LEAKER, "{blocks:#}");
    assert_eq!(blocks["truncated"], false, "{blocks:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pages_first_touched_in_memset_are_charged_to_its_caller_with_frame_pointers() {
    if !kernel_tests_enabled(
        "pages_first_touched_in_memset_are_charged_to_its_caller_with_frame_pointers",
    ) {
        return;
    }
    charged_to_the_leaking_function("leak_fp", &["-fno-omit-frame-pointer"]);
}

#[test]
fn pages_first_touched_in_memset_are_charged_to_its_caller_without_frame_pointers() {
    if !kernel_tests_enabled(
        "pages_first_touched_in_memset_are_charged_to_its_caller_without_frame_pointers",
    ) {
        return;
    }
    charged_to_the_leaking_function("leak_nofp", &["-fomit-frame-pointer"]);
}

#[test]
fn frame_pointers_alone_skip_the_caller_of_memset() {
    if !kernel_tests_enabled("frame_pointers_alone_skip_the_caller_of_memset") {
        return;
    }
    // What `--unwind fp` is kept for (comparing costs) and why it is not the default: the
    // frame-pointer walk from inside memset steps over its caller.
    let binary = build("leak_fp_walk", &["-fno-omit-frame-pointer"]);
    let target = start(&binary, &[]);
    let out = investigate(target.pid(), &["--duration", "3s", "--unwind", "fp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = growth_report(&out);
    let top = top_page_fault(&report);
    assert_eq!(leaf_user_function(top, &binary), "main", "{top:#}");
    let notes = report["notes"].to_string();
    assert!(notes.contains("frame pointers only"), "{notes}");
}

#[test]
fn a_stripped_program_unwinds_through_module_offsets() {
    if !kernel_tests_enabled("a_stripped_program_unwinds_through_module_offsets") {
        return;
    }
    let binary = build("leak_stripped", &["-fomit-frame-pointer", "-s"]);
    let target = start(&binary, &[]);
    let out = investigate(target.pid(), &["--duration", "3s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = growth_report(&out);
    let top = top_page_fault(&report);
    let own = frames_in(top, &binary);
    // The leaking function and main (and _start): no names, but unwound through, each a
    // distinct offset in the binary that addr2line can resolve with the unstripped build.
    assert!(own.len() >= 2, "{top:#}");
    for f in &own {
        assert!(f["function"].is_null(), "{f:#}");
        assert!(f["offset"].as_u64().unwrap() > 0, "{f:#}");
    }
    assert_ne!(own[0]["offset"], own[1]["offset"]);
    assert_eq!(top["truncated"], false, "{top:#}");
    // libc still has its symbols.
    let first = top["frames"][0]["function"].as_str().unwrap_or_default();
    assert!(first.contains("memset"), "{top:#}");
}

#[test]
fn a_process_that_exits_mid_trace_still_gets_its_unwound_report() {
    if !kernel_tests_enabled("a_process_that_exits_mid_trace_still_gets_its_unwound_report") {
        return;
    }
    // Exits after 100 blocks (about 2 s) into a 20 s trace.
    let binary = build("leak_exits", &["-fomit-frame-pointer"]);
    let target = start(&binary, &["100"]);
    let out = investigate(target.pid(), &["--duration", "20s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the exit is reported: {stderr}");
    assert!(stderr.contains("exited"), "{stderr}");
    let report = growth_report(&out);
    let top = top_page_fault(&report);
    assert_eq!(leaf_user_function(top, &binary), LEAKER, "{top:#}");
}

/// Function names of `stack`, leaf first.
fn names(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect()
}

#[test]
fn a_stack_deeper_than_the_copy_is_joined_to_frame_pointers_or_marked_truncated() {
    if !kernel_tests_enabled(
        "a_stack_deeper_than_the_copy_is_joined_to_frame_pointers_or_marked_truncated",
    ) {
        return;
    }
    // 100 recursive calls of 256 bytes each: more stack than the 16 KiB the kernel copies.
    let depth = "100";
    // With frame pointers, the kernel's walk continues where the copy ends.
    let binary = build("leak_deep_fp", &["-fno-omit-frame-pointer"]);
    let target = start(&binary, &["0", depth]);
    let out = investigate(target.pid(), &["--duration", "3s"]);
    drop(target);
    let report = growth_report(&out);
    let top = top_page_fault(&report);
    let functions = names(top);
    assert_eq!(leaf_user_function(top, &binary), LEAKER, "{functions:?}");
    assert_eq!(top["truncated"], false, "{functions:?}");
    // Every recursive frame once (the 100 calls and main's), then main.
    let deep = functions.iter().filter(|f| **f == "leak_deep").count();
    assert_eq!(deep, 101, "{functions:?}");
    assert!(functions.contains(&"main"), "{functions:?}");

    // Without them, the stack ends where the copy does, and says so everywhere.
    let binary = build("leak_deep_nofp", &["-fomit-frame-pointer"]);
    let target = start(&binary, &["0", depth]);
    let dir = std::env::temp_dir().join(format!("leakscope-unwind-deep-{}", target.pid()));
    let out = investigate(
        target.pid(),
        &["--duration", "3s", "--out", dir.to_str().unwrap()],
    );
    let report = growth_report(&out);
    let top = top_page_fault(&report);
    let functions = names(top);
    assert_eq!(leaf_user_function(top, &binary), LEAKER, "{functions:?}");
    assert_eq!(top["truncated"], true, "{functions:?}");
    assert_eq!(functions.last(), Some(&"[truncated]"), "{functions:?}");
    assert!(!functions.contains(&"main"), "{functions:?}");
    let pprof = gunzip(&dir.join("growth.pb.gz"));
    assert!(
        contains(&pprof, "[truncated]"),
        "no [truncated] in growth.pb.gz"
    );
    let table = std::fs::read_to_string(dir.join("growth.txt")).unwrap();
    assert!(table.contains("[truncated]"), "{table}");
    let notes = report["notes"].to_string();
    assert!(notes.contains("end in [truncated]"), "{notes}");
    let _ = std::fs::remove_dir_all(&dir);
}
