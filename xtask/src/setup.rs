//! Installs the eBPF toolchain (and test dependencies) when missing; quick when nothing is.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, check, output};

/// Debian packages the tests drive for real.
const TEST_PACKAGES: &[(&str, &str)] = &[("gcc", "gcc"), ("python3", "python3")];

pub fn run(with_tests: bool) -> Result<()> {
    ensure_rust_src()?;
    let major = nightly_llvm_major()?;
    let mut apt = Apt::default();
    ensure_llvm_dev(&mut apt, major)?;
    ensure_bpf_linker(major)?;
    if with_tests {
        for (binary, package) in TEST_PACKAGES {
            if which(binary).is_none() {
                apt.install(package)?;
            }
        }
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask setup: installing the nightly toolchain's rust-src");
    check({
        let mut c = Command::new("rustup");
        c.args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]);
        c
    })
    .context("installing nightly rust-src (needed to build core for bpfel-unknown-none)")
}

/// The LLVM major the nightly rustc was built with; bpf-linker must use the same one.
fn nightly_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    parse_llvm_major(&vv).context("`rustc +nightly -vV` printed no `LLVM version:` line")
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
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
