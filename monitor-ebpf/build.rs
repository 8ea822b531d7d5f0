use which::which;

/// The object links with bpf-linker; point at the fix early instead of at a linker error.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    emit_target_arch();
    if which("bpf-linker").is_err() {
        println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup`");
    }
}

/// The programs read user registers (`pt_regs`), whose layout is the host's: name the host
/// architecture as aya-ebpf does, so `cfg(bpf_target_arch = ...)` picks the right fields.
fn emit_target_arch() {
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
    println!("cargo:rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
    let arch = std::env::var("CARGO_CFG_BPF_TARGET_ARCH").unwrap_or_else(|_| {
        let host = std::env::var("HOST").unwrap_or_default();
        host.split('-').next().unwrap_or_default().to_owned()
    });
    println!("cargo:rustc-cfg=bpf_target_arch=\"{arch}\"");
}
