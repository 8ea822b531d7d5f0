//! Does a task type leak? Decided by [`attribution`](super::attribution): the rise of each
//! process's memory floor fitted on how many runs of each task type it took, over the history
//! of every process that ran them. Run by run it cannot be told: the kernel folds per-CPU
//! deltas into batches of 32+ pages and the allocator hands out memory it already holds, so
//! what one run keeps shows up in whichever later run crosses the heap's next step.
//!
//! The per-run numbers of a task's recent runs (how many retained at least
//! [`VerdictConfig::noise_bytes`] between their own markers, the median, the floor's rise
//! across their span) are kept beside the verdict: they are what one sees job by job.

use serde::Serialize;

use super::attribution::{AttributionConfig, TaskAttribution};

#[derive(Clone, Debug)]
pub struct VerdictConfig {
    /// A run retains (in the per-run numbers) when it ends with at least this many more
    /// bytes held than it began with.
    pub noise_bytes: i64,
    pub attribution: AttributionConfig,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            // 2 CPUs' worth of the kernel's per-CPU batching (32 pages each), twice over.
            noise_bytes: 256 * 1024,
            attribution: AttributionConfig::default(),
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
    /// Runs of this task type the attribution used (across the processes that ran it).
    pub runs_considered: usize,
    /// Bytes each run adds to the floor, fitted, with its 95% interval.
    pub bytes_per_run: i64,
    pub bytes_per_run_low: i64,
    pub bytes_per_run_high: i64,
    /// Share of the floor's rise its runs explain, 0 to 1.
    pub share_explained: f64,
    /// Of the recent runs (at most the window), those that retained at least the noise
    /// threshold between their own markers.
    pub retaining_runs: usize,
    /// Median of the recent runs' retained bytes: "what one run keeps", as seen per run.
    pub median_retained_bytes: i64,
    /// Positive retentions of the recent runs summed.
    pub retained_total_bytes: i64,
    /// Rise of the floor across the span of the recent runs, summed over processes.
    pub floor_rise_bytes: i64,
    /// Why, in words.
    pub evidence: String,
}

/// Median of `values` (the lower middle for even counts); 0 when empty.
pub fn median(values: &mut [i64]) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[(values.len() - 1) / 2]
}

/// The per-run numbers of a task type's recent runs, oldest first; no decision (see
/// [`TaskVerdict::attributed`]).
pub fn assess(runs: &[RunSample], cfg: &VerdictConfig) -> TaskVerdict {
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
    TaskVerdict {
        retaining_runs,
        median_retained_bytes,
        retained_total_bytes,
        floor_rise_bytes,
        ..TaskVerdict::default()
    }
}

impl TaskVerdict {
    /// The per-run numbers with the attribution's verdict.
    pub fn attributed(self, a: &TaskAttribution) -> Self {
        Self {
            leak_suspected: a.suspected,
            runs_considered: a.runs,
            bytes_per_run: a.bytes_per_run.round() as i64,
            bytes_per_run_low: a.low.round() as i64,
            bytes_per_run_high: a.high.round() as i64,
            share_explained: a.share,
            evidence: a.evidence.clone(),
            ..self
        }
    }
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
    fn per_run_numbers_of_a_task_that_keeps_what_it_takes() {
        let v = assess(&runs(1, &[4 * MIB; 20], &[]), &cfg());
        assert_eq!(v.retaining_runs, 20);
        assert_eq!(v.median_retained_bytes, 4 * MIB);
        assert_eq!(v.floor_rise_bytes, 80 * MIB);
        assert_eq!(v.retained_total_bytes, 80 * MIB);
        // The per-run numbers decide nothing: the attribution does.
        assert!(!v.leak_suspected);
    }

    #[test]
    fn retention_given_back_between_runs_leaves_no_floor_rise() {
        // Every run keeps 4 MiB that another job releases before the next run.
        let v = assess(&runs(1, &[4 * MIB; 20], &[-4 * MIB; 20]), &cfg());
        assert_eq!(v.retaining_runs, 20);
        assert!(v.floor_rise_bytes <= 4 * MIB, "{v:?}");
    }

    #[test]
    fn the_floor_rise_counts_per_process() {
        // Two workers, interleaved, each keeping 2 MiB a run; floors differ per process.
        let a = runs(1, &[2 * MIB; 10], &[]);
        let mut b = runs(2, &[2 * MIB; 10], &[]);
        for s in &mut b {
            s.begin_held += 500 * MIB;
            s.end_held += 500 * MIB;
        }
        let mixed: Vec<RunSample> = a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect();
        // The 500 MiB between the two processes' floors is no rise.
        assert_eq!(assess(&mixed, &cfg()).floor_rise_bytes, 40 * MIB);
    }

    #[test]
    fn small_noise_is_not_retention() {
        let r: Vec<i64> = (0..20).map(|i| (i % 3) * 64 * 1024).collect();
        assert_eq!(assess(&runs(1, &r, &[]), &cfg()).retaining_runs, 0);
    }

    #[test]
    fn the_attribution_decides_and_the_per_run_numbers_stay() {
        let a = TaskAttribution {
            suspected: true,
            bytes_per_run: 312.4 * 1024.0,
            low: 250.0 * 1024.0,
            high: 380.0 * 1024.0,
            runs: 214,
            share: 0.93,
            evidence: "≈ 312 KiB/run".into(),
        };
        let v = assess(&runs(1, &[0; 20], &[]), &cfg()).attributed(&a);
        assert!(v.leak_suspected);
        assert_eq!(v.runs_considered, 214);
        assert_eq!(v.bytes_per_run, 319_898);
        assert_eq!(
            (v.bytes_per_run_low, v.bytes_per_run_high),
            (256_000, 389_120)
        );
        assert_eq!(v.share_explained, 0.93);
        assert_eq!(v.evidence, "≈ 312 KiB/run");
        assert_eq!(v.retaining_runs, 0, "the per-run view of the same runs");
    }

    #[test]
    fn median_takes_the_lower_middle() {
        assert_eq!(median(&mut []), 0);
        assert_eq!(median(&mut [3, 1, 2]), 2);
        assert_eq!(median(&mut [4, 1, 3, 2]), 2);
    }
}
