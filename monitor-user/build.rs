use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The pinned nightly of `monitor-ebpf/rust-toolchain.toml`.
fn ebpf_toolchain(ebpf_dir: &str) -> anyhow::Result<String> {
    let path = format!("{ebpf_dir}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={path}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| anyhow!("{path} names no channel"))
}

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .iter()
        .find(|p| p.name.as_str() == "monitor-ebpf")
        .ok_or_else(|| anyhow!("monitor-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("monitor-ebpf manifest has no parent"))?
        .as_str();
    let toolchain = ebpf_toolchain(root_dir)?;
    aya_build::build_ebpf(
        [Package {
            name: "monitor-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )?;
    // With AYA_BUILD_SKIP (clippy, docs without the BPF toolchain) aya-build writes nothing:
    // embed an empty object, which the agent refuses at start with a clear message.
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("monitor");
    if !object.exists() {
        std::fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
