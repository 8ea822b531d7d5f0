//! Leak detection on per-process resident-memory histories.
//!
//! The agent feeds one RSS sample per process roughly every second; this
//! module turns that history into a verdict (`stable`, `growing`, `leaking`).
//! It is pure logic (no I/O, no clock) so it can be tested on recorded or
//! synthetic series.
//!
//! The evidence combines three signals, each resisting a different false
//! positive:
//! * a Theil–Sen slope (median of pairwise slopes): a burst or a GC
//!   sawtooth moves a minority of pairs, so it barely moves the median;
//! * the floor of each of `segments` equal time slices of the window (the
//!   low point between GC drops): a leak raises the floor, a cache that
//!   filled up or a burst that was freed does not keep raising it;
//! * consistency: the share of consecutive segments whose floor rose, less
//!   those whose floor fell, so one step up (cache fill, spike) or a slow GC
//!   cycle is not mistaken for steady growth.
//!
//! `leaking` needs all three; `growing` is a positive rate backed by either a
//! rise that stands out of the noise or a risen floor; anything else is
//! `stable`. Confidence grows with the analysed span, the consistency and the
//! size of the rise relative to the residual noise.

use std::{collections::VecDeque, time::Duration};

const MIB: f64 = 1024.0 * 1024.0;

/// The shortest history, in nominal seconds, the detector gives a verdict on (the default
/// `min_window_secs`). A `--leak-window` below it could never give one.
pub const MIN_HISTORY_SECS: f64 = 90.0;

/// Fewer fitted points than this cannot tell a trend from noise.
const MIN_FIT_POINTS: usize = 6;

/// A net rise must exceed this many noise standard deviations before we call
/// it growth, so random jitter never reads as `growing`.
const GROWTH_SIGNIFICANCE: f64 = 2.0;

/// Relative slack on window edges: a sample sitting exactly on an edge must
/// stay in whatever the float rounding, so a replay at another time scale
/// keeps the same samples.
const EDGE_SLACK: f64 = 1e-9;

/// More slices than this only adds noise to the floors.
const MAX_SEGMENTS: usize = 64;

/// Scale factor turning a median absolute deviation into a normal sigma.
const MAD_TO_SIGMA: f64 = 1.4826;

/// Tuning knobs of the detector. Durations are in seconds and are multiplied
/// by `time_scale`; rate thresholds are divided by it, so a series replayed
/// `1 / time_scale` times faster yields the same verdicts.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// History kept per process; older samples are dropped. Zero keeps
    /// everything (memory is still bounded by `max_samples`).
    pub window_secs: f64,
    /// Shortest analysed span before any verdict other than `stable`/0.
    pub min_window_secs: f64,
    /// Samples this soon after start/exec are ignored (imports, pools, JIT).
    pub warmup_secs: f64,
    /// Robust rate above which a significant rise is reported as `growing`.
    pub growing_rate_bytes_per_sec: f64,
    /// Robust rate required for `leaking`.
    pub leaking_rate_bytes_per_sec: f64,
    /// Net growth (rate x span) required for `growing`.
    pub min_growth_bytes: f64,
    /// Rise of the floor (last segment minimum - first) required for `leaking`.
    pub min_floor_rise_bytes: f64,
    /// Consistency (see [`Assessment::consistency`]) required for `leaking`.
    pub min_consistency: f64,
    /// A floor falling by more than this between segments counts against
    /// consistency: memory that came back was not leaked.
    pub floor_drop_tolerance_bytes: f64,
    /// Number of time slices used for floors and consistency.
    pub segments: usize,
    /// Shortest slice: a floor taken over less time than one GC cycle is
    /// just a point on the ramp, so short windows use fewer slices.
    pub min_segment_secs: f64,
    /// Upper bound on stored points per process (bounded memory).
    pub max_samples: usize,
    /// Points fed to the O(n^2) Theil–Sen fit (bounded CPU).
    pub max_fit_points: usize,
    /// Multiplies every duration above; 1/60 lets tests run 60x faster.
    pub time_scale: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            window_secs: 600.0,
            min_window_secs: MIN_HISTORY_SECS,
            warmup_secs: 60.0,
            // 0.1 MiB/min: below this, growth is not worth reporting.
            growing_rate_bytes_per_sec: 0.1 * MIB / 60.0,
            // 0.5 MiB/min, half the slowest leak we promise to catch
            // (1 MiB/min), so that one is not decided by estimator noise.
            leaking_rate_bytes_per_sec: 0.5 * MIB / 60.0,
            min_growth_bytes: 1.0 * MIB,
            // Above the +-2 MiB jitter of allocator-heavy processes.
            min_floor_rise_bytes: 4.0 * MIB,
            // 4 of 5 segment pairs with the default 6 segments.
            min_consistency: 0.75,
            floor_drop_tolerance_bytes: 1.0 * MIB,
            segments: 6,
            min_segment_secs: 30.0,
            // 256 points of 40 bytes per process: 10 KiB, so a thousand processes' histories
            // fit in 10 MiB of the agent's memory. Past 256 samples the grid coarsens (to
            // about 4 s over the 10 min window at 1 Hz), still above the fit's 96 points and
            // the floors' six segments.
            max_samples: 256,
            max_fit_points: 96,
            time_scale: 1.0,
        }
    }
}

/// A configuration under which no verdict could ever be given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DetectorError {
    #[error(
        "--detector-time-scale {scale} makes the detector's minimum history {min_history:.3}s \
         of real time, fewer than {MIN_FIT_POINTS} samples at --interval {interval:?}: no \
         verdict could ever be given; use a larger scale or a shorter interval"
    )]
    TooFewSamples {
        scale: f64,
        min_history: f64,
        interval: Duration,
    },
    #[error(
        "--leak-window at --detector-time-scale {scale} is {window:.3}s of real time, which \
         leaves less than two samples at --interval {interval:?} beyond the detector's \
         {min_history:.3}s minimum history: verdicts would come and go with timer jitter; use \
         a --leak-window of at least {at_least}s or a shorter --interval"
    )]
    NoRoom {
        scale: f64,
        window: f64,
        min_history: f64,
        interval: Duration,
        at_least: u64,
    },
}

impl DetectorConfig {
    /// Whether a history sampled every `interval` can ever reach a verdict. The detector's
    /// durations follow `time_scale` and the interval does not, so this is known only once
    /// both are.
    pub fn check_sampling(&self, interval: Duration) -> Result<(), DetectorError> {
        let step = interval.as_secs_f64();
        let min_history = self.secs(self.min_window_secs);
        if min_history < MIN_FIT_POINTS as f64 * step {
            return Err(DetectorError::TooFewSamples {
                scale: self.scale(),
                min_history,
                interval,
            });
        }
        let window = self.secs(self.window_secs);
        // The oldest sample kept lies up to one interval inside the window, and timer jitter
        // can cost one more.
        if window > 0.0 && window - min_history < 2.0 * step {
            let nominal = nonneg(self.min_window_secs) + 2.0 * step / self.scale();
            return Err(DetectorError::NoRoom {
                scale: self.scale(),
                window,
                min_history,
                interval,
                at_least: nominal.ceil() as u64,
            });
        }
        Ok(())
    }

    /// The effective time scale; a nonsensical value falls back to real time
    /// rather than producing NaN windows.
    fn scale(&self) -> f64 {
        if self.time_scale.is_finite() && self.time_scale > 0.0 {
            self.time_scale
        } else {
            1.0
        }
    }

    fn secs(&self, nominal: f64) -> f64 {
        nonneg(nominal) * self.scale()
    }

    fn rate(&self, nominal: f64) -> f64 {
        nonneg(nominal) / self.scale()
    }
}

/// Verdict for one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Stable,
    Growing,
    Leaking,
}

/// Verdict plus the evidence behind it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Confidence in `verdict`, in [0, 1].
    pub confidence: f64,
    /// Robust (Theil–Sen) growth rate over the analysed window, bytes per
    /// real second.
    pub rate_bytes_per_sec: f64,
    /// Span of the analysed window (after warm-up), real seconds.
    pub window_secs: f64,
    /// Floor of the last segment minus floor of the first, bytes.
    pub floor_rise_bytes: f64,
    /// Fraction of consecutive segment pairs whose floor rose, minus the
    /// fraction whose floor dropped by more than the tolerance; in [0, 1].
    pub consistency: f64,
    /// Raw samples covered by the analysed window.
    pub samples: usize,
}

impl Assessment {
    fn insufficient(samples: usize, window_secs: f64) -> Self {
        Self {
            verdict: Verdict::Stable,
            confidence: 0.0,
            rate_bytes_per_sec: 0.0,
            window_secs,
            floor_rise_bytes: 0.0,
            consistency: 0.0,
            samples,
        }
    }
}

/// Samples merged into one stored point. Keeping the minimum (not just one
/// representative) preserves the floors that downsampling would otherwise
/// erase, and the mean keeps the slope unbiased.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    t_first: f64,
    t_last: f64,
    n: u64,
    sum: f64,
    min: u64,
}

impl Bucket {
    fn new(t: f64, rss: u64) -> Self {
        Self {
            t_first: t,
            t_last: t,
            n: 1,
            sum: rss as f64,
            min: rss,
        }
    }

    fn absorb(&mut self, other: &Bucket) {
        self.t_last = other.t_last;
        self.n += other.n;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
    }

    fn mid(&self) -> f64 {
        0.5 * (self.t_first + self.t_last)
    }

    fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }

    fn is_flat_at(&self, v: u64) -> bool {
        self.min == v && self.mean() == v as f64
    }
}

/// One stored point of a history, in the history's own clock (seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryPoint {
    /// Middle of the samples merged into the point.
    pub t: f64,
    /// Their mean, which the slope is fitted to.
    pub mean_bytes: f64,
    /// Their minimum, which the floors are taken from.
    pub min_bytes: u64,
    pub samples: u64,
}

/// The lowest RSS of one time slice of the analysed window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentFloor {
    pub t_start: f64,
    pub t_end: f64,
    pub bytes: u64,
}

/// Bounded RSS history of one process.
///
/// Downsampling: when `max_samples` points are stored, the time grid
/// resolution is raised so the kept span fits in half of them, and points
/// sharing a grid cell are merged (keeping min, mean and count). New samples then
/// merge into the last point while in the same cell. Resolution only grows
/// until `reset`, which is fine because old points age out of the window.
#[derive(Clone, Debug)]
pub struct RssHistory {
    buckets: VecDeque<Bucket>,
    /// Start of the process (or of its last exec); the grid origin.
    t_start: f64,
    /// Grid cell width in seconds; 0 until the first compaction.
    resolution: f64,
    window: f64,
    warmup: f64,
    max_samples: usize,
    /// Samples in the buckets (kept rather than summed at every assessment).
    samples: usize,
    /// `Some(v)` when every stored point has `v` as its minimum and, exactly, as its mean: an
    /// idle process's history, whose assessment needs no fit (see [`Self::assess`]). Only
    /// ever `Some` when true; a history that becomes flat by eviction stays `None`.
    flat: Option<u64>,
}

impl RssHistory {
    /// `t_start` is when the process started (or was first seen); the
    /// warm-up period is counted from it.
    pub fn new(cfg: &DetectorConfig, t_start: f64) -> Self {
        let window = cfg.secs(cfg.window_secs);
        Self {
            buckets: VecDeque::new(),
            t_start: finite_or(t_start, 0.0),
            resolution: 0.0,
            window: if window > 0.0 { window } else { f64::INFINITY },
            warmup: cfg.secs(cfg.warmup_secs),
            max_samples: cfg.max_samples.max(8),
            samples: 0,
            flat: None,
        }
    }

    /// Records one sample; returns whether it was kept. Samples during warm-up,
    /// with a non-finite time or going back in time are ignored: none of them
    /// says anything about the steady-state trend. An ignored sample leaves the
    /// history, and so [`Self::assess`], as it was.
    pub fn observe(&mut self, t: f64, rss: u64) -> bool {
        if !t.is_finite() || t < self.t_start + self.warmup * (1.0 - EDGE_SLACK) {
            return false;
        }
        if self.buckets.back().is_some_and(|b| t < b.t_last) {
            return false;
        }
        self.push(t, rss);
        self.evict(t);
        while self.buckets.len() > self.max_samples {
            self.compact();
        }
        true
    }

    /// Forgets everything: after exec the process is a different program.
    pub fn reset(&mut self, t: f64) {
        self.buckets.clear();
        self.t_start = finite_or(t, self.t_start);
        self.resolution = 0.0;
        self.samples = 0;
        self.flat = None;
    }

    /// Number of stored (possibly merged) points, at most `max_samples`.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Most recent sample's time, if any.
    pub fn last_time(&self) -> Option<f64> {
        self.buckets.back().map(|b| b.t_last)
    }

    pub fn assess(&self, cfg: &DetectorConfig) -> Assessment {
        let samples = self.samples;
        let evidence = match self.flat {
            // Every point at one value: each pairwise slope, residual, floor rise and floor
            // change is exactly zero, which is what the fit and the floors would find.
            Some(_) => self.analysed_span(cfg).map(|span| Evidence {
                rate: 0.0,
                span,
                noise: 0.0,
                floor_rise: 0.0,
                consistency: 0.0,
            }),
            None => self.analysed(cfg).map(|(t0, span, points)| {
                let fit = theil_sen(&points);
                let floors = segment_floors(&self.buckets, t0, span, segment_count(cfg, span));
                Evidence {
                    rate: fit.slope,
                    span,
                    noise: fit.noise,
                    floor_rise: floor_rise(&floors),
                    consistency: consistency(&floors, nonneg(cfg.floor_drop_tolerance_bytes)),
                }
            }),
        };
        let Some(evidence) = evidence else {
            let span = match (self.buckets.front(), self.buckets.back()) {
                (Some(first), Some(last)) => nonneg(last.t_last - first.t_first),
                _ => 0.0,
            };
            return Assessment::insufficient(samples, span);
        };
        let (verdict, confidence) = evidence.judge(cfg);
        Assessment {
            verdict,
            confidence: unit(confidence),
            rate_bytes_per_sec: finite_or(evidence.rate, 0.0),
            window_secs: evidence.span,
            floor_rise_bytes: finite_or(evidence.floor_rise, 0.0),
            consistency: unit(evidence.consistency),
            samples,
        }
    }

    /// [`Self::analysed`]'s span, when it gives one, without gathering the points: only
    /// whether there are enough of them.
    fn analysed_span(&self, cfg: &DetectorConfig) -> Option<f64> {
        let (first, last) = (self.buckets.front()?, self.buckets.back()?);
        let span = last.t_last - first.t_first;
        if span.is_nan() || span < cfg.secs(cfg.min_window_secs) {
            return None;
        }
        let enough = fit_point_count(
            &self.buckets,
            first.t_first,
            span,
            cfg.max_fit_points,
            MIN_FIT_POINTS,
        ) >= MIN_FIT_POINTS;
        enough.then_some(span)
    }

    /// Where the analysed window starts, its span and the points fitted, once the history is
    /// long enough for a verdict; `None` before (the assessment is then `insufficient`).
    fn analysed(&self, cfg: &DetectorConfig) -> Option<(f64, f64, Vec<Point>)> {
        let (first, last) = (self.buckets.front()?, self.buckets.back()?);
        let span = last.t_last - first.t_first;
        let points = fit_points(&self.buckets, first.t_first, span, cfg.max_fit_points);
        if span.is_nan() || span < cfg.secs(cfg.min_window_secs) || points.len() < MIN_FIT_POINTS {
            return None;
        }
        Some((first.t_first, span, points))
    }

    /// The stored points, oldest first: what the detector judges, served as it is (at most
    /// `max_samples`, merged when the history was downsampled).
    pub fn points(&self) -> impl ExactSizeIterator<Item = HistoryPoint> + '_ {
        self.buckets.iter().map(|b| HistoryPoint {
            t: b.mid(),
            mean_bytes: b.mean(),
            min_bytes: b.min,
            samples: b.n,
        })
    }

    /// The segment floors [`Self::assess`] compares (gaps left out), or none while the history
    /// is too short for a verdict.
    pub fn floors(&self, cfg: &DetectorConfig) -> Vec<SegmentFloor> {
        let Some((t0, span, _)) = self.analysed(cfg) else {
            return Vec::new();
        };
        let segments = segment_count(cfg, span).clamp(2, MAX_SEGMENTS);
        let width = span / segments as f64;
        indexed_segment_floors(&self.buckets, t0, span, segments)
            .into_iter()
            .map(|(i, bytes)| SegmentFloor {
                t_start: t0 + i as f64 * width,
                t_end: t0 + (i + 1) as f64 * width,
                bytes,
            })
            .collect()
    }

    fn push(&mut self, t: f64, rss: u64) {
        // Only the last bucket changes: the rest were flat at `rss` already, or there are none.
        let flat = if self.buckets.is_empty() {
            Some(rss)
        } else {
            self.flat.filter(|v| *v == rss)
        };
        self.push_bucket(t, rss);
        self.samples += 1;
        self.flat = flat.filter(|v| self.buckets.back().is_some_and(|b| b.is_flat_at(*v)));
    }

    fn push_bucket(&mut self, t: f64, rss: u64) {
        let sample = Bucket::new(t, rss);
        let cell = self.cell(t);
        match self.buckets.back_mut() {
            Some(last)
                if self.resolution > 0.0
                    && cell_of(last.t_first, self.t_start, self.resolution) == cell =>
            {
                last.absorb(&sample)
            }
            _ => {
                // Grown to the budget and no further (doubling would leave a thousand
                // histories each holding twice what they can use), in place thereafter.
                if self.buckets.len() == self.buckets.capacity() {
                    let cap = (self.buckets.capacity().max(4) * 2).min(self.max_samples + 1);
                    self.buckets
                        .reserve_exact(cap.saturating_sub(self.buckets.len()).max(1));
                }
                self.buckets.push_back(sample)
            }
        }
    }

    fn cell(&self, t: f64) -> f64 {
        cell_of(t, self.t_start, self.resolution)
    }

    fn evict(&mut self, now: f64) {
        let horizon = now - self.window * (1.0 + EDGE_SLACK);
        while self.buckets.front().is_some_and(|b| b.t_last < horizon) {
            if let Some(b) = self.buckets.pop_front() {
                self.samples -= b.n as usize;
            }
        }
        if self.buckets.is_empty() {
            self.flat = None;
        }
    }

    /// Coarsens the grid so the stored span fits in half the budget; always
    /// at least doubles the resolution so repeated calls terminate.
    fn compact(&mut self) {
        let (Some(first), Some(last)) = (self.buckets.front(), self.buckets.back()) else {
            return;
        };
        let span = last.t_last - first.t_first;
        let target = span / (self.max_samples / 2) as f64;
        let doubled = if self.resolution > 0.0 {
            2.0 * self.resolution
        } else {
            f64::MIN_POSITIVE
        };
        self.resolution = target.max(doubled);
        // Merged in place: the buffer is kept (a new one per compaction, per process, is
        // what fragments the heap of an agent watching a thousand of them).
        let mut kept = 0;
        for i in 0..self.buckets.len() {
            let b = self.buckets[i];
            if i > 0
                && cell_of(self.buckets[kept].t_first, self.t_start, self.resolution)
                    == cell_of(b.t_first, self.t_start, self.resolution)
            {
                self.buckets[kept].absorb(&b);
            } else {
                if i > 0 {
                    kept += 1;
                }
                self.buckets[kept] = b;
            }
        }
        self.buckets.truncate(kept + 1);
        self.flat = self
            .flat
            .filter(|v| self.buckets.iter().all(|b| b.is_flat_at(*v)));
    }
}

fn cell_of(t: f64, origin: f64, resolution: f64) -> f64 {
    if resolution > 0.0 {
        grid_floor((t - origin) / resolution)
    } else {
        t
    }
}

/// Gathered evidence, in real seconds and bytes.
struct Evidence {
    rate: f64,
    span: f64,
    noise: f64,
    floor_rise: f64,
    consistency: f64,
}

impl Evidence {
    fn judge(&self, cfg: &DetectorConfig) -> (Verdict, f64) {
        let span_factor =
            unit(self.span / (3.0 * cfg.secs(cfg.min_window_secs).max(f64::MIN_POSITIVE)));
        if self.is_leaking(cfg) {
            let floor_snr = snr(self.floor_rise, self.noise);
            return (
                Verdict::Leaking,
                (span_factor * self.consistency * floor_snr).cbrt(),
            );
        }
        let net_rise = self.rate * self.span;
        if self.is_growing(cfg, net_rise) {
            let evidence =
                snr(net_rise, self.noise).max(self.floor_evidence(cfg) * self.consistency);
            return (Verdict::Growing, (span_factor * evidence).sqrt());
        }
        // A leak-like rate only undermines `stable` if the floor moved too:
        // a sawtooth's slope wobbles while its floor stays put.
        let closeness = unit(
            self.rate
                / cfg
                    .rate(cfg.leaking_rate_bytes_per_sec)
                    .max(f64::MIN_POSITIVE),
        );
        (
            Verdict::Stable,
            span_factor * (1.0 - closeness * self.floor_evidence(cfg)),
        )
    }

    fn floor_evidence(&self, cfg: &DetectorConfig) -> f64 {
        unit(self.floor_rise / nonneg(cfg.min_floor_rise_bytes).max(1.0))
    }

    fn is_leaking(&self, cfg: &DetectorConfig) -> bool {
        self.rate >= cfg.rate(cfg.leaking_rate_bytes_per_sec)
            && self.floor_rise >= nonneg(cfg.min_floor_rise_bytes)
            && self.consistency >= cfg.min_consistency
    }

    /// Growth is reported when the robust rate is positive and either the
    /// fitted rise stands out of the noise or the floor itself went up (a
    /// sawtooth hides the former but not the latter).
    fn is_growing(&self, cfg: &DetectorConfig, net_rise: f64) -> bool {
        let significant_rise = net_rise >= nonneg(cfg.min_growth_bytes)
            && net_rise >= GROWTH_SIGNIFICANCE * self.noise;
        let floor_rose = self.floor_rise >= nonneg(cfg.min_floor_rise_bytes);
        self.rate >= cfg.rate(cfg.growing_rate_bytes_per_sec)
            && self.rate > 0.0
            && (significant_rise || floor_rose)
    }
}

/// Maps "signal relative to noise" to [0, 1); a noiseless signal gives 1.
fn snr(signal: f64, noise: f64) -> f64 {
    if !is_positive(signal) {
        return 0.0;
    }
    if !is_positive(noise) {
        return 1.0;
    }
    unit(1.0 - (-signal / (3.0 * noise)).exp())
}

#[derive(Clone, Copy, Debug)]
struct Point {
    t: f64,
    y: f64,
}

/// Reduces the buckets to at most `max_points` for the quadratic fit: equal
/// time slices, each represented by the median of its bucket means so one
/// spiky bucket does not drag its slice.
fn fit_points(buckets: &VecDeque<Bucket>, t0: f64, span: f64, max_points: usize) -> Vec<Point> {
    let max_points = max_points.max(MIN_FIT_POINTS);
    if buckets.len() <= max_points || !is_positive(span) {
        return buckets
            .iter()
            .map(|b| Point {
                t: b.mid(),
                y: b.mean(),
            })
            .collect();
    }
    // Buckets are in time order, so each slice is a run of consecutive buckets: its medians
    // come from two scratch buffers instead of three vectors per slice (every process, every
    // interval, once its history outgrows `max_points`).
    let mut points = Vec::with_capacity(max_points);
    let (mut ts, mut ys) = (Vec::new(), Vec::new());
    let mut slice = None;
    for b in buckets {
        let i = slice_index(b.mid(), t0, span, max_points);
        if slice.is_some_and(|s| i < s) {
            return fit_points_by_slice(buckets, t0, span, max_points);
        }
        if slice != Some(i) {
            push_slice_median(&mut ts, &mut ys, &mut points);
            slice = Some(i);
        }
        ts.push(b.mid());
        ys.push(b.mean());
    }
    push_slice_median(&mut ts, &mut ys, &mut points);
    points
}

/// How many points [`fit_points`] gives, counting no further than `enough`.
fn fit_point_count(
    buckets: &VecDeque<Bucket>,
    t0: f64,
    span: f64,
    max_points: usize,
    enough: usize,
) -> usize {
    let max_points = max_points.max(MIN_FIT_POINTS);
    if buckets.len() <= max_points || !is_positive(span) {
        return buckets.len();
    }
    let (mut count, mut slice) = (0, None);
    for b in buckets {
        let i = slice_index(b.mid(), t0, span, max_points);
        if slice.is_some_and(|s| i < s) {
            return fit_points_by_slice(buckets, t0, span, max_points).len();
        }
        if slice != Some(i) {
            slice = Some(i);
            count += 1;
            if count >= enough {
                break;
            }
        }
    }
    count
}

/// The medians of one slice's times and means, then empties the buffers for the next one.
fn push_slice_median(ts: &mut Vec<f64>, ys: &mut Vec<f64>, points: &mut Vec<Point>) {
    if let (Some(t), Some(y)) = (median(ts), median(ys)) {
        points.push(Point { t, y });
    }
    ts.clear();
    ys.clear();
}

/// [`fit_points`] gathering each slice apart, whatever the buckets' order.
fn fit_points_by_slice(
    buckets: &VecDeque<Bucket>,
    t0: f64,
    span: f64,
    max_points: usize,
) -> Vec<Point> {
    let mut slices: Vec<Vec<Point>> = vec![Vec::new(); max_points];
    for b in buckets {
        let i = slice_index(b.mid(), t0, span, max_points);
        slices[i].push(Point {
            t: b.mid(),
            y: b.mean(),
        });
    }
    slices
        .into_iter()
        .filter_map(|s| slice_median(&s))
        .collect()
}

fn slice_index(t: f64, t0: f64, span: f64, slices: usize) -> usize {
    let x = grid_floor((t - t0) / span * slices as f64);
    if x.is_finite() && x > 0.0 {
        (x as usize).min(slices - 1)
    } else {
        0
    }
}

fn slice_median(points: &[Point]) -> Option<Point> {
    let mut ys: Vec<f64> = points.iter().map(|p| p.y).collect();
    let mut ts: Vec<f64> = points.iter().map(|p| p.t).collect();
    Some(Point {
        t: median(&mut ts)?,
        y: median(&mut ys)?,
    })
}

struct Fit {
    slope: f64,
    /// Robust standard deviation of the residuals around the fitted line.
    noise: f64,
}

/// Theil–Sen estimator: median of all pairwise slopes, O(n^2) on a small n.
fn theil_sen(points: &[Point]) -> Fit {
    // A flat series (an idle process: most of a host's) has every pairwise slope, residual
    // and so the noise at exactly zero: what the quadratic walk below would find, in one pass.
    if points.windows(2).all(|w| w[0].y == w[1].y) {
        return Fit {
            slope: 0.0,
            noise: 0.0,
        };
    }
    theil_sen_pairs(points)
}

/// [`theil_sen`] over every pair of points.
fn theil_sen_pairs(points: &[Point]) -> Fit {
    let mut slopes = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            let dt = b.t - a.t;
            if dt > 0.0 {
                slopes.push((b.y - a.y) / dt);
            }
        }
    }
    let slope = finite_or(median(&mut slopes).unwrap_or(0.0), 0.0);
    let mut intercepts: Vec<f64> = points.iter().map(|p| p.y - slope * p.t).collect();
    let intercept = median(&mut intercepts).unwrap_or(0.0);
    let mut residuals: Vec<f64> = points
        .iter()
        .map(|p| (p.y - slope * p.t - intercept).abs())
        .collect();
    let noise = MAD_TO_SIGMA * median(&mut residuals).unwrap_or(0.0);
    Fit {
        slope,
        noise: finite_or(noise, 0.0),
    }
}

fn segment_count(cfg: &DetectorConfig, span: f64) -> usize {
    let min_segment = cfg.secs(cfg.min_segment_secs);
    let fit = if is_positive(min_segment) {
        span / min_segment
    } else {
        f64::INFINITY
    };
    // `as` saturates (and maps NaN to 0), which the clamp then bounds.
    (fit as usize).min(cfg.segments).clamp(2, MAX_SEGMENTS)
}

/// Minimum RSS of each of `segments` equal time slices; slices without samples (gaps) are
/// skipped rather than read as drops.
fn segment_floors(buckets: &VecDeque<Bucket>, t0: f64, span: f64, segments: usize) -> Vec<u64> {
    indexed_segment_floors(buckets, t0, span, segments)
        .into_iter()
        .map(|(_, floor)| floor)
        .collect()
}

/// [`segment_floors`] with the index of each slice, so its time range can be shown.
fn indexed_segment_floors(
    buckets: &VecDeque<Bucket>,
    t0: f64,
    span: f64,
    segments: usize,
) -> Vec<(usize, u64)> {
    let segments = segments.clamp(2, MAX_SEGMENTS);
    let mut floors: Vec<Option<u64>> = vec![None; segments];
    for b in buckets {
        let i = slice_index(b.mid(), t0, span, segments);
        floors[i] = Some(floors[i].map_or(b.min, |f| f.min(b.min)));
    }
    floors
        .into_iter()
        .enumerate()
        .filter_map(|(i, f)| Some((i, f?)))
        .collect()
}

fn floor_rise(floors: &[u64]) -> f64 {
    match (floors.first(), floors.last()) {
        (Some(&a), Some(&b)) => b as f64 - a as f64,
        _ => 0.0,
    }
}

/// Net share of rising floors. Drops are subtracted because a slow GC cycle
/// (period close to the window) shows mostly rising floors with one big fall
/// per cycle, and that fall is what separates it from a leak.
fn consistency(floors: &[u64], drop_tolerance: f64) -> f64 {
    let pairs = floors.len().saturating_sub(1);
    if pairs == 0 {
        return 0.0;
    }
    let rises = floors.windows(2).filter(|w| w[1] > w[0]).count();
    let drops = floors
        .windows(2)
        .filter(|w| w[0] as f64 - w[1] as f64 > drop_tolerance)
        .count();
    unit((rises as f64 - drops as f64) / pairs as f64)
}

/// Median that tolerates NaN (ordered by `total_cmp`) and empty input.
fn median(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (lower, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if !n.is_multiple_of(2) {
        return Some(upper);
    }
    let below = lower
        .iter()
        .copied()
        .max_by(f64::total_cmp)
        .unwrap_or(upper);
    Some(0.5 * (below + upper))
}

/// Floor that treats a value a rounding error below an integer as that
/// integer (see `EDGE_SLACK`).
fn grid_floor(q: f64) -> f64 {
    floor(q + (q.abs() + 1.0) * EDGE_SLACK)
}

/// `f64::floor`, inline: without SSE4.1 in the target's baseline that is a libm call, made
/// for every stored point of every process at every assessment. Exact: below 2^52 the
/// integer conversion truncates without rounding; anything else (large, infinite, NaN) takes
/// libm's path.
fn floor(x: f64) -> f64 {
    const EXACT: f64 = (1u64 << 52) as f64;
    if x.is_nan() || x.abs() >= EXACT {
        return x.floor();
    }
    let t = x as i64 as f64;
    if t == x {
        x
    } else if t > x {
        t - 1.0
    } else {
        t
    }
}

/// False for NaN, unlike `!(x <= 0.0)`.
fn is_positive(x: f64) -> bool {
    x > 0.0
}

fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

fn nonneg(x: f64) -> f64 {
    if x > 0.0 { x } else { 0.0 }
}

fn finite_or(x: f64, fallback: f64) -> f64 {
    if x.is_finite() { x } else { fallback }
}

/// Seconds until `limit_bytes` is reached at the assessed rate; None when not
/// growing or no limit (`limit_bytes == 0`); Some(0.0) when already over.
pub fn time_to_limit(current_bytes: u64, limit_bytes: u64, rate_bytes_per_sec: f64) -> Option<f64> {
    if limit_bytes == 0 {
        return None;
    }
    if current_bytes >= limit_bytes {
        return Some(0.0);
    }
    if !is_positive(rate_bytes_per_sec) || !rate_bytes_per_sec.is_finite() {
        return None;
    }
    Some((limit_bytes - current_bytes) as f64 / rate_bytes_per_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_that_can_never_give_a_verdict_is_refused() {
        let at = |window_secs: f64, time_scale: f64, interval_ms: u64| {
            DetectorConfig {
                window_secs,
                time_scale,
                ..DetectorConfig::default()
            }
            .check_sampling(Duration::from_millis(interval_ms))
        };
        // The CLI's defaults, and the tests' ten-times-faster runs.
        assert_eq!(at(600.0, 1.0, 1000), Ok(()));
        assert_eq!(at(600.0, 0.1, 200), Ok(()));
        assert_eq!(at(92.0, 1.0, 1000), Ok(()));
        let e = at(91.0, 1.0, 1000).unwrap_err();
        assert!(
            matches!(e, DetectorError::NoRoom { at_least: 92, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("at least 92s"), "{e}");
        // The window scales with the minimum, the interval does not.
        let e = at(93.0, 0.1, 200).unwrap_err();
        assert!(
            matches!(e, DetectorError::NoRoom { at_least: 94, .. }),
            "{e}"
        );
        let e = at(600.0, 0.005, 100).unwrap_err();
        assert!(matches!(e, DetectorError::TooFewSamples { .. }), "{e}");
        assert!(e.to_string().contains("--detector-time-scale 0.005"), "{e}");
        // Why two intervals: 1 s samples, every seventh a millisecond late. With a window equal
        // to the minimum history, the span drops below the minimum whenever the newest sample
        // is late (the oldest one is pushed out) or the oldest one is: no verdict then.
        let misses = |window_secs: f64| {
            let cfg = DetectorConfig {
                window_secs,
                warmup_secs: 0.0,
                ..DetectorConfig::default()
            };
            let mut h = RssHistory::new(&cfg, 0.0);
            let mut misses = 0;
            for i in 0..200u32 {
                let t = f64::from(i) + if i.is_multiple_of(7) { 0.001 } else { 0.0 };
                h.observe(t, (100 << 20) + u64::from(i) * (1 << 20));
                if i >= 100 && h.assess(&cfg).verdict != Verdict::Leaking {
                    misses += 1;
                }
            }
            misses
        };
        assert_eq!(misses(92.0), 0);
        let late = |i: u32| i.is_multiple_of(7);
        let short = (100..200u32).filter(|&i| late(i) || late(i - 90)).count();
        assert_eq!(misses(MIN_HISTORY_SECS), short);
    }

    const BASE: f64 = 200.0 * MIB;

    /// Deterministic noise in [-1, 1] keyed by sample index (splitmix64), so
    /// a scenario is a pure function of time and replays identically.
    fn jitter(seed: u64, i: u64) -> f64 {
        let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn linear(mib_per_min: f64) -> impl Fn(f64) -> f64 {
        move |t| BASE + mib_per_min * MIB * t / 60.0
    }

    /// GC-like sawtooth: 40 MiB ramp every 30 s on top of a floor that rises
    /// at `floor_mib_per_min`.
    fn sawtooth(floor_mib_per_min: f64) -> impl Fn(f64) -> f64 {
        move |t| BASE + floor_mib_per_min * MIB * t / 60.0 + 40.0 * MIB * (t % 30.0) / 30.0
    }

    fn slow_gc(period: f64) -> impl Fn(f64) -> f64 {
        move |t| BASE + 60.0 * MIB * (t % period) / period
    }

    fn warmup_then_flat(t: f64) -> f64 {
        BASE + 200.0 * MIB * (t / 60.0).min(1.0)
    }

    fn cache_plateau(t: f64) -> f64 {
        BASE + 50.0 * MIB * (t / 180.0).min(1.0)
    }

    fn burst(t: f64) -> f64 {
        BASE + if (300.0..330.0).contains(&t) {
            200.0 * MIB
        } else {
            0.0
        }
    }

    fn stepped(t: f64) -> f64 {
        BASE + 8.0 * MIB * (t / 60.0).floor()
    }

    fn noisy(seed: u64) -> impl Fn(f64) -> f64 {
        move |t| BASE + 2.0 * MIB * jitter(seed, t.round() as u64)
    }

    type Series = Box<dyn Fn(f64) -> f64>;

    fn scenarios() -> Vec<(&'static str, Series)> {
        vec![
            ("warmup", Box::new(warmup_then_flat)),
            ("plateau", Box::new(cache_plateau)),
            ("burst", Box::new(burst)),
            ("saw0", Box::new(sawtooth(0.0))),
            ("saw5", Box::new(sawtooth(5.0))),
            ("saw120", Box::new(slow_gc(120.0))),
            ("saw300", Box::new(slow_gc(300.0))),
            ("lin1", Box::new(linear(1.0))),
            ("lin10", Box::new(linear(10.0))),
            ("stepped", Box::new(stepped)),
            ("noise", Box::new(noisy(3))),
        ]
    }

    /// Samples `rss(t)` every nominal second from process start to `end`
    /// (nominal seconds, stretched by `cfg.time_scale`), assessing after each
    /// sample. Returned times are nominal.
    fn replay(cfg: &DetectorConfig, end: u32, rss: impl Fn(f64) -> f64) -> Vec<(f64, Assessment)> {
        let scale = cfg.time_scale;
        let mut h = RssHistory::new(cfg, 0.0);
        (0..=end)
            .map(|i| {
                let t = f64::from(i);
                h.observe(t * scale, rss(t).max(0.0) as u64);
                (t, h.assess(cfg))
            })
            .collect()
    }

    fn first(run: &[(f64, Assessment)], v: Verdict) -> Option<f64> {
        run.iter().find(|(_, a)| a.verdict == v).map(|(t, _)| *t)
    }

    fn verdicts_from(run: &[(f64, Assessment)], from: f64) -> Vec<Verdict> {
        run.iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, a)| a.verdict)
            .collect()
    }

    fn last(run: &[(f64, Assessment)]) -> &Assessment {
        &run[run.len() - 1].1
    }

    /// Flagged by `by` and never let go afterwards.
    fn assert_leak_detected(run: &[(f64, Assessment)], by: f64) {
        let at = first(run, Verdict::Leaking);
        assert!(
            at.is_some_and(|t| t <= by),
            "leak flagged at {at:?}, wanted by {by}"
        );
        let bad = run
            .iter()
            .find(|(t, a)| *t >= by && a.verdict != Verdict::Leaking);
        assert!(bad.is_none(), "leak verdict lost: {bad:?}");
        assert!(last(run).confidence > 0.5, "{:?}", last(run));
    }

    fn assert_never_leaking(run: &[(f64, Assessment)], from: f64) {
        let bad = run
            .iter()
            .find(|(t, a)| *t >= from && a.verdict == Verdict::Leaking);
        assert!(bad.is_none(), "false leak: {bad:?}");
    }

    #[test]
    fn empty_and_short_histories_are_stable_with_zero_confidence() {
        let cfg = DetectorConfig::default();
        let mut h = RssHistory::new(&cfg, 0.0);
        let a = h.assess(&cfg);
        assert_eq!(
            (a.verdict, a.confidence, a.samples),
            (Verdict::Stable, 0.0, 0)
        );
        for i in 0..100 {
            h.observe(f64::from(i), 1 << 30);
        }
        let a = h.assess(&cfg);
        assert_eq!(
            (a.verdict, a.confidence),
            (Verdict::Stable, 0.0),
            "only 40 s past warm-up"
        );
    }

    #[test]
    fn non_finite_and_backwards_times_are_ignored() {
        let cfg = DetectorConfig {
            warmup_secs: 0.0,
            ..DetectorConfig::default()
        };
        let mut h = RssHistory::new(&cfg, 0.0);
        h.observe(f64::NAN, 1);
        h.observe(f64::INFINITY, 1);
        h.observe(10.0, 1);
        h.observe(5.0, 1);
        assert_eq!(h.len(), 1);
        let weird = DetectorConfig {
            time_scale: f64::NAN,
            segments: 0,
            max_fit_points: 0,
            ..cfg
        };
        let a = h.assess(&weird);
        assert!(a.confidence.is_finite() && a.rate_bytes_per_sec.is_finite());
    }

    #[test]
    fn degenerate_config_does_not_panic() {
        let cfg = DetectorConfig {
            window_secs: f64::NAN,
            min_window_secs: f64::NAN,
            warmup_secs: -1.0,
            growing_rate_bytes_per_sec: f64::NAN,
            leaking_rate_bytes_per_sec: f64::INFINITY,
            min_growth_bytes: f64::NAN,
            min_floor_rise_bytes: f64::NAN,
            min_consistency: f64::NAN,
            floor_drop_tolerance_bytes: f64::NAN,
            segments: 0,
            min_segment_secs: 0.0,
            max_samples: 0,
            max_fit_points: 0,
            time_scale: 0.0,
        };
        let mut h = RssHistory::new(&cfg, f64::NAN);
        for i in 0..2000u32 {
            h.observe(f64::from(i), u64::MAX - u64::from(i));
            let a = h.assess(&cfg);
            assert!((0.0..=1.0).contains(&a.confidence), "{a:?}");
            assert!(a.rate_bytes_per_sec.is_finite() && a.consistency.is_finite());
        }
        assert!(h.len() <= 8);
    }

    #[test]
    fn warmup_growth_then_flat_is_stable() {
        let run = replay(&DetectorConfig::default(), 900, warmup_then_flat);
        assert!(
            verdicts_from(&run, 0.0)
                .iter()
                .all(|v| *v == Verdict::Stable)
        );
        assert!(last(&run).confidence > 0.9);
    }

    /// Fills 50 MiB over 3 min, then holds it. While filling it is
    /// indistinguishable from a 16.7 MiB/min leak, so the contract is: once
    /// the plateau covers at least half of the analysed window (t >= 300 s,
    /// window [60, 300]) it is never `leaking`, and once the plateau has
    /// lasted 7 min (t >= 600 s) it is `stable`.
    #[test]
    fn cache_that_fills_then_plateaus_is_not_a_leak() {
        let run = replay(&DetectorConfig::default(), 1200, cache_plateau);
        assert_never_leaking(&run, 300.0);
        assert!(
            verdicts_from(&run, 600.0)
                .iter()
                .all(|v| *v == Verdict::Stable)
        );
    }

    #[test]
    fn burst_that_recovers_is_not_a_leak() {
        let run = replay(&DetectorConfig::default(), 900, burst);
        assert_never_leaking(&run, 0.0);
        assert!(
            verdicts_from(&run, 330.0)
                .iter()
                .all(|v| *v != Verdict::Leaking)
        );
        assert_eq!(last(&run).verdict, Verdict::Stable);
    }

    #[test]
    fn gc_sawtooth_with_flat_floor_is_not_a_leak() {
        let run = replay(&DetectorConfig::default(), 1200, sawtooth(0.0));
        assert_never_leaking(&run, 0.0);
        assert_eq!(last(&run).verdict, Verdict::Stable);
    }

    /// A GC cycle of 2 min (and 5 min, half the window) with a flat floor.
    /// The first 5-min ramp looks exactly like a leak; once the window holds
    /// a collection (t >= 300 s) it must never be called one again.
    #[test]
    fn slow_gc_cycles_are_not_leaks() {
        let run = replay(&DetectorConfig::default(), 1800, slow_gc(120.0));
        assert_never_leaking(&run, 0.0);
        let run = replay(&DetectorConfig::default(), 1800, slow_gc(300.0));
        assert_never_leaking(&run, 300.0);
    }

    #[test]
    fn gc_sawtooth_with_rising_floor_is_a_leak() {
        let run = replay(&DetectorConfig::default(), 1200, sawtooth(5.0));
        assert_leak_detected(&run, 600.0);
        let rate = last(&run).rate_bytes_per_sec * 60.0 / MIB;
        assert!((rate - 5.0).abs() < 1.0, "rate {rate} MiB/min");
    }

    #[test]
    fn linear_leaks_are_leaking() {
        let cfg = DetectorConfig::default();
        for (mib_per_min, by) in [(1.0, 600.0), (10.0, 180.0), (100.0, 180.0)] {
            let run = replay(&cfg, 1200, linear(mib_per_min));
            assert_leak_detected(&run, by);
            let at = first(&run, Verdict::Leaking).unwrap_or(0.0);
            assert!(
                verdicts_from(&run, at)
                    .iter()
                    .all(|v| *v == Verdict::Leaking),
                "flicker"
            );
            let rate = last(&run).rate_bytes_per_sec * 60.0 / MIB;
            assert!(
                (rate - mib_per_min).abs() < 0.01 * mib_per_min,
                "rate {rate}"
            );
        }
    }

    #[test]
    fn slow_leak_under_noise_is_leaking() {
        let run = replay(&DetectorConfig::default(), 1200, move |t| {
            linear(1.0)(t) + noisy(7)(t) - BASE
        });
        assert_leak_detected(&run, 600.0);
    }

    #[test]
    fn stepped_leak_is_leaking() {
        let run = replay(&DetectorConfig::default(), 1200, stepped);
        assert_leak_detected(&run, 600.0);
    }

    #[test]
    fn noise_around_flat_line_is_stable() {
        for seed in 1..=5 {
            let run = replay(&DetectorConfig::default(), 1200, noisy(seed));
            assert!(
                verdicts_from(&run, 0.0)
                    .iter()
                    .all(|v| *v == Verdict::Stable),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn time_scale_gives_same_verdicts_sixty_times_faster() {
        let real = DetectorConfig::default();
        let fast = DetectorConfig {
            time_scale: 1.0 / 60.0,
            ..DetectorConfig::default()
        };
        for (name, f) in scenarios() {
            let a = replay(&real, 900, &f);
            let b = replay(&fast, 900, &f);
            assert_eq!(verdicts_from(&a, 0.0), verdicts_from(&b, 0.0), "{name}");
            for ((t, x), (_, y)) in a.iter().zip(b.iter()) {
                let (ra, rb) = (x.rate_bytes_per_sec * 60.0, y.rate_bytes_per_sec);
                assert!(
                    (ra - rb).abs() <= 1e-6 * rb.abs().max(1.0),
                    "{name} t={t}: {x:?} {y:?}"
                );
                assert_eq!(x.samples, y.samples, "{name} t={t}");
            }
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let cfg = DetectorConfig::default();
        let unbounded_window = DetectorConfig {
            window_secs: f64::INFINITY,
            ..DetectorConfig::default()
        };
        for c in [&cfg, &unbounded_window] {
            let mut h = RssHistory::new(c, 0.0);
            let mut peak = 0;
            for i in 0..1_000_000u32 {
                h.observe(f64::from(i), u64::from(i) << 16);
                peak = peak.max(h.len());
            }
            assert!(peak <= c.max_samples, "peak {peak}");
            assert_eq!(h.assess(c).verdict, Verdict::Leaking);
        }
    }

    #[test]
    fn downsampled_history_keeps_the_verdict() {
        let cfg = DetectorConfig {
            max_samples: 64,
            ..DetectorConfig::default()
        };
        let run = replay(&cfg, 1200, sawtooth(5.0));
        assert_leak_detected(&run, 600.0);
        let run = replay(&cfg, 1200, sawtooth(0.0));
        assert_never_leaking(&run, 0.0);
    }

    #[test]
    fn reset_restarts_history_and_warmup() {
        let cfg = DetectorConfig::default();
        let mut h = RssHistory::new(&cfg, 0.0);
        for i in 0..600 {
            h.observe(f64::from(i), (BASE + f64::from(i) * MIB) as u64);
        }
        assert_eq!(h.assess(&cfg).verdict, Verdict::Leaking);
        h.reset(600.0);
        assert!(h.is_empty());
        h.observe(630.0, 1);
        assert!(h.is_empty(), "still warming up after exec");
        assert_eq!(h.assess(&cfg).confidence, 0.0);
    }

    #[test]
    fn points_and_floors_are_what_the_verdict_was_judged_on() {
        let cfg = DetectorConfig::default();
        let mut h = RssHistory::new(&cfg, 0.0);
        // Warm-up, then 80 s: too short for a verdict, so no floors yet.
        for i in 0..140u32 {
            h.observe(f64::from(i), linear(10.0)(f64::from(i)) as u64);
        }
        assert_eq!(h.points().len(), 80);
        assert!(h.floors(&cfg).is_empty());
        for i in 140..600u32 {
            h.observe(f64::from(i), linear(10.0)(f64::from(i)) as u64);
        }
        let points: Vec<_> = h.points().collect();
        assert_eq!(points.len(), h.len());
        // 540 samples past warm-up, more than the 256 kept: merged, none lost.
        assert!(points.len() < 540);
        assert_eq!(points.iter().map(|p| p.samples).sum::<u64>(), 540);
        assert_eq!(points[0].min_bytes, linear(10.0)(60.0) as u64);
        assert!(points.windows(2).all(|w| w[0].t < w[1].t));
        let floors = h.floors(&cfg);
        assert_eq!(floors.len(), cfg.segments);
        assert!(
            floors
                .windows(2)
                .all(|w| w[0].bytes < w[1].bytes && w[0].t_end == w[1].t_start)
        );
        assert_eq!(floors[0].t_start, 60.0);
        // The rise between the outer floors is the one the assessment judged.
        let rise = floors[floors.len() - 1].bytes as f64 - floors[0].bytes as f64;
        assert_eq!(rise, h.assess(&cfg).floor_rise_bytes);
    }

    #[test]
    fn time_to_limit_math() {
        assert_eq!(time_to_limit(100, 1100, 10.0), Some(100.0));
        assert_eq!(time_to_limit(2000, 1000, 10.0), Some(0.0));
        assert_eq!(time_to_limit(1000, 1000, 0.0), Some(0.0));
        assert_eq!(time_to_limit(100, 1000, 0.0), None);
        assert_eq!(time_to_limit(100, 1000, -5.0), None);
        assert_eq!(time_to_limit(100, 1000, f64::NAN), None);
        assert_eq!(time_to_limit(100, 1000, f64::INFINITY), None);
        assert_eq!(time_to_limit(100, 0, 10.0), None);
    }

    #[test]
    fn slices_taken_as_runs_match_slices_gathered_apart() {
        let bits = |p: &[Point]| -> Vec<(u64, u64)> {
            p.iter().map(|p| (p.t.to_bits(), p.y.to_bits())).collect()
        };
        // Irregular spacing, merged buckets and a sawtooth: slices of 0 to many buckets.
        let mut buckets = VecDeque::new();
        let mut t = 1000.0;
        for i in 0..700u64 {
            t += 0.3 + (i % 7) as f64 * 0.45;
            let rss = (100 << 20) + (i % 13) * (1 << 18) + i * 4096;
            let mut b = Bucket::new(t, rss);
            if i % 5 == 0 {
                t += 1.7;
                b.absorb(&Bucket::new(t, rss / 2));
            }
            buckets.push_back(b);
        }
        let (t0, span) = (buckets[0].t_first, t - buckets[0].t_first);
        for max_points in [6, 7, 96, 300, 699] {
            assert_eq!(
                bits(&fit_points(&buckets, t0, span, max_points)),
                bits(&fit_points_by_slice(&buckets, t0, span, max_points)),
                "{max_points} points"
            );
        }
        assert_eq!(fit_points(&buckets, t0, span, 96).len(), 96);
    }

    /// `h` assessed through the fit and the floors, as if it were not flat.
    fn assessed_in_full(h: &RssHistory, cfg: &DetectorConfig) -> Assessment {
        let mut full = h.clone();
        full.flat = None;
        full.assess(cfg)
    }

    #[test]
    fn a_flat_history_is_assessed_as_the_full_fit_would() {
        let short = DetectorConfig {
            window_secs: 200.0,
            max_samples: 64,
            ..DetectorConfig::default()
        };
        for cfg in [DetectorConfig::default(), short] {
            let mut h = RssHistory::new(&cfg, 0.0);
            let mut was_flat = 0;
            // Through warm-up, the minimum window, compactions and evictions.
            for i in 0..1500u32 {
                h.observe(f64::from(i) * 0.7, 300 << 20);
                let a = h.assess(&cfg);
                assert_eq!(a, assessed_in_full(&h, &cfg), "sample {i}");
                let walked: u64 = h.buckets.iter().map(|b| b.n).sum();
                assert_eq!(a.samples as u64, walked);
                was_flat += usize::from(h.flat.is_some());
            }
            assert!(was_flat > 1000, "the shortcut was taken ({was_flat})");
            assert_eq!(h.assess(&cfg).verdict, Verdict::Stable);
            // One sample off the value: the full fit from then on, and the same verdicts.
            h.observe(1500.0 * 0.7, (300 << 20) + 4096);
            assert_eq!(h.flat, None);
            for i in 1501..1700u32 {
                h.observe(f64::from(i) * 0.7, 300 << 20);
                assert_eq!(h.flat, None);
                assert_eq!(h.assess(&cfg), assessed_in_full(&h, &cfg));
            }
            h.reset(2000.0);
            assert_eq!((h.flat, h.assess(&cfg).samples), (None, 0));
        }
    }

    #[test]
    fn the_inline_floor_is_libms() {
        let mut xs = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.999_999_999,
            -2.000_000_001,
            4_503_599_627_370_495.5,
            -4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            1e300,
            -1e300,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut v = 0.123_456_789_f64;
        for _ in 0..10_000 {
            v = (v * 7.3 + 0.11) % 1e6;
            xs.extend([v, -v, v / 1e3, -v * 1e9]);
        }
        for x in xs {
            assert_eq!(floor(x).to_bits(), x.floor().to_bits(), "floor({x:e})");
        }
        assert!(floor(f64::NAN).is_nan());
    }

    #[test]
    fn a_flat_series_fits_as_the_pairwise_walk_does() {
        let bits = |f: Fit| (f.slope.to_bits(), f.noise.to_bits());
        let flat = |n: usize, y: f64, dt: f64| -> Vec<Point> {
            (0..n)
                .map(|i| Point {
                    t: 100.0 + i as f64 * dt,
                    y,
                })
                .collect()
        };
        for (n, y, dt) in [
            (6, 10.0 * MIB, 1.0),
            (7, 3.0 * MIB + 4096.0, 0.37),
            (96, 512.0 * MIB, 6.25),
            (8, 0.0, 1.0),
            // Every point at one time: no pair has a slope.
            (6, 5.0 * MIB, 0.0),
        ] {
            let points = flat(n, y, dt);
            assert_eq!(
                bits(theil_sen(&points)),
                bits(theil_sen_pairs(&points)),
                "{n} points at {y}"
            );
        }
        // A step: not flat, so the full walk, which finds the rise.
        let mut points = flat(12, 10.0 * MIB, 1.0);
        for p in &mut points[7..] {
            p.y += MIB;
        }
        let fit = theil_sen(&points);
        assert!(fit.slope > 0.0, "{}", fit.slope);
        assert_eq!(bits(fit), bits(theil_sen_pairs(&points)));
    }

    #[test]
    fn median_handles_even_odd_and_nan() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert!(median(&mut [f64::NAN, 1.0, 2.0]).is_some());
    }

    #[test]
    fn verdict_serializes_lowercase() {
        let json = serde_json::to_string(&[Verdict::Stable, Verdict::Growing, Verdict::Leaking]);
        assert_eq!(
            json.ok().as_deref(),
            Some(r#"["stable","growing","leaking"]"#)
        );
    }

    /// Not an assertion: prints verdict timelines for tuning
    /// (`cargo test -- --ignored --nocapture timeline`).
    #[test]
    #[ignore]
    fn timeline() {
        let cfg = DetectorConfig::default();
        for (name, f) in scenarios() {
            let run = replay(&cfg, 1200, &f);
            let mut prev = None;
            for (t, a) in &run {
                if prev != Some(a.verdict) || *t % 120.0 == 0.0 {
                    println!(
                        "{name:8} t={t:5} {:?} conf={:.2} rate={:.2}MiB/min rise={:.1}MiB cons={:.2}",
                        a.verdict,
                        a.confidence,
                        a.rate_bytes_per_sec * 60.0 / MIB,
                        a.floor_rise_bytes / MIB,
                        a.consistency
                    );
                    prev = Some(a.verdict);
                }
            }
        }
    }
}
