//! Benchmark workloads for `cargo xtask bench overhead`.
//!
//! `workload faults MIB ROUNDS`: map MIB of anonymous memory, touch every page, unmap; ROUNDS
//! times (one page fault and one rss_stat event per page).
//! `workload forks COUNT`: fork, exit and reap COUNT children.
//! Prints the elapsed seconds on stdout.

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, default: usize| {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    let start = Instant::now();
    match args.get(1).map(String::as_str) {
        Some("faults") => faults(num(2, 256), num(3, 8)),
        Some("forks") => forks(num(2, 2000)),
        _ => {
            eprintln!("usage: workload faults [MIB] [ROUNDS] | workload forks [COUNT]");
            std::process::exit(2);
        }
    }
    println!("{:.6}", start.elapsed().as_secs_f64());
}
