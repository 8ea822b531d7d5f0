//! leakscope's kernel programs: the always-on tier that keeps every process's RSS current.
#![no_std]
#![no_main]

mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that reaches here; it only exists to satisfy `no_std`.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
