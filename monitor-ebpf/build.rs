use which::which;

/// The object links with bpf-linker; point at the fix early instead of at a linker error.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if which("bpf-linker").is_err() {
        println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup`");
    }
}
