//! Which task types keep objects, decided from the worker's own allocator rather than from
//! pages.
//!
//! Why not from RSS alone: RSS counts pages, not objects. A clean task that allocates and
//! frees a few MiB leaves free memory in the allocator; the leaking task's retained objects
//! then fill that memory (no RSS rise in its runs) and the clean task's next run must grow
//! again (the rise shows in the clean runs). Any attribution from pages can charge the clean
//! type, however robust the statistics.
//!
//! So the integration sends, with each `end`, the change over the run in its allocator's count
//! of live blocks (`blocks=`, Python's `sys.getallocatedblocks()`). A run that keeps objects
//! raises it; a run that frees what it allocated does not, whatever the pages did. In a
//! process that runs one job at a time that change is the run's own; where jobs overlap
//! (threaded workers) it also holds what the other jobs of the process kept meanwhile. Hence
//! a regression over the recent runs of every process (the children of a pool and RQ's work
//! horses alike):
//!
//! ```text
//! blocks(run) = Σ_type rate(type) × [the run's own type + Σ overlapping runs of that type,
//!                                    each weighted by the share of its span inside this run]
//! ```
//!
//! fitted by least squares with standard errors robust to unequal noise (HC1); in a process
//! with one job at a time it reduces to each type's mean. Types whose runs always overlap in
//! the same proportions cannot be told apart: the fit is refused, not guessed.
//!
//! Blocks are not bytes (a pymalloc block is 8–512 bytes; larger objects are one block each),
//! so bytes come from the pages after all: each process's floor rise (held at the end of its
//! last run minus at the beginning of its first) is shared among the types it ran in
//! proportion to the blocks their runs kept there, counting only types whose rate is
//! confidently above what frameworks keep anyway; a rise no such type ran beside stays
//! unexplained (an RQ work horse's allocator slack).
//!
//! A type is suspected when it has enough runs, its rate's lower bound is above what
//! frameworks keep per run anyway (Celery's bookkeeping, RQ's job objects: tens of blocks),
//! its share of the floor's rise is meaningful and the bytes that gives a run are above
//! noise. A type that keeps a few large buffers keeps few blocks: this evidence cannot see
//! it, and says so; the per-run rule of [`super::verdict`] still can.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use serde::Serialize;

#[derive(Clone, Debug)]
pub struct AttributionConfig {
    /// Recent runs with block evidence kept (all tasks and processes together).
    pub max_runs: usize,
    /// Fewer runs of a type than this: no verdict yet.
    pub min_runs: usize,
    /// The rate's 95% lower bound must reach this many blocks a run: frameworks keep a few
    /// dozen per run of any task (measured: Celery prefork 24, RQ 60).
    pub min_blocks_per_run: f64,
    /// Share of the floor's rise (in the processes that ran the type) it must explain.
    pub min_share: f64,
    /// Bytes a run, apportioned from the floor's rise, below which nothing is suspected.
    pub min_bytes_per_run: f64,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            max_runs: 8192,
            min_runs: 30,
            min_blocks_per_run: 256.0,
            min_share: 0.15,
            min_bytes_per_run: 16.0 * 1024.0,
        }
    }
}

/// One completed run whose `end` carried `blocks=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRun {
    pub pid: u32,
    /// The process's pool: its parent when same-named (prefork children, RQ work horses),
    /// else itself.
    pub pool: u32,
    pub task: String,
    pub begin_ns: u64,
    pub end_ns: u64,
    /// Live allocator blocks at the end minus at the begin, as the worker counted them.
    pub blocks: i64,
    /// Bytes held (anon + shmem + swap) at the begin and end markers.
    pub begin_held: i64,
    pub end_held: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TaskAttribution {
    pub suspected: bool,
    /// Runs of this type with block evidence in the fit.
    pub runs: usize,
    /// At least `min_runs` of them: the evidence decides.
    pub enough_runs: bool,
    /// Live blocks kept per run, with its 95% interval.
    pub blocks_per_run: f64,
    pub blocks_low: f64,
    pub blocks_high: f64,
    /// Bytes a run: the floor's rise apportioned by blocks kept, with the blocks' interval.
    pub bytes_per_run: f64,
    pub bytes_low: f64,
    pub bytes_high: f64,
    /// Of the floor's rise in the processes that ran this type, the part apportioned to it.
    pub share: f64,
    /// The floor's rise in those processes.
    pub floor_rise_bytes: i64,
    /// Other types, run in the same pools, that are suspected: they explain the rise.
    #[serde(skip)]
    pub explained_by_other: bool,
    pub evidence: String,
}

/// Rows naming a type's transient before it gets a column of its own.
const MIN_TRANSIENT_ROWS: usize = 10;

/// One row of the regression: the run's block change and its sparse design entries.
struct Row {
    y: f64,
    x: Vec<(usize, f64)>,
}

/// The two-sided 95% quantile of Student's t (Cornish–Fisher around 1.96; within 1% from
/// 3 degrees of freedom).
fn t95(df: usize) -> f64 {
    let z = 1.959_964_f64;
    let d = df.max(1) as f64;
    let (z3, z5) = (z.powi(3), z.powi(5));
    z + (z3 + z) / (4.0 * d) + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * d * d)
}

/// Inverse of a small symmetric matrix by Gauss–Jordan with partial pivoting; None when a
/// pivot is negligible next to the matrix's scale (columns that move together).
fn inverse(mut a: Vec<Vec<f64>>) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let scale = (0..n).map(|i| a[i][i].abs()).fold(0.0, f64::max);
    let mut inv: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for col in 0..n {
        let p = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[p][col].abs() <= scale * 1e-9 {
            return None;
        }
        a.swap(col, p);
        inv.swap(col, p);
        let d = a[col][col];
        for c in 0..n {
            a[col][c] /= d;
            inv[col][c] /= d;
        }
        for r in 0..n {
            if r != col && a[r][col] != 0.0 {
                let f = a[r][col];
                for c in 0..n {
                    a[r][c] -= f * a[col][c];
                    inv[r][c] -= f * inv[col][c];
                }
            }
        }
    }
    Some(inv)
}

/// Design rows, one per run: its own type, plus the runs of its process that overlapped it,
/// each weighted by the share of its own span that fell inside this run (what it kept
/// accrues somewhere in its span). Columns `k..2k` are the overlapping runs' transients: what
/// a run of that type holds while in flight counts at this run's end and not at its begin
/// (+1), or the other way round (-1).
fn rows(runs: &[BlockRun], index: &HashMap<&str, usize>) -> Vec<Row> {
    let k = index.len();
    let mut by_pid: BTreeMap<u32, Vec<&BlockRun>> = BTreeMap::new();
    for r in runs {
        by_pid.entry(r.pid).or_default().push(r);
    }
    let mut out = Vec::with_capacity(runs.len());
    for mut list in by_pid.into_values() {
        list.sort_by_key(|r| r.begin_ns);
        let longest = list
            .iter()
            .map(|r| r.end_ns.saturating_sub(r.begin_ns))
            .max()
            .unwrap_or(0);
        for (i, x) in list.iter().enumerate() {
            let mut row = Row {
                y: x.blocks as f64,
                x: vec![(index[x.task.as_str()], 1.0)],
            };
            // Runs that began before this one (none began more than `longest` earlier and is
            // still running) and runs that began inside it.
            let earlier = list[..i]
                .iter()
                .rev()
                .take_while(|y| y.begin_ns + longest >= x.begin_ns);
            let later = list[i + 1..].iter().take_while(|y| y.begin_ns < x.end_ns);
            for y in earlier.chain(later) {
                let overlap = y
                    .end_ns
                    .min(x.end_ns)
                    .saturating_sub(y.begin_ns.max(x.begin_ns));
                if overlap == 0 {
                    continue;
                }
                let w = overlap as f64 / y.end_ns.saturating_sub(y.begin_ns).max(1) as f64;
                let t = index[y.task.as_str()];
                let in_flight = |at: u64| y.begin_ns < at && at < y.end_ns;
                let held = f64::from(u8::from(in_flight(x.end_ns)))
                    - f64::from(u8::from(in_flight(x.begin_ns)));
                for (c, v) in [(t, w), (k + t, held)] {
                    if v == 0.0 {
                        continue;
                    }
                    match row.x.iter_mut().find(|(col, _)| *col == c) {
                        Some(e) => e.1 += v,
                        None => row.x.push((c, v)),
                    }
                }
            }
            out.push(row);
        }
    }
    out
}

/// Rates per type and their HC1 standard errors; None when the types cannot be told apart.
fn fit(rows: &[Row], k: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let n = rows.len();
    if n <= k {
        return None;
    }
    let mut xtx = vec![vec![0.0; k]; k];
    let mut xty = vec![0.0; k];
    for r in rows {
        for &(i, a) in &r.x {
            xty[i] += a * r.y;
            for &(j, b) in &r.x {
                xtx[i][j] += a * b;
            }
        }
    }
    let inv = inverse(xtx)?;
    let beta: Vec<f64> = (0..k)
        .map(|i| (0..k).map(|j| inv[i][j] * xty[j]).sum())
        .collect();
    let mut meat = vec![vec![0.0; k]; k];
    for r in rows {
        let e = r.y - r.x.iter().map(|&(i, a)| beta[i] * a).sum::<f64>();
        for &(i, a) in &r.x {
            for &(j, b) in &r.x {
                meat[i][j] += e * e * a * b;
            }
        }
    }
    let hc1 = n as f64 / (n - k) as f64;
    let se = (0..k)
        .map(|i| {
            let v: f64 = (0..k)
                .flat_map(|a| (0..k).map(move |b| (a, b)))
                .map(|(a, b)| inv[i][a] * meat[a][b] * inv[b][i])
                .sum();
            (v * hc1).max(0.0).sqrt()
        })
        .collect();
    Some((beta, se))
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

/// Attributes retention to every task type present in `runs` (any order).
pub fn attribute(runs: &[BlockRun], cfg: &AttributionConfig) -> HashMap<String, TaskAttribution> {
    let mut names: Vec<&str> = runs.iter().map(|r| r.task.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let k = names.len();

    // Per process: runs per type and the floor's rise over its runs.
    struct Proc {
        pool: u32,
        first: (u64, i64),
        last: (u64, i64),
        runs: Vec<usize>,
    }
    let mut procs: BTreeMap<u32, Proc> = BTreeMap::new();
    for r in runs {
        let p = procs.entry(r.pid).or_insert_with(|| Proc {
            pool: r.pool,
            first: (r.begin_ns, r.begin_held),
            last: (r.end_ns, r.end_held),
            runs: vec![0; k],
        });
        if r.begin_ns < p.first.0 {
            p.first = (r.begin_ns, r.begin_held);
        }
        if r.end_ns >= p.last.0 {
            p.last = (r.end_ns, r.end_held);
        }
        p.runs[index[r.task.as_str()]] += 1;
    }
    let total: Vec<usize> = (0..k)
        .map(|t| procs.values().map(|p| p.runs[t]).sum())
        .collect();

    let mut rows = rows(runs, &index);
    // Transient columns only where runs of that type overlapped others often enough to say
    // what they hold in flight (never in a pool that runs one job at a time).
    let mut uses = vec![0usize; 2 * k];
    for r in &rows {
        for &(c, _) in &r.x {
            uses[c] += 1;
        }
    }
    let mut column = vec![None; 2 * k];
    let mut active = 0;
    for c in 0..2 * k {
        if c < k || uses[c] >= MIN_TRANSIENT_ROWS {
            column[c] = Some(active);
            active += 1;
        }
    }
    for r in &mut rows {
        r.x =
            r.x.iter()
                .filter_map(|&(c, v)| column[c].map(|a| (a, v)))
                .collect();
    }
    let Some((beta, se)) = fit(&rows, active) else {
        return names
            .iter()
            .enumerate()
            .map(|(t, name)| {
                let a = TaskAttribution {
                    runs: total[t],
                    enough_runs: total[t] >= cfg.min_runs,
                    evidence: format!(
                        "allocator blocks: {} runs of {k} task types that always overlap \
                         alike (or too few runs): which type keeps what cannot be told apart",
                        rows.len()
                    ),
                    ..TaskAttribution::default()
                };
                (name.to_string(), a)
            })
            .collect();
    };
    let t = t95(rows.len().saturating_sub(active));
    // Only types confidently keeping objects share the rise: the few dozen blocks frameworks
    // keep per run of anything must not take an RQ work horse's allocator slack.
    let keeps: Vec<f64> = (0..k)
        .map(|i| {
            if beta[i] - t * se[i] >= cfg.min_blocks_per_run {
                beta[i]
            } else {
                0.0
            }
        })
        .collect();

    let mut out: HashMap<String, TaskAttribution> = HashMap::new();
    for (ti, name) in names.iter().enumerate() {
        let (b, s) = (beta[ti], se[ti]);
        let (low, high) = (b - t * s, b + t * s);
        // The floor's rise in each process that ran this type, shared by blocks kept there.
        let mut mine = 0.0;
        let mut rise = 0i64;
        let mut pids = 0;
        for p in procs.values().filter(|p| p.runs[ti] > 0) {
            pids += 1;
            let up = (p.last.1 - p.first.1).max(0);
            rise += up;
            let kept: f64 = (0..k).map(|s| p.runs[s] as f64 * keeps[s]).sum();
            if kept > 0.0 {
                mine += up as f64 * p.runs[ti] as f64 * keeps[ti] / kept;
            }
        }
        let n = total[ti];
        let per_run = if n > 0 { mine / n as f64 } else { 0.0 };
        let share = if rise > 0 { mine / rise as f64 } else { 0.0 };
        let scale = |x: f64| {
            if b > 0.0 {
                per_run * x.max(0.0) / b
            } else {
                0.0
            }
        };
        let mut a = TaskAttribution {
            suspected: false,
            runs: n,
            enough_runs: n >= cfg.min_runs,
            blocks_per_run: b,
            blocks_low: low,
            blocks_high: high,
            bytes_per_run: per_run,
            bytes_low: scale(low),
            bytes_high: scale(high),
            share,
            floor_rise_bytes: rise,
            explained_by_other: false,
            evidence: String::new(),
        };
        let mut why = Vec::new();
        if n < cfg.min_runs {
            why.push(format!("a verdict needs {} runs", cfg.min_runs));
        }
        if low < cfg.min_blocks_per_run {
            why.push(format!(
                "the lower bound is under {:.0} blocks a run",
                cfg.min_blocks_per_run
            ));
        }
        if share < cfg.min_share {
            why.push(format!(
                "it explains under {:.0}% of the rise",
                cfg.min_share * 100.0
            ));
        }
        if per_run < cfg.min_bytes_per_run {
            why.push(format!("under {} a run", bytes(cfg.min_bytes_per_run)));
        }
        a.suspected = why.is_empty();
        let _ = write!(
            a.evidence,
            "keeps {b:.0} allocator blocks a run (95%: {low:.0} to {high:.0}) over {n} runs \
             in {pids} processes; {} a run (95%: {} to {}), {:.0}% of the floor's {} rise",
            bytes(per_run),
            bytes(a.bytes_low),
            bytes(a.bytes_high),
            share * 100.0,
            bytes(rise as f64),
        );
        if !why.is_empty() {
            let _ = write!(a.evidence, "; not suspected: {}", why.join(", "));
        }
        out.insert(name.to_string(), a);
    }
    // A type sharing a pool with a suspected one: that one explains the pool's rise.
    let suspected_pools: Vec<(u32, usize)> = procs
        .values()
        .flat_map(|p| (0..k).filter(|&t| p.runs[t] > 0).map(move |t| (p.pool, t)))
        .filter(|(_, t)| out[names[*t]].suspected)
        .collect();
    for p in procs.values() {
        for t in (0..k).filter(|&t| p.runs[t] > 0) {
            if suspected_pools
                .iter()
                .any(|(pool, other)| *pool == p.pool && *other != t)
                && let Some(a) = out.get_mut(names[t])
            {
                a.explained_by_other = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: i64 = 1024;

    /// Deterministic noise for synthetic histories.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Roughly normal, mean 0, standard deviation `sd` (sum of uniforms).
        fn noise(&mut self, sd: f64) -> f64 {
            let s: f64 = (0..12)
                .map(|_| (self.next() % 10_000) as f64 / 10_000.0)
                .sum();
            (s - 6.0) * sd
        }
    }

    /// What one task type does per run: blocks kept (a run keeps them with probability
    /// `every` as 1 in n, for lumpy retention), bytes they take, and a transient.
    #[derive(Clone, Copy)]
    struct Kind {
        name: &'static str,
        blocks: f64,
        bytes_per_block: i64,
        one_in: u64,
        transient_blocks: f64,
    }

    const LEAKY: Kind = Kind {
        name: "leaky",
        blocks: 3500.0,
        bytes_per_block: 72,
        one_in: 1,
        transient_blocks: 0.0,
    };
    const CLEAN: Kind = Kind {
        name: "clean",
        blocks: 24.0,
        bytes_per_block: 0,
        one_in: 1,
        transient_blocks: 40_000.0,
    };

    /// One synthetic job: its span, its kind (index), the blocks and bytes it keeps.
    #[derive(Clone, Copy)]
    struct Job {
        begin: u64,
        end: u64,
        kind: usize,
        kept: f64,
        kept_bytes: i64,
    }

    /// `runs` jobs spread over `procs` processes of one pool, `threads` at a time per process
    /// (1: one job at a time), types picked at random. The floor follows the bytes kept,
    /// plus a heap step now and then that lands on whichever run is there (as pages do).
    fn history(kinds: &[Kind], runs: usize, procs: u32, threads: u64, seed: u64) -> Vec<BlockRun> {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        // Per process, per thread slot: when it is free.
        let mut free: Vec<Vec<u64>> = vec![vec![0; threads as usize]; procs as usize];
        let mut open: Vec<Vec<Job>> = vec![Vec::new(); procs as usize];
        for i in 0..runs {
            let p = (i as u32) % procs;
            let kind = kinds[rng.below(kinds.len() as u64) as usize];
            let slots = &mut free[p as usize];
            let slot = (0..threads as usize).min_by_key(|&s| slots[s]).unwrap();
            let begin = slots[slot] + rng.below(1_000);
            let end = begin + 1_000_000 + rng.below(1_000_000);
            slots[slot] = end;
            let keeps = rng.below(kind.one_in) == 0;
            let kept = if keeps {
                kind.blocks * kind.one_in as f64
            } else {
                0.0
            };
            open[p as usize].push(Job {
                begin,
                end,
                kind: kinds.iter().position(|k| k.name == kind.name).unwrap(),
                kept,
                kept_bytes: kept as i64 * kind.bytes_per_block,
            });
        }
        // Replay each process's jobs in time: blocks at a marker are everything kept by runs
        // that ended, part of what running ones keep, and their transients.
        for (p, jobs) in open.iter().enumerate() {
            let blocks_at = |t: u64| -> f64 {
                jobs.iter()
                    .map(|j| {
                        if t >= j.end {
                            j.kept
                        } else if t > j.begin {
                            let f = (t - j.begin) as f64 / (j.end - j.begin) as f64;
                            j.kept * f + kinds[j.kind].transient_blocks
                        } else {
                            0.0
                        }
                    })
                    .sum()
            };
            let mut held: i64 = 50 << 20;
            let mut order: Vec<Job> = jobs.clone();
            order.sort_by_key(|j| j.end);
            let mut step_debt = 0i64;
            for Job {
                begin: b,
                end: e,
                kind: k,
                kept_bytes,
                ..
            } in order
            {
                let begin_held = held;
                // Pages: what the run kept fills free room first; the heap steps 1 MiB at a
                // time, in whichever run needs it.
                step_debt += kept_bytes;
                if rng.below(50) == 0 {
                    // The allocator grows for a transient and keeps the room.
                    step_debt += 1 << 20;
                }
                while step_debt > 0 {
                    held += 1 << 20;
                    step_debt -= 1 << 20;
                }
                let noise = rng.noise(30.0);
                out.push(BlockRun {
                    pid: 100 + p as u32,
                    pool: 1,
                    task: kinds[k].name.to_string(),
                    begin_ns: b,
                    end_ns: e,
                    blocks: (blocks_at(e) - blocks_at(b) + noise).round() as i64,
                    begin_held,
                    end_held: held,
                });
            }
        }
        out
    }

    fn cfg() -> AttributionConfig {
        AttributionConfig::default()
    }

    #[test]
    fn a_small_leak_beside_a_big_transient_is_named_and_the_clean_type_is_not() {
        for seed in 1..=20 {
            let runs = history(&[LEAKY, CLEAN], 600, 3, 1, seed);
            let a = attribute(&runs, &cfg());
            let (l, c) = (&a["leaky"], &a["clean"]);
            assert!(l.suspected, "seed {seed}: {l:?}");
            assert!(!c.suspected, "seed {seed}: {c:?}");
            assert!(c.explained_by_other);
            // Bytes a run: the truth (3500 blocks of 72 bytes) plus the heap steps of the
            // transients that the floor's rise also holds (1 MiB in 50 runs of either type).
            let truth = 3500.0 * 72.0 + 2.0 * f64::from(1 << 20) / 50.0;
            assert!(
                (l.bytes_per_run - truth).abs() < truth * 0.25,
                "seed {seed}: {} vs {truth}",
                l.bytes_per_run
            );
            assert!(l.share > 0.95, "{l:?}");
            assert!(l.evidence.contains("a run (95%:"), "{}", l.evidence);
        }
    }

    #[test]
    fn overlapping_jobs_in_threads_are_told_apart() {
        for seed in 1..=20 {
            let runs = history(&[LEAKY, CLEAN], 800, 1, 4, seed);
            // They do overlap: most runs' rows name another run.
            let a = attribute(&runs, &cfg());
            let (l, c) = (&a["leaky"], &a["clean"]);
            assert!(l.suspected, "seed {seed}: {l:?}");
            assert!(!c.suspected, "seed {seed}: {c:?}");
            // The others' transients (40 000 blocks in flight) are taken out, not averaged.
            assert!(
                (l.blocks_per_run - 3500.0).abs() < 350.0,
                "seed {seed}: {l:?}"
            );
            assert!(c.blocks_per_run.abs() < 350.0, "seed {seed}: {c:?}");
        }
    }

    #[test]
    fn lumpy_retention_counts_on_average() {
        // Keeps 10× as much in one run out of ten.
        let lumpy = Kind {
            one_in: 10,
            ..LEAKY
        };
        let mut hits = 0;
        for seed in 1..=20 {
            let a = attribute(&history(&[lumpy, CLEAN], 800, 3, 1, seed), &cfg());
            assert!(!a["clean"].suspected, "seed {seed}: {:?}", a["clean"]);
            hits += usize::from(a["leaky"].suspected);
        }
        assert!(hits >= 18, "lumpy leak found in {hits} of 20");
    }

    #[test]
    fn few_runs_give_no_verdict() {
        let a = attribute(&history(&[LEAKY, CLEAN], 20, 1, 1, 7), &cfg());
        assert!(!a["leaky"].suspected);
        assert!(
            a["leaky"].evidence.contains("needs 30 runs"),
            "{:?}",
            a["leaky"]
        );
    }

    #[test]
    fn two_leaking_types_at_different_rates_are_both_named() {
        let slow = Kind {
            name: "slow",
            blocks: 800.0,
            ..LEAKY
        };
        for seed in 1..=10 {
            let a = attribute(&history(&[LEAKY, slow, CLEAN], 1200, 3, 1, seed), &cfg());
            let (l, s, c) = (&a["leaky"], &a["slow"], &a["clean"]);
            assert!(l.suspected && s.suspected, "seed {seed}: {l:?} {s:?}");
            assert!(!c.suspected, "seed {seed}: {c:?}");
            assert!(l.bytes_per_run > 3.0 * s.bytes_per_run, "{l:?} {s:?}");
            assert!((l.share + s.share - 1.0).abs() < 0.05, "{l:?} {s:?}");
        }
    }

    #[test]
    fn a_clean_worker_alone_is_not_suspected() {
        // Framework bookkeeping of a few dozen blocks a run and a floor that creeps.
        for seed in 1..=10 {
            let a = attribute(&history(&[CLEAN], 600, 3, 1, seed), &cfg());
            assert!(!a["clean"].suspected, "{:?}", a["clean"]);
        }
    }

    #[test]
    fn work_horses_with_one_job_each_pool_under_their_parent() {
        // RQ: every run in a process of its own; a clean horse holds 1 MiB at exit anyway.
        let mut rng = Rng(3);
        let runs: Vec<BlockRun> = (0..200u32)
            .map(|i| {
                let leaky = rng.below(2) == 0;
                let (blocks, held) = if leaky {
                    (3430, (1 << 20) + 256 * KIB)
                } else {
                    (60, 1 << 20)
                };
                BlockRun {
                    pid: 1000 + i,
                    pool: 999,
                    task: if leaky { "leaky" } else { "clean" }.into(),
                    begin_ns: u64::from(i) * 10,
                    end_ns: u64::from(i) * 10 + 5,
                    blocks: blocks + rng.below(5) as i64,
                    begin_held: 40 << 20,
                    end_held: (40 << 20) + held,
                }
            })
            .collect();
        let a = attribute(&runs, &cfg());
        assert!(a["leaky"].suspected, "{:?}", a["leaky"]);
        assert!(!a["clean"].suspected, "{:?}", a["clean"]);
        assert!(a["clean"].explained_by_other);
        // The clean horses' slack is nobody's: RQ's few dozen blocks a job do not take it.
        assert_eq!(a["clean"].bytes_per_run, 0.0, "{:?}", a["clean"]);
        let l = &a["leaky"];
        assert!(
            (l.bytes_per_run - 1.25 * f64::from(1 << 20)).abs() < 1.0,
            "{l:?}"
        );
    }

    #[test]
    fn types_that_always_run_together_are_not_told_apart() {
        // Two types that always run exactly alongside each other, in the same proportions.
        let runs: Vec<BlockRun> = (0..100u64)
            .flat_map(|i| {
                ["a", "b"].map(|task| BlockRun {
                    pid: 1,
                    pool: 1,
                    task: task.into(),
                    begin_ns: i * 100,
                    end_ns: i * 100 + 50,
                    blocks: 4000,
                    begin_held: 0,
                    end_held: 0,
                })
            })
            .collect();
        let a = attribute(&runs, &cfg());
        assert!(!a["a"].suspected && !a["b"].suspected);
        assert!(
            a["a"].evidence.contains("cannot be told apart"),
            "{:?}",
            a["a"]
        );
    }

    #[test]
    fn inverse_of_a_known_matrix() {
        let inv = inverse(vec![vec![4.0, 7.0], vec![2.0, 6.0]]).unwrap();
        let want = [[0.6, -0.7], [-0.2, 0.4]];
        for i in 0..2 {
            for j in 0..2 {
                assert!((inv[i][j] - want[i][j]).abs() < 1e-12);
            }
        }
        assert!(inverse(vec![vec![1.0, 2.0], vec![2.0, 4.0]]).is_none());
    }

    #[test]
    fn t95_matches_tables() {
        assert!((t95(10) - 2.228).abs() < 0.01);
        assert!((t95(1000) - 1.962).abs() < 0.002);
    }
}
