//! A process that really grows and frees anonymous memory on command, for the agent's tests.
//!
//! Reads lines from stdin: `grow MIB` (allocate and touch MIB mebibytes), `free` (release all),
//! `exit` (or `exit CODE`). Answers each with one line on stdout once done. Arguments are ignored (tests pass
//! fake secrets in them to check they are never exported).

use std::io::{BufRead as _, Write as _};

const PAGE: usize = 4096;

fn main() {
    let mut held: Vec<Vec<u8>> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<usize>().ok()),
        ) {
            (Some("grow"), Some(mib)) => {
                let mut block = vec![0u8; mib << 20];
                // Touch every page so it becomes resident, not just reserved.
                for i in (0..block.len()).step_by(PAGE) {
                    block[i] = 1;
                }
                held.push(std::hint::black_box(block));
                let _ = writeln!(out, "grown {mib}");
            }
            (Some("free"), _) => {
                held.clear();
                let _ = writeln!(out, "freed");
            }
            (Some("exit"), Some(code)) => std::process::exit(code as i32),
            (Some("exit"), _) | (None, _) => break,
            _ => {
                let _ = writeln!(out, "unknown command: {line}");
            }
        }
        let _ = out.flush();
    }
}
