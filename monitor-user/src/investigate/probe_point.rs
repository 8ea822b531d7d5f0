//! Where on an entry point a uprobe costs least.
//!
//! x86 uprobes emulate a few instructions in the kernel (push, nop, jumps) and single-step
//! every other one out of line, which costs a second trap: a uprobe on glibc's `free`, whose
//! first instruction is `test %rdi,%rdi`, costs several times one on `malloc` (`push %r12`).
//! Probes that only read argument registers can sit a little later, on the first emulated
//! instruction, provided nothing before it can change those registers or leave the function
//! on a path that matters. The one such prefix allowed here is the null check of a free-like
//! function (`test %rdi,%rdi; je ...`): the path it skips frees nothing.
//! Source: <https://github.com/torvalds/linux/blob/v6.18/arch/x86/kernel/uprobes.c>
//! (`branch_setup_xol_ops`, `push_setup_xol_ops`).

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};

/// How far into the function the probe may move; the null check is two instructions.
const MAX_SKIPPED: usize = 2;

/// Offset from the start of `code` (the function's first bytes) at which to put an
/// argument-reading entry probe of a free-like function.
pub fn free_probe_offset(code: &[u8]) -> u64 {
    if !cfg!(target_arch = "x86_64") {
        return 0;
    }
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut insns = Vec::new();
    while decoder.can_decode() && insns.len() <= MAX_SKIPPED {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return 0;
        }
        insns.push(insn);
    }
    if insns.first().is_some_and(is_emulated) {
        return 0;
    }
    let null_check = insns.len() > MAX_SKIPPED
        && insns[0].mnemonic() == Mnemonic::Test
        && insns[0].op0_kind() == OpKind::Register
        && insns[0].op0_register() == Register::RDI
        && insns[0].op1_register() == Register::RDI
        && insns[1].mnemonic() == Mnemonic::Je;
    if null_check && is_emulated(&insns[2]) {
        insns[2].ip()
    } else {
        0
    }
}

/// Instructions the x86 uprobe code emulates instead of single-stepping.
fn is_emulated(insn: &iced_x86::Instruction) -> bool {
    matches!(
        insn.mnemonic(),
        Mnemonic::Nop | Mnemonic::Jmp | Mnemonic::Call
    ) || (insn.mnemonic() == Mnemonic::Push
        && matches!(insn.code(), Code::Push_r64 | Code::Push_r16))
}

#[cfg(test)]
mod tests {
    use super::*;

    // test %rdi,%rdi; je +0xc2; push %rbp; lea -0x10(%rdi),%rsi  (glibc 2.36 free)
    const GLIBC_FREE: &[u8] = &[
        0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77, 0xf0,
    ];

    #[test]
    fn skips_the_null_check_of_free_to_an_emulated_push() {
        assert_eq!(free_probe_offset(GLIBC_FREE), 9);
    }

    #[test]
    fn stays_at_entry_when_entry_is_already_emulated() {
        // push %r12; push %rbp (glibc malloc)
        assert_eq!(free_probe_offset(&[0x41, 0x54, 0x55, 0x53]), 0);
        // endbr64-less jmp to the real body
        assert_eq!(free_probe_offset(&[0xe9, 0x10, 0, 0, 0, 0x90]), 0);
    }

    #[test]
    fn stays_at_entry_for_any_other_prefix() {
        // test %rdi,%rdi; jne ... — the fall-through is the null path: not safe to skip.
        let jne = [0x48, 0x85, 0xff, 0x0f, 0x85, 0x10, 0, 0, 0, 0x55];
        assert_eq!(free_probe_offset(&jne), 0);
        // mov %rdi,%rax; ... — may change what the probe reads.
        let mov = [0x48, 0x89, 0xf8, 0x55, 0x55];
        assert_eq!(free_probe_offset(&mov), 0);
        // test of another register.
        let other = [0x48, 0x85, 0xf6, 0x0f, 0x84, 0x10, 0, 0, 0, 0x55];
        assert_eq!(free_probe_offset(&other), 0);
        // null check followed by something the kernel single-steps anyway.
        let then_mov = [0x48, 0x85, 0xff, 0x74, 0x10, 0x48, 0x89, 0xf8];
        assert_eq!(free_probe_offset(&then_mov), 0);
        assert_eq!(free_probe_offset(&[]), 0);
        assert_eq!(free_probe_offset(&[0x0f]), 0);
    }

    #[test]
    fn short_je_form_is_accepted() {
        // test %rdi,%rdi; je +0x10; push %rbx
        assert_eq!(
            free_probe_offset(&[0x48, 0x85, 0xff, 0x74, 0x10, 0x53, 0x90]),
            5
        );
    }
}
