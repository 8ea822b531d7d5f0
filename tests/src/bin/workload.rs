//! Benchmark workloads for `cargo xtask bench overhead`.
//!
//! `workload faults MIB ROUNDS`: map MIB of anonymous memory, touch every page, unmap; ROUNDS
//! times (one page fault and one rss_stat event per page).
//! `workload forks COUNT`: fork, exit and reap COUNT children.
//! `workload writes COUNT`: COUNT one-byte writes to /dev/null (a `dd bs=1` loop: a system
//! call and almost nothing else).
//! Prints the elapsed seconds on stdout.
//! `workload --wait-go faults|forks ...`: first prints `ready`, then starts (and its clock) only
//! after a line on stdin, and exits only once stdin is closed: a tracer can attach to the pid
//! before the work and be stopped while the process still exists (`bench alloc`).

use std::time::Instant;

const PAGE: usize = 4096;

fn faults(mib: usize, rounds: usize) {
    let len = mib << 20;
    for _ in 0..rounds {
        // SAFETY: a fresh private anonymous mapping, written within its bounds, then unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap failed");
            let bytes = p.cast::<u8>();
            for off in (0..len).step_by(PAGE) {
                bytes.add(off).write_volatile(1);
            }
            libc::munmap(p, len);
        }
    }
}

fn forks(count: usize) {
    for _ in 0..count {
        // SAFETY: the child only calls async-signal-safe _exit.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => unsafe { libc::_exit(0) },
            p if p > 0 => {
                let mut status = 0;
                unsafe { libc::waitpid(p, &mut status, 0) };
            }
            _ => panic!("fork failed: {}", std::io::Error::last_os_error()),
        }
    }
}

fn writes(count: usize) {
    use std::os::fd::AsRawFd as _;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    let byte = [0u8; 1];
    for _ in 0..count {
        // SAFETY: a valid fd and a one-byte buffer that outlives the call.
        let n = unsafe { libc::write(null.as_raw_fd(), byte.as_ptr().cast(), 1) };
        assert_eq!(n, 1, "write failed: {}", std::io::Error::last_os_error());
    }
}

fn wait_for_go() {
    use std::io::{BufRead as _, Write as _};
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .expect("stdout");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let wait_go = args.get(1).is_some_and(|a| a == "--wait-go");
    if wait_go {
        args.remove(1);
        wait_for_go();
    }
    let num = |i: usize, default: usize| {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    let start = Instant::now();
    match args.get(1).map(String::as_str) {
        Some("faults") => faults(num(2, 256), num(3, 8)),
        Some("forks") => forks(num(2, 2000)),
        Some("writes") => writes(num(2, 2_000_000)),
        _ => {
            eprintln!(
                "usage: workload [--wait-go] faults [MIB] [ROUNDS] | forks [COUNT] | writes [COUNT]"
            );
            std::process::exit(2);
        }
    }
    println!("{:.6}", start.elapsed().as_secs_f64());
    if wait_go {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    }
}
