//! Which task types make the memory floor rise, attributed across runs rather than run by run.
//!
//! Why not per run: the kernel reports a process's memory through per-CPU counters folded in
//! batches of 32 pages, and an allocator hands out memory it already holds before it asks the
//! kernel for more. So what one run keeps is usually invisible at its own markers and shows up
//! in whichever later run (of any task type) pushes the heap over its next step. Per run, the
//! leaker looks clean and a clean neighbour looks guilty; summed over many runs, the floor's
//! rise still follows how many runs of the leaker there were.
//!
//! The model: each process's completed jobs (in the order they ended) are cut into about
//! [`AttributionConfig::windows_per_process`] windows of consecutive jobs; the first is left
//! out (the process warming up). A window's *level* is the least memory held at any of its
//! jobs' begin and end markers: transient peaks (a task that allocates and frees several MiB)
//! never set it, and overlapping jobs (threaded workers) share it. Each level is set against
//! how many runs of each task type the process had completed before the window began, and
//! windows from every process (the children of a prefork pool run the same task types) are
//! rows of one regression, each process with its own starting size:
//!
//! ```text
//! level(process, window) = start(process)
//!                        + Σ_task bytes_per_run(task) × runs_before(task, process, window)
//!                        + slack
//! ```
//!
//! Levels rather than window-to-window changes: the slack (what the allocator holds beyond
//! what is live, up to its next step) stays bounded however long the history, while the run
//! counts keep growing apart; in changes, the run that happened to need the room would carry
//! each step. Fitted by least squares (the starting sizes taken out as process means) with the
//! coefficients held non-negative (running a task gives no memory back; a negative fit is a
//! clean type beside noise). The interval comes from Newey–West standard errors (robust to
//! unequal noise and to the slack lasting a few windows). A process that ran a single window
//! of jobs (RQ's work horse, forked per job and gone after it) gives one row of another kind,
//! with the same coefficients: what it held at its last end minus at its first begin, against
//! its runs.
//!
//! A task type is suspected when it has enough runs, its bytes-per-run lower bound is above
//! zero, and its runs explain a meaningful share of the floor's rise.

#![expect(
    clippy::needless_range_loop,
    reason = "small dense matrices read best indexed, as in the formulas"
)]

use std::{collections::BTreeMap, fmt::Write as _};

#[derive(Clone, Debug)]
pub struct AttributionConfig {
    /// A process's history is cut into about this many windows...
    pub windows_per_process: usize,
    /// ... of at least and at most this many completed jobs each.
    pub min_window_jobs: usize,
    pub max_window_jobs: usize,
    /// Fewer runs of a type than this (in windows the fit uses): insufficient evidence.
    pub min_runs: usize,
    /// Share of the floor's rise a suspected type must explain, 0 to 1.
    pub min_share: f64,
    /// Fitted rates below this are not suspected, however sure: a clean type's one-time
    /// step (the heap grown once for its first large transient) spread over its runs.
    pub min_bytes_per_run: f64,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            // Long windows are what keeps a clean type from being charged with the steps it
            // triggers: the run that crosses the allocator's next step is the one that needed
            // room, but over a window of many jobs the steps crossed add up to what was kept
            // in it, whoever crossed them. Short ones give more rows: a prefork child with a
            // few dozen jobs still gives several. Three, odd: two types run strictly in turn
            // still differ from one window to the next (in windows of 4 they never would).
            windows_per_process: 8,
            min_window_jobs: 3,
            max_window_jobs: 32,
            min_runs: 8,
            min_share: 0.1,
            min_bytes_per_run: 64.0 * 1024.0,
        }
    }
}

/// One completed job as the attribution sees it; `task` indexes the caller's task names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub pid: u32,
    pub task: usize,
    /// Bytes held (anon + shmem + swap) at the begin and end markers.
    pub begin_held: i64,
    pub end_held: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskAttribution {
    pub suspected: bool,
    /// Fitted bytes kept per run (0 when the fit holds it at zero).
    pub bytes_per_run: f64,
    /// 95% interval of `bytes_per_run`.
    pub low: f64,
    pub high: f64,
    /// Runs of this type in the windows the fit used.
    pub runs: usize,
    /// bytes_per_run × runs over the floor's rise across those windows, 0 to 1.
    pub share: f64,
    pub evidence: String,
}

/// One row of the regression: a memory figure and the run counts per task behind it.
struct Row {
    y: f64,
    counts: Vec<f64>,
    /// Rows of one long-lived process, consecutive; None for a work horse's single row.
    group: Option<u32>,
}

/// The regression's rows, the runs per task they count, and the floor's rise they span.
struct Rows {
    rows: Vec<Row>,
    runs: Vec<usize>,
    rise: f64,
}

fn rows(runs: &[Run], tasks: usize, cfg: &AttributionConfig) -> Rows {
    // Per process, in the order given (jobs in the order they ended).
    let mut by_pid: BTreeMap<u32, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        by_pid.entry(r.pid).or_default().push(r);
    }
    let mut out = Rows {
        rows: Vec::new(),
        runs: vec![0; tasks],
        rise: 0.0,
    };
    for (&pid, jobs) in &by_pid {
        let k = (jobs.len() / cfg.windows_per_process.max(1))
            .clamp(cfg.min_window_jobs.max(1), cfg.max_window_jobs.max(1));
        let mut windows: Vec<&[&Run]> = jobs.chunks(k).collect();
        if windows.len() >= 3 {
            // The first window is the process warming up (arenas, caches, a first large
            // transient): a one-time step that says nothing about what runs keep.
            windows.remove(0);
        }
        if windows.len() == 1 {
            // A short-lived process (a forked work horse): what it held when its last job
            // ended over what it held when its first began, against its runs.
            let (first, last) = (jobs[0], jobs[jobs.len() - 1]);
            let mut counts = vec![0.0; tasks];
            for r in jobs {
                counts[r.task] += 1.0;
                out.runs[r.task] += 1;
            }
            let y = (last.end_held - first.begin_held) as f64;
            out.rise += y;
            out.rows.push(Row {
                y,
                counts,
                group: None,
            });
            continue;
        }
        // Each window's level against the runs completed before it began. The last
        // window's own runs have no later level to show in, so they are not counted.
        let mut cumulative = vec![0.0; tasks];
        let first = out.rows.len();
        for w in &windows {
            let level = w
                .iter()
                .flat_map(|r| [r.begin_held, r.end_held])
                .min()
                .unwrap_or(0);
            out.rows.push(Row {
                y: level as f64,
                counts: cumulative.clone(),
                group: Some(pid),
            });
            for r in *w {
                cumulative[r.task] += 1.0;
            }
        }
        for r in windows[..windows.len() - 1].iter().flat_map(|w| w.iter()) {
            out.runs[r.task] += 1;
        }
        // Each process starts from its own size: its own intercept, removed by taking the
        // rows relative to the process's means.
        let mine = &mut out.rows[first..];
        out.rise += mine[mine.len() - 1].y - mine[0].y;
        let n = mine.len() as f64;
        let mean_y = mine.iter().map(|r| r.y).sum::<f64>() / n;
        for t in 0..tasks {
            let mean = mine.iter().map(|r| r.counts[t]).sum::<f64>() / n;
            for r in mine.iter_mut() {
                r.counts[t] -= mean;
            }
        }
        for r in mine.iter_mut() {
            r.y -= mean_y;
        }
    }
    out
}

/// Solves `a x = b` (a symmetric positive definite, small) by Gaussian elimination with
/// partial pivoting; None when singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let p = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[p][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, p);
        b.swap(col, p);
        for r in col + 1..n {
            let f = a[r][col] / a[col][col];
            for c in col..n {
                a[r][c] -= f * a[col][c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

fn inverse(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut inv = vec![vec![0.0; n]; n];
    for j in 0..n {
        let mut e = vec![0.0; n];
        e[j] = 1.0;
        let col = solve(a.to_vec(), e)?;
        for i in 0..n {
            inv[i][j] = col[i];
        }
    }
    Some(inv)
}

/// Residual autocorrelation the standard errors allow for, in windows: a level sits above
/// the live memory by the allocator's slack, which lasts until the next step is crossed.
const LAGS: usize = 2;

/// Least squares on the columns in `active`: coefficients and standard errors robust to
/// unequal and (within a process, up to [`LAGS`] windows) correlated noise: Newey–West with
/// Bartlett weights, scaled by n / (n - p - absorbed) as HC1 does. `absorbed` is the
/// intercepts taken out beforehand (one per long-lived process).
fn ols(rows: &[Row], active: &[usize], absorbed: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let p = active.len();
    let n = rows.len();
    if p == 0 || n <= p + absorbed {
        return None;
    }
    let x = |r: &Row, i: usize| r.counts[active[i]];
    let mut xtx = vec![vec![0.0; p]; p];
    let mut xty = vec![0.0; p];
    for r in rows {
        for i in 0..p {
            xty[i] += x(r, i) * r.y;
            for j in 0..p {
                xtx[i][j] += x(r, i) * x(r, j);
            }
        }
    }
    let inv = inverse(&xtx)?;
    let beta: Vec<f64> = (0..p)
        .map(|i| (0..p).map(|j| inv[i][j] * xty[j]).sum())
        .collect();
    // Scores e·x per row; the meat sums their products at lags 0..=LAGS within a process.
    let scores: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let e = r.y - (0..p).map(|i| beta[i] * x(r, i)).sum::<f64>();
            (0..p).map(|i| e * x(r, i)).collect()
        })
        .collect();
    let mut meat = vec![vec![0.0; p]; p];
    for (t, st) in scores.iter().enumerate() {
        for lag in 0..=LAGS.min(t) {
            let u = t - lag;
            if lag > 0 && (rows[t].group.is_none() || rows[t].group != rows[u].group) {
                continue;
            }
            let w = 1.0 - lag as f64 / (LAGS + 1) as f64;
            let su = &scores[u];
            for i in 0..p {
                for j in 0..p {
                    let v = if lag == 0 {
                        st[i] * st[j]
                    } else {
                        w * (st[i] * su[j] + su[i] * st[j])
                    };
                    meat[i][j] += v;
                }
            }
        }
    }
    let scale = n as f64 / (n - p - absorbed) as f64;
    let se = (0..p)
        .map(|i| {
            let v: f64 = (0..p)
                .flat_map(|a| (0..p).map(move |b| (a, b)))
                .map(|(a, b)| inv[i][a] * meat[a][b] * inv[b][i])
                .sum();
            (v * scale).max(0.0).sqrt()
        })
        .collect();
    Some((beta, se))
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom (Cornish–Fisher
/// expansion around the normal's 1.96; within 1% from 3 degrees of freedom up).
fn t95(df: usize) -> f64 {
    let z = 1.959_964_f64;
    let d = df.max(1) as f64;
    z + (z.powi(3) + z) / (4.0 * d)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * d.powi(3))
}

/// "312 KiB" or "1.25 MiB".
pub fn bytes(b: f64) -> String {
    const KIB: f64 = 1024.0;
    if b.abs() < 1024.0 * KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{:.2} MiB", b / (KIB * KIB))
    }
}

/// Attributes the floor's rise to task types `0..tasks` over `runs` (per process in the order
/// they ended; processes may interleave).
pub fn attribute(runs: &[Run], tasks: usize, cfg: &AttributionConfig) -> Vec<TaskAttribution> {
    let Rows {
        rows,
        runs: runs_in,
        rise,
    } = rows(runs, tasks, cfg);
    let mut groups: Vec<u32> = rows.iter().filter_map(|r| r.group).collect();
    groups.dedup();
    let absorbed = groups.len();

    // Non-negative least squares by elimination: fit, drop the most negative coefficient
    // (held at zero), refit, until all are non-negative. A simplification of Lawson–Hanson
    // (which could let a dropped type back in); the types it drops are ones the data
    // argues against, and their interval still comes from the unconstrained fit.
    let mut active: Vec<usize> = (0..tasks).filter(|&t| runs_in[t] > 0).collect();
    let full = ols(&rows, &active, absorbed);
    let mut fit = full.clone();
    while let Some((beta, _)) = &fit {
        let Some((i, _)) = beta
            .iter()
            .enumerate()
            .filter(|(_, b)| **b < 0.0)
            .min_by(|a, b| a.1.total_cmp(b.1))
        else {
            break;
        };
        active.remove(i);
        fit = ols(&rows, &active, absorbed);
    }
    let all: Vec<usize> = (0..tasks).filter(|&t| runs_in[t] > 0).collect();
    let df = rows.len().saturating_sub(all.len() + absorbed);
    let t = t95(df);

    (0..tasks)
        .map(|task| {
            let runs = runs_in[task];
            let mut a = TaskAttribution {
                runs,
                ..TaskAttribution::default()
            };
            if runs < cfg.min_runs {
                a.evidence = format!(
                    "insufficient evidence: {runs} runs in the fitted history; a verdict needs {}",
                    cfg.min_runs
                );
                return a;
            }
            let constrained = fit.as_ref().and_then(|(b, se)| {
                active
                    .iter()
                    .position(|&x| x == task)
                    .map(|i| (b[i], se[i]))
            });
            let unconstrained = full
                .as_ref()
                .and_then(|(b, se)| all.iter().position(|&x| x == task).map(|i| (b[i], se[i])));
            let (est, se) = match (constrained, unconstrained) {
                (Some(c), _) => c,
                // Held at zero: the estimate is zero; how far above zero it could be comes
                // from the unconstrained fit.
                (None, Some((_, se))) => (0.0, se),
                (None, None) => {
                    a.evidence = format!(
                        "insufficient evidence: {} windows cannot separate {} task types",
                        rows.len(),
                        all.len()
                    );
                    return a;
                }
            };
            a.bytes_per_run = est.max(0.0);
            a.low = est - t * se;
            a.high = est + t * se;
            a.share = if rise > 0.0 {
                (a.bytes_per_run * runs as f64 / rise).clamp(0.0, 1.0)
            } else {
                0.0
            };
            a.suspected =
                a.low > 0.0 && a.share >= cfg.min_share && a.bytes_per_run >= cfg.min_bytes_per_run;
            a.evidence = format!(
                "≈ {}/run (95%: {} to {}) over {runs} runs; explains {:.0}% of the floor's \
                 rise ({})",
                bytes(a.bytes_per_run),
                bytes(a.low),
                bytes(a.high),
                a.share * 100.0,
                bytes(rise.max(0.0)),
            );
            // Why a type with a positive lower bound is still not suspected.
            if a.low > 0.0 && !a.suspected {
                if a.bytes_per_run < cfg.min_bytes_per_run {
                    let _ = write!(
                        a.evidence,
                        "; below the {} a run worth suspecting",
                        bytes(cfg.min_bytes_per_run)
                    );
                } else {
                    let _ = write!(
                        a.evidence,
                        "; less than the {:.0}% of the rise worth suspecting",
                        cfg.min_share * 100.0
                    );
                }
            }
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: i64 = 1024;
    const MIB: i64 = 1 << 20;

    /// xorshift64*: deterministic, good enough to shuffle task orders and draw noise.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Uniform in lo..hi.
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next() % (hi - lo) as u64) as i64
        }
    }

    /// A task type: bytes it keeps per run, and bytes it allocates and frees during a run.
    #[derive(Clone, Copy)]
    struct Kind {
        keeps: i64,
        transient: i64,
    }

    /// A process's memory as the kernel shows it: the allocator's heap grows in lumps of
    /// 128 KiB..2 MiB when what is live outgrows it (and keeps what it grew), and every
    /// reading is off by up to 256 KiB of per-CPU batching.
    struct Proc {
        live: i64,
        heap: i64,
        /// Gives free memory above 2 MiB back after a job (rounded to 128 KiB), as glibc
        /// trims its heap's top; without it the heap keeps whatever it grew to.
        trims: bool,
    }

    impl Proc {
        fn new() -> Self {
            Self {
                live: 50 * MIB,
                heap: 50 * MIB,
                trims: false,
            }
        }
        fn need(&mut self, rng: &mut Rng, live: i64) {
            while self.heap < live {
                self.heap += rng.range(128 * KIB, 2 * MIB);
            }
        }
        fn read(&self, rng: &mut Rng) -> i64 {
            self.heap + 100 * MIB - rng.range(0, 256 * KIB)
        }
        /// Runs one job to the end: begin reading, peak, keep, end reading.
        fn run(&mut self, rng: &mut Rng, k: Kind) -> (i64, i64) {
            let begin = self.read(rng);
            self.need(rng, self.live + k.transient + k.keeps);
            self.live += k.keeps;
            if self.trims && self.heap - self.live > 2 * MIB {
                self.heap = (self.live + 128 * KIB - 1) / (128 * KIB) * (128 * KIB);
            }
            (begin, self.read(rng))
        }
    }

    /// Order in which jobs are enqueued: each type's runs spread out, or all of one first.
    #[derive(Clone, Copy, Debug)]
    enum Order {
        Interleaved,
        Blocked,
    }

    fn queue(rng: &mut Rng, counts: &[usize], order: Order) -> Vec<usize> {
        let mut q: Vec<usize> = counts
            .iter()
            .enumerate()
            .flat_map(|(t, &n)| std::iter::repeat_n(t, n))
            .collect();
        if let Order::Interleaved = order {
            for i in (1..q.len()).rev() {
                let j = rng.range(0, i as i64 + 1) as usize;
                q.swap(i, j);
            }
        }
        q
    }

    /// A prefork pool of `children`: each job lands on a child at random.
    fn prefork(
        seed: u64,
        kinds: &[Kind],
        counts: &[usize],
        children: u32,
        order: Order,
    ) -> Vec<Run> {
        let mut rng = Rng(seed);
        let mut procs: Vec<Proc> = (0..children).map(|_| Proc::new()).collect();
        queue(&mut rng, counts, order)
            .into_iter()
            .map(|task| {
                let pid = rng.range(0, i64::from(children)) as u32;
                let (begin_held, end_held) = procs[pid as usize].run(&mut rng, kinds[task]);
                Run {
                    pid: 100 + pid,
                    task,
                    begin_held,
                    end_held,
                }
            })
            .collect()
    }

    /// The true rate is inside the interval, give or take 10%: in blocked order the clean
    /// type's one-time heap step (its first transient) lands between the blocks and leaves
    /// some KiB a run in the leakers' rates, a bias the interval does not model.
    fn covers(a: &TaskAttribution, truth: i64) -> bool {
        let truth = truth as f64;
        a.low * 0.9 <= truth && truth <= a.high * 1.1
    }

    fn attr(runs: &[Run], tasks: usize) -> Vec<TaskAttribution> {
        attribute(runs, tasks, &AttributionConfig::default())
    }

    const LEAKER: Kind = Kind {
        keeps: 300 * KIB,
        transient: 0,
    };
    const CLEAN: Kind = Kind {
        keeps: 0,
        transient: 6 * MIB,
    };

    #[test]
    fn lumpy_retention_is_charged_to_the_leaker_not_the_clean_type() {
        for order in [Order::Interleaved, Order::Blocked] {
            for (seed, children) in [(1, 1), (7, 2), (42, 4)] {
                let runs = prefork(seed, &[LEAKER, CLEAN], &[600, 600], children, order);
                let a = attr(&runs, 2);
                let ctx = format!("{order:?} seed {seed} children {children}: {a:#?}");
                assert!(a[0].suspected, "{ctx}");
                assert!(covers(&a[0], LEAKER.keeps), "{ctx}");
                assert!(a[0].share > 0.5, "{ctx}");
                assert!(a[0].evidence.contains("KiB/run (95%"), "{ctx}");
                assert!(!a[1].suspected, "{ctx}");
                // Cleared with a positive lower bound (its first transient's one-time
                // step, spread over its runs): the evidence says why.
                assert!(
                    a[1].low <= 0.0 || a[1].evidence.contains("worth suspecting"),
                    "{ctx}"
                );
            }
        }
    }

    #[test]
    fn per_run_deltas_alone_would_blame_the_clean_type() {
        // The premise of the model, checked on the simulation: the clean type's runs are
        // where the heap grows (it needs the room for its transient), so run by run it
        // "retains" more than the leaker does.
        let runs = prefork(3, &[LEAKER, CLEAN], &[600, 600], 2, Order::Interleaved);
        let per_run = |t: usize| -> i64 {
            runs.iter()
                .filter(|r| r.task == t)
                .map(|r| r.end_held - r.begin_held)
                .sum()
        };
        assert!(per_run(1) > per_run(0), "{} vs {}", per_run(1), per_run(0));
        let a = attr(&runs, 2);
        assert!(a[0].suspected && !a[1].suspected, "{a:#?}");
    }

    #[test]
    fn two_leakers_at_different_rates_are_both_suspected() {
        let slow = LEAKER;
        let fast = Kind {
            keeps: MIB,
            transient: 0,
        };
        for order in [Order::Interleaved, Order::Blocked] {
            let runs = prefork(11, &[slow, fast, CLEAN], &[400, 400, 400], 3, order);
            let a = attr(&runs, 3);
            let ctx = format!("{order:?}: {a:#?}");
            for (t, k) in [(0, slow), (1, fast)] {
                assert!(a[t].suspected, "{ctx}");
                assert!(covers(&a[t], k.keeps), "task {t}: {ctx}");
            }
            assert!(a[1].bytes_per_run > a[0].bytes_per_run, "{ctx}");
            assert!(!a[2].suspected, "{ctx}");
        }
    }

    #[test]
    fn a_type_with_few_runs_is_not_suspected_and_says_why() {
        let runs = prefork(
            5,
            &[
                LEAKER,
                Kind {
                    keeps: 4 * MIB,
                    transient: 0,
                },
            ],
            &[600, 3],
            1,
            Order::Interleaved,
        );
        let a = attr(&runs, 2);
        assert!(!a[1].suspected, "{a:#?}");
        assert!(
            a[1].evidence.starts_with("insufficient evidence"),
            "{}",
            a[1].evidence
        );
        assert!(a[0].suspected, "{a:#?}");
    }

    #[test]
    fn a_clean_type_alone_is_never_suspected() {
        for order in [Order::Interleaved, Order::Blocked] {
            let runs = prefork(
                9,
                &[
                    CLEAN,
                    Kind {
                        keeps: 0,
                        transient: 2 * MIB,
                    },
                ],
                &[600, 600],
                2,
                order,
            );
            let a = attr(&runs, 2);
            assert!(!a[0].suspected && !a[1].suspected, "{order:?}: {a:#?}");
        }
    }

    #[test]
    fn overlapping_jobs_in_one_threaded_process() {
        // Two threads, each running a job at a time; their jobs overlap: A begins, B begins,
        // A ends, B ends. Readings are of the one process, so each job's delta includes the
        // other's; the windows' levels do not care whose run it was.
        for order in [Order::Interleaved, Order::Blocked] {
            let mut rng = Rng(77);
            let mut p = Proc::new();
            let kinds = [LEAKER, CLEAN];
            let q = queue(&mut rng, &[600, 600], order);
            let mut runs = Vec::new();
            for pair in q.chunks(2) {
                let (a, b) = (pair[0], *pair.get(1).unwrap_or(&pair[0]));
                let a_begin = p.read(&mut rng);
                let b_begin = p.read(&mut rng);
                let need = p.live + kinds[a].transient + kinds[b].transient + kinds[a].keeps;
                p.need(&mut rng, need);
                p.live += kinds[a].keeps;
                let a_end = p.read(&mut rng);
                p.need(&mut rng, p.live + kinds[b].keeps);
                p.live += kinds[b].keeps;
                let b_end = p.read(&mut rng);
                runs.push(Run {
                    pid: 1,
                    task: a,
                    begin_held: a_begin,
                    end_held: a_end,
                });
                runs.push(Run {
                    pid: 1,
                    task: b,
                    begin_held: b_begin,
                    end_held: b_end,
                });
            }
            let a = attr(&runs, 2);
            assert!(a[0].suspected, "{order:?}: {a:#?}");
            assert!(covers(&a[0], LEAKER.keeps), "{order:?}: {a:#?}");
            assert!(!a[1].suspected, "{order:?}: {a:#?}");
        }
    }

    #[test]
    fn forked_work_horses_count_one_window_each() {
        // RQ: every job in a fresh horse forked from the same parent image; what the horse
        // held at the end over its begin is the job's own retention (plus its lumps).
        let mut rng = Rng(21);
        let kinds = [LEAKER, CLEAN];
        let q = queue(&mut rng, &[150, 150], Order::Interleaved);
        let runs: Vec<Run> = q
            .into_iter()
            .enumerate()
            .map(|(i, task)| {
                let mut horse = Proc {
                    trims: true,
                    ..Proc::new()
                };
                let (begin_held, end_held) = horse.run(&mut rng, kinds[task]);
                Run {
                    pid: 1000 + i as u32,
                    task,
                    begin_held,
                    end_held,
                }
            })
            .collect();
        let a = attr(&runs, 2);
        // A fresh horse has no slack, so the leaker's 300 KiB always costs a whole lump
        // (128 KiB..2 MiB): its rate is overstated, but it is the one suspected; the clean
        // type's transient is trimmed away before the horse's end marker.
        assert!(a[0].runs == 150 && a[1].runs == 150, "{a:#?}");
        assert!(a[0].suspected, "{a:#?}");
        assert!(!a[1].suspected, "{a:#?}");
    }

    #[test]
    fn t_quantiles_are_close_to_the_tables() {
        for (df, table) in [(3, 3.182), (10, 2.228), (30, 2.042), (1000, 1.962)] {
            assert!(
                (t95(df) - table).abs() / table < 0.02,
                "df {df}: {}",
                t95(df)
            );
        }
    }

    #[test]
    fn the_solver_solves() {
        let x = solve(vec![vec![4.0, 1.0], vec![1.0, 3.0]], vec![1.0, 2.0]).unwrap();
        assert!((x[0] - 1.0 / 11.0).abs() < 1e-12 && (x[1] - 7.0 / 11.0).abs() < 1e-12);
        assert!(solve(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 2.0]).is_none());
    }
}
