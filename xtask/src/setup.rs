//! Installs the eBPF toolchain (and test dependencies) when missing; quick when nothing is.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, check, output};

/// Programs the tests drive for real, and the Debian package of each.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("cc", "gcc"),
    ("make", "make"),
    // Debian's, by path: the security suite runs it as an unprivileged user, who cannot
    // reach a python under /root.
    ("/usr/bin/python3", "python3"),
    // Python frames are tested under Debian's CPython 3.11 (static libpython, stripped)
    // besides the machine's pyenv build; gdb reads libpython's DWARF to check the 3.11
    // offsets table (monitor-user's investigate::python::layout test).
    ("/usr/bin/python3.11", "python3.11"),
    ("gdb", "gdb"),
    ("setpriv", "util-linux"),
    ("runuser", "util-linux"),
    // The security suite's network peer lives in a namespace of its own.
    ("ip", "iproute2"),
    // The security suite checks that no program outlives a killed agent.
    ("bpftool", "bpftool"),
    ("redis-server", "redis-server"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // tests/tests/docker.rs: a real dockerd, and an image imported from busybox-static's
    // single static binary (no registry is reachable).
    ("dockerd", "docker.io"),
    ("busybox", "busybox-static"),
    // tests/tests/report.rs: the incident report rendered by headless Chromium.
    ("chromium", "chromium"),
    // tests/tests/top.rs: `leakscope top` runs in a real terminal, read back with capture-pane.
    ("tmux", "tmux"),
];

/// What `cargo xtask bench alloc` drives besides the agent: the C benchmark's toolchain, the
/// bpftrace baseline, and bpftool (it confirms that bpftrace's probes are in place).
const BENCH_ALLOC_PACKAGES: &[(&str, &str)] = &[
    ("cc", "gcc"),
    ("make", "make"),
    ("bpftrace", "bpftrace"),
    ("bpftool", "bpftool"),
];

/// The test suite's Python packages, installed into [`venv_dir`].
const TEST_REQUIREMENTS: &str = "tests/requirements.txt";

pub fn run(with_tests: bool) -> Result<()> {
    let toolchain = ebpf_toolchain()?;
    ensure_ebpf_toolchain(&toolchain)?;
    let major = toolchain_llvm_major(&toolchain)?;
    let mut apt = Apt::default();
    ensure_llvm_dev(&mut apt, major)?;
    ensure_bpf_linker(major)?;
    if with_tests {
        install_missing(&mut apt, TEST_PACKAGES)?;
        ensure_test_venv(&mut apt)?;
    }
    Ok(())
}

/// Installs what `cargo xtask bench alloc` needs on top of [`run`]'s toolchain.
pub fn ensure_bench_alloc_tools() -> Result<()> {
    install_missing(&mut Apt::default(), BENCH_ALLOC_PACKAGES)
}

/// `(binary, Debian package)` pairs: installs the package of each binary not on PATH.
fn install_missing(apt: &mut Apt, packages: &[(&str, &str)]) -> Result<()> {
    for (binary, package) in packages {
        if which(binary).is_none() {
            apt.install(package)?;
        }
    }
    Ok(())
}

/// A virtualenv of the project's own, so tests never depend on (or change) the system Python.
pub fn venv_dir() -> std::path::PathBuf {
    util::workspace_root().join("target/test-venv")
}

pub fn venv_python() -> std::path::PathBuf {
    venv_dir().join("bin/python3")
}

fn ensure_test_venv(apt: &mut Apt) -> Result<()> {
    let root = util::workspace_root();
    let requirements = root.join(TEST_REQUIREMENTS);
    let wanted = requirements_fingerprint(&root)?;
    let stamp = venv_dir().join(".leakscope-requirements");
    if venv_python().is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    if !venv_python().is_file() {
        eprintln!(
            "xtask setup: creating the test virtualenv in {}",
            venv_dir().display()
        );
        let create = || {
            let mut c = Command::new("python3");
            c.args(["-m", "venv", "--clear"]).arg(venv_dir());
            c
        };
        if check(create()).is_err() {
            // Debian's python3 ships venv (and ensurepip) separately.
            apt.install("python3-venv")?;
            check(create()).context("creating the test virtualenv")?;
        }
    }
    eprintln!("xtask setup: installing the test suite's Python packages");
    let mut pip = Command::new(venv_python());
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
    ])
    .arg(&requirements);
    check(pip).context("installing tests/requirements.txt")?;
    std::fs::write(&stamp, wanted).context("writing the virtualenv stamp")?;
    Ok(())
}

/// Changes when any requirements file the test suite reads changes.
fn requirements_fingerprint(root: &Path) -> Result<String> {
    let mut all = String::new();
    for file in [
        TEST_REQUIREMENTS,
        "integrations/python/requirements-test.txt",
    ] {
        let path = root.join(file);
        all.push_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        );
    }
    Ok(all)
}

/// The nightly that builds the kernel object, pinned in `monitor-ebpf/rust-toolchain.toml`.
pub fn ebpf_toolchain() -> Result<String> {
    let path = util::workspace_root().join("monitor-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_channel(&text).with_context(|| format!("{} names no channel", path.display()))
}

fn parse_channel(toml: &str) -> Option<String> {
    toml.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
}

/// Installs the pinned nightly with rust-src; never updates a toolchain in place.
fn ensure_ebpf_toolchain(toolchain: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask setup: installing {toolchain} with rust-src (builds the kernel object)");
    check({
        let mut c = Command::new("rustup");
        c.args([
            "toolchain",
            "install",
            toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]);
        c
    })
    .with_context(|| format!("installing {toolchain} with rust-src"))
}

/// The LLVM major the eBPF toolchain was built with; bpf-linker must use the same one.
fn toolchain_llvm_major(toolchain: &str) -> Result<u32> {
    let vv = output(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .arg("-vV"),
    )?;
    parse_llvm_major(&vv)
        .with_context(|| format!("`rustc +{toolchain} -vV` printed no `LLVM version:` line"))
}

pub fn parse_llvm_major(vv: &str) -> Option<u32> {
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

fn ensure_llvm_dev(apt: &mut Apt, major: u32) -> Result<()> {
    let prefix = format!("/usr/lib/llvm-{major}");
    if Path::new(&prefix).join("lib/libLLVM.so").exists()
        && Path::new(&prefix).join("include/llvm").is_dir()
    {
        return Ok(());
    }
    apt.install(&format!("llvm-{major}-dev"))
}

fn ensure_bpf_linker(major: u32) -> Result<()> {
    if let Some(path) = which("bpf-linker") {
        let libs = output(Command::new("ldd").arg(&path)).unwrap_or_default();
        if libs.contains(&format!("libLLVM.so.{major}"))
            || libs.contains(&format!("libLLVM-{major}"))
        {
            return Ok(());
        }
        eprintln!("xtask setup: {path} is not built for LLVM {major}; rebuilding it");
    }
    eprintln!("xtask setup: building bpf-linker for LLVM {major} (about a minute)");
    let mut cmd = util::cargo_cmd(&[
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        "~0.13",
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ]);
    cmd.env("LLVM_PREFIX", format!("/usr/lib/llvm-{major}"));
    check(cmd).context("building bpf-linker")
}

pub fn which(binary: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    })
}

/// apt-get, with `update` run at most once per setup.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    pub fn install(&mut self, package: &str) -> Result<()> {
        if !util::is_root() {
            bail!(
                "`{package}` is missing and installing it needs root: run `sudo apt-get install -y {package}`"
            );
        }
        if !self.updated {
            eprintln!("xtask setup: apt-get update");
            check(apt_cmd(&["update", "-qq"]))?;
            self.updated = true;
        }
        eprintln!("xtask setup: apt-get install {package}");
        check(apt_cmd(&[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            package,
        ]))
        .with_context(|| format!("installing the Debian package {package}"))
    }
}

fn apt_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("apt-get");
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_channel_is_read() {
        assert_eq!(
            parse_channel("[toolchain]\nchannel = \"nightly-2026-05-20\"\n").as_deref(),
            Some("nightly-2026-05-20")
        );
        assert_eq!(parse_channel("[toolchain]\n"), None);
        let pinned = ebpf_toolchain().unwrap();
        assert!(
            pinned.starts_with("nightly-"),
            "{pinned}: a dated nightly, never plain nightly"
        );
    }

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
