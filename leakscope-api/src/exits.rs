//! `/api/v1/exits`: the last processes to exit, with what they held at the end. A process that
//! lived less than one sampling interval shows here, read by the exit program itself.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitsResponse {
    /// Newest last; only processes the agent's `--match` selection covers by pid or name.
    pub exits: Vec<ExitedProcess>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitedProcess {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// The kernel's `exit_code`: the status shifted left by 8, or the killing signal.
    pub exit_code: u32,
    /// Resident bytes (file + anon + shmem) at exit, from the kernel's batched counters
    /// (within `max(32, 2 × CPUs)` pages per CPU and kind of the exact sum: the exit path
    /// does not pay for a per-CPU sum), or the last snapshot where the exit could not be read.
    pub resident_bytes: u64,
    /// Highest resident bytes the address space reached (the kernel's high-water mark).
    pub peak_rss_bytes: u64,
    /// Absent when the process was born and gone between two snapshots.
    pub lifetime_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = ExitsResponse {
            exits: vec![ExitedProcess {
                pid: 7,
                ppid: 1,
                comm: "w".into(),
                exit_code: 3 << 8,
                resident_bytes: 1,
                peak_rss_bytes: 2,
                lifetime_seconds: None,
            }],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"lifetime_seconds\":null"), "{text}");
        assert_eq!(serde_json::from_str::<ExitsResponse>(&text).unwrap(), r);
    }
}
