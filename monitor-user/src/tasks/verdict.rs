//! Does a task type leak? Decided from its recent runs alone, per task name.
//!
//! A task type is *suspected of leaking* when, over its last runs (at most the window, at
//! least [`VerdictConfig::min_runs`]), both hold:
//!
//! 1. **It retains memory in most runs**: strictly more than half of the runs ended with the
//!    process holding at least [`VerdictConfig::noise_bytes`] more than when they began.
//!    The kernel folds per-CPU deltas into the counts it reports in batches of 32+ pages, so
//!    smaller differences are noise.
//! 2. **The process floor rises with its runs**: in each process that ran it, the memory held
//!    at the end of its last run minus that held at the beginning of its first run (the
//!    floor's rise across the span of its runs) is summed over processes; that sum must be at
//!    least [`VerdictConfig::floor_share`] of what its runs retained (positive retentions
//!    summed), and above the noise. Memory a run keeps and a later job gives back (a cache
//!    trimmed by another task, an allocator returning pages) does not raise the floor, so the
//!    task that merely borrowed it is not blamed.
//!
//! Neither alone suffices: a task that warms a cache retains in its first runs only (1 fails);
//! a clean task run in a process that leaks elsewhere sees the floor rise but retains nothing
//! itself (1 fails); a task whose retention is released by another job retains in most runs
//! but leaves no rise (2 fails).

use serde::Serialize;

use super::attribution::TaskAttribution;

#[derive(Clone, Debug)]
pub struct VerdictConfig {
    /// Fewer runs than this: no verdict yet.
    pub min_runs: usize,
    /// A run retains when it ends with at least this many more bytes held than it began with.
    pub noise_bytes: i64,
    /// Share of the runs' retention the floor must have kept, 0 to 1.
    pub floor_share: f64,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            min_runs: 8,
            // 2 CPUs' worth of the kernel's per-CPU batching (32 pages each), twice over.
            noise_bytes: 256 * 1024,
            floor_share: 0.5,
        }
    }
}

/// One completed run, as the verdict sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSample {
    pub pid: u32,
    /// Bytes the process held (anon + shmem + swap) at the begin and end markers.
    pub begin_held: i64,
    pub end_held: i64,
}

impl RunSample {
    pub fn retained(&self) -> i64 {
        self.end_held - self.begin_held
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TaskVerdict {
    pub leak_suspected: bool,
    /// Runs the verdict looked at (the most recent ones).
    pub runs_considered: usize,
    /// Of those, runs that retained at least the noise threshold.
    pub retaining_runs: usize,
    /// Median of the runs' retained bytes: "what one run keeps".
    pub median_retained_bytes: i64,
    /// Positive retentions summed.
    pub retained_total_bytes: i64,
    /// Rise of the floor across the span of the runs, summed over processes.
    pub floor_rise_bytes: i64,
    /// Why, in words.
    pub evidence: String,
    /// Evidence from the worker's allocator (`blocks=`), across runs, when it sends it.
    pub allocator: Option<TaskAttribution>,
}

/// The verdict from the per-run rule and, when the worker sends allocator blocks and a type
/// has enough runs with them, from those: they name a type that keeps objects whatever the pages
/// did. The per-run rule still names a type that keeps a few large buffers (few blocks, many
/// pages), unless another type of its pools keeps objects: then that one explains the rise
/// the pages showed in this type's runs (the allocator's free room moving between types).
pub fn combine(per_run: &TaskVerdict, allocator: Option<&TaskAttribution>) -> TaskVerdict {
    let mut v = per_run.clone();
    v.allocator = allocator.cloned();
    let Some(a) = allocator else {
        return v;
    };
    if !a.enough_runs {
        // The worker sends blocks: pages alone decide nothing until they can be checked
        // (an RQ work horse's allocator slack looks like retention in every run).
        v.leak_suspected = false;
        v.evidence = format!("{}; allocator: {}", per_run.evidence, a.evidence);
        return v;
    }
    let by_pages = per_run.leak_suspected && !a.explained_by_other;
    v.leak_suspected = a.suspected || by_pages;
    v.evidence = if a.suspected || !by_pages {
        format!("allocator: {}; pages: {}", a.evidence, per_run.evidence)
    } else {
        format!(
            "pages: {}; allocator: {} (large buffers keep few blocks)",
            per_run.evidence, a.evidence
        )
    };
    if per_run.leak_suspected && a.explained_by_other && !a.suspected {
        v.evidence
            .push_str("; another type of its pools keeps the objects that explain the rise");
    }
    v
}

/// Median of `values` (the lower middle for even counts); 0 when empty.
pub fn median(values: &mut [i64]) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[(values.len() - 1) / 2]
}

/// Assesses a task type from its runs, oldest first.
pub fn assess(runs: &[RunSample], cfg: &VerdictConfig) -> TaskVerdict {
    let n = runs.len();
    let mut retained: Vec<i64> = runs.iter().map(RunSample::retained).collect();
    let retaining_runs = retained.iter().filter(|r| **r >= cfg.noise_bytes).count();
    let retained_total_bytes: i64 = retained.iter().filter(|r| **r > 0).sum();
    let median_retained_bytes = median(&mut retained);

    // Per process: first begin and last end of this task's runs (runs are in time order).
    let mut spans: Vec<(u32, i64, i64)> = Vec::new();
    for r in runs {
        match spans.iter_mut().find(|(pid, _, _)| *pid == r.pid) {
            Some(span) => span.2 = r.end_held,
            None => spans.push((r.pid, r.begin_held, r.end_held)),
        }
    }
    let floor_rise_bytes: i64 = spans.iter().map(|(_, first, last)| last - first).sum();

    let mut v = TaskVerdict {
        leak_suspected: false,
        runs_considered: n,
        retaining_runs,
        median_retained_bytes,
        retained_total_bytes,
        floor_rise_bytes,
        evidence: String::new(),
        allocator: None,
    };
    let mib = |b: i64| b as f64 / (1 << 20) as f64;
    if n < cfg.min_runs {
        v.evidence = format!("{n} runs; a verdict needs {}", cfg.min_runs);
        return v;
    }
    let most_retain = retaining_runs * 2 > n;
    let floor_rises = floor_rise_bytes > cfg.noise_bytes
        && floor_rise_bytes as f64 >= cfg.floor_share * retained_total_bytes as f64;
    v.leak_suspected = most_retain && floor_rises;
    v.evidence = format!(
        "{retaining_runs} of {n} runs retained >= {:.2} MiB (median {:.2} MiB); \
         the floor rose {:.2} MiB while runs retained {:.2} MiB",
        mib(cfg.noise_bytes),
        mib(median_retained_bytes),
        mib(floor_rise_bytes),
        mib(retained_total_bytes),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1 << 20;

    /// Runs of one task in one process, each starting where the process stood: `floor` moves
    /// by `between` (other jobs) before each run, and by the run's own retention.
    fn runs(pid: u32, retained: &[i64], between: &[i64]) -> Vec<RunSample> {
        let mut floor = 100 * MIB;
        retained
            .iter()
            .enumerate()
            .map(|(i, r)| {
                floor += between.get(i).copied().unwrap_or(0);
                let s = RunSample {
                    pid,
                    begin_held: floor,
                    end_held: floor + r,
                };
                floor += r;
                s
            })
            .collect()
    }

    fn cfg() -> VerdictConfig {
        VerdictConfig::default()
    }

    #[test]
    fn a_task_that_keeps_what_it_takes_is_suspected() {
        let v = assess(&runs(1, &[4 * MIB; 20], &[]), &cfg());
        assert!(v.leak_suspected, "{v:?}");
        assert_eq!(v.retaining_runs, 20);
        assert_eq!(v.median_retained_bytes, 4 * MIB);
        assert_eq!(v.floor_rise_bytes, 80 * MIB);
        assert_eq!(v.retained_total_bytes, 80 * MIB);
    }

    #[test]
    fn a_task_that_frees_what_it_takes_is_not() {
        let mut r = vec![0; 20];
        r[3] = 16 * MIB; // the allocator kept its heap once
        let v = assess(&runs(1, &r, &[]), &cfg());
        assert!(!v.leak_suspected, "{v:?}");
        assert_eq!(v.retaining_runs, 1);
    }

    #[test]
    fn too_few_runs_give_no_verdict() {
        let v = assess(&runs(1, &[4 * MIB; 7], &[]), &cfg());
        assert!(!v.leak_suspected);
        assert!(v.evidence.contains("needs 8"), "{}", v.evidence);
    }

    #[test]
    fn exactly_half_retaining_is_not_most() {
        let r: Vec<i64> = (0..20)
            .map(|i| if i % 2 == 0 { 4 * MIB } else { 0 })
            .collect();
        let v = assess(&runs(1, &r, &[]), &cfg());
        assert_eq!(v.retaining_runs, 10);
        assert!(!v.leak_suspected, "{v:?}");
        let mut r = r;
        r[1] = 4 * MIB;
        assert!(assess(&runs(1, &r, &[]), &cfg()).leak_suspected);
    }

    #[test]
    fn retention_given_back_between_runs_is_not_a_leak() {
        // Every run keeps 4 MiB that another job releases before the next run.
        let v = assess(&runs(1, &[4 * MIB; 20], &[-4 * MIB; 20]), &cfg());
        assert_eq!(v.retaining_runs, 20);
        assert!(v.floor_rise_bytes <= 4 * MIB, "{v:?}");
        assert!(!v.leak_suspected, "{v:?}");
    }

    #[test]
    fn a_clean_task_beside_a_leaking_one_is_not_blamed() {
        // Another task leaks 8 MiB between each of this task's runs: the floor rises, but
        // this task retains nothing.
        let v = assess(&runs(1, &[0; 20], &[8 * MIB; 20]), &cfg());
        assert!(v.floor_rise_bytes > 100 * MIB);
        assert!(!v.leak_suspected, "{v:?}");
    }

    #[test]
    fn a_cache_that_warms_up_is_not_a_leak() {
        let mut r = vec![0; 30];
        for x in r.iter_mut().take(5) {
            *x = 8 * MIB;
        }
        assert!(!assess(&runs(1, &r, &[]), &cfg()).leak_suspected);
    }

    #[test]
    fn runs_spread_over_a_pool_count_per_process() {
        // Two workers, interleaved, each keeping 2 MiB a run; floors differ per process.
        let a = runs(1, &[2 * MIB; 10], &[]);
        let mut b = runs(2, &[2 * MIB; 10], &[]);
        for s in &mut b {
            s.begin_held += 500 * MIB;
            s.end_held += 500 * MIB;
        }
        let mixed: Vec<RunSample> = a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect();
        let v = assess(&mixed, &cfg());
        assert!(v.leak_suspected, "{v:?}");
        // The 500 MiB between the two processes' floors is no rise.
        assert_eq!(v.floor_rise_bytes, 40 * MIB);
    }

    #[test]
    fn small_noise_is_not_retention() {
        let r: Vec<i64> = (0..20).map(|i| (i % 3) * 64 * 1024).collect();
        let v = assess(&runs(1, &r, &[]), &cfg());
        assert_eq!(v.retaining_runs, 0);
        assert!(!v.leak_suspected);
    }

    #[test]
    fn median_takes_the_lower_middle() {
        assert_eq!(median(&mut []), 0);
        assert_eq!(median(&mut [3, 1, 2]), 2);
        assert_eq!(median(&mut [4, 1, 3, 2]), 2);
    }
}
