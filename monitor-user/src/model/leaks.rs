//! Per-process leak tracking: the bounded RSS history behind each verdict, and the limit the
//! growth is heading for.

use log::info;

use crate::{
    model::detector::{Assessment, DetectorConfig, RssHistory, Verdict},
    model::limits::Limit,
};

const MIB: f64 = (1 << 20) as f64;

/// A new verdict is reported (and logged) once it has held for this many consecutive
/// assessments (except a way out of `leaking`, reported at once: an alarm the detector has
/// already cleared must not outlive it)...
const HOLD_ASSESSMENTS: u32 = 3;
/// ... or this long (nominal seconds, stretched by the detector's time scale), whichever
/// comes first: a process on the edge between two verdicts would otherwise log a line at
/// every assessment.
const HOLD_NOMINAL_SECS: f64 = 10.0;

/// A verdict the assessments have reached but that has not held long enough to report.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pending {
    verdict: Verdict,
    assessments: u32,
    since_secs: f64,
}

#[derive(Clone, Debug)]
pub struct LeakState {
    history: RssHistory,
    /// The exec the history belongs to; a new exec starts a new history.
    exec_ns: u64,
    /// The latest assessment; its verdict is the reported one, which changes only once a
    /// new verdict has held (see [`HOLD_ASSESSMENTS`]).
    pub assessment: Assessment,
    pending: Option<Pending>,
    /// Resident bytes at the first sample (pools compare it with the size at exit).
    pub first_sample_bytes: u64,
    pub limit: Option<Limit>,
    pub time_to_limit_secs: Option<f64>,
}

impl LeakState {
    pub fn new(cfg: &DetectorConfig, exec_ns: u64, resident: u64) -> Self {
        let history = RssHistory::new(cfg, secs(exec_ns));
        let assessment = history.assess(cfg);
        Self {
            history,
            exec_ns,
            assessment,
            pending: None,
            first_sample_bytes: resident,
            limit: None,
            time_to_limit_secs: None,
        }
    }

    /// Takes one sample and re-assesses; returns the previous reported verdict when the
    /// reported one changed.
    pub fn observe(
        &mut self,
        cfg: &DetectorConfig,
        exec_ns: u64,
        now_ns: u64,
        resident: u64,
    ) -> Option<Verdict> {
        let before = self.assessment.verdict;
        if exec_ns != self.exec_ns {
            self.history.reset(secs(exec_ns));
            self.exec_ns = exec_ns;
            self.first_sample_bytes = resident;
            // A new program: what the old one was is no verdict to hold on to.
            self.history.observe(secs(now_ns), resident);
            self.assessment = self.history.assess(cfg);
            self.pending = None;
            return (self.assessment.verdict != before).then_some(before);
        }
        let kept = self.history.observe(secs(now_ns), resident);
        // An unchanged history assesses as before, and with no verdict pending nothing can
        // move with time alone: the assessment stands (processes in warm-up take this path).
        if !kept && self.pending.is_none() {
            return None;
        }
        let mut assessment = self.history.assess(cfg);
        let reached = assessment.verdict;
        assessment.verdict = self.hold(cfg, reached, secs(now_ns));
        self.assessment = assessment;
        (self.assessment.verdict != before).then_some(before)
    }

    /// The verdict to report, given the one just reached at `now_secs`.
    fn hold(&mut self, cfg: &DetectorConfig, reached: Verdict, now_secs: f64) -> Verdict {
        let reported = self.assessment.verdict;
        if reached == reported || reported == Verdict::Leaking {
            self.pending = None;
            return reached;
        }
        let p = match self.pending {
            Some(p) if p.verdict == reached => Pending {
                assessments: p.assessments + 1,
                ..p
            },
            _ => Pending {
                verdict: reached,
                assessments: 1,
                since_secs: now_secs,
            },
        };
        let scale = if cfg.time_scale.is_finite() && cfg.time_scale > 0.0 {
            cfg.time_scale
        } else {
            1.0
        };
        if p.assessments >= HOLD_ASSESSMENTS || now_secs - p.since_secs >= HOLD_NOMINAL_SECS * scale
        {
            self.pending = None;
            reached
        } else {
            self.pending = Some(p);
            reported
        }
    }

    /// The history behind the assessment, for the history endpoint (read, never copied).
    pub fn history(&self) -> &RssHistory {
        &self.history
    }

    /// Projects the time to `limit` when the process is growing.
    pub fn set_limit(&mut self, limit: Option<Limit>) {
        self.limit = limit;
        self.time_to_limit_secs = match self.assessment.verdict {
            Verdict::Stable => None,
            Verdict::Growing | Verdict::Leaking => {
                limit.and_then(|l| l.seconds_left(self.assessment.rate_bytes_per_sec))
            }
        };
    }
}

fn secs(boot_ns: u64) -> f64 {
    boot_ns as f64 / 1e9
}

pub fn log_change(pid: u32, comm: &str, before: Verdict, a: &Assessment) {
    info!(
        "pid {pid} ({comm}): {} -> {} (rate {:.2} MiB/min over {:.0} s, floor {:+.1} MiB, \
         consistency {:.2}, confidence {:.2})",
        label(before),
        label(a.verdict),
        a.rate_bytes_per_sec * 60.0 / MIB,
        a.window_secs,
        a.floor_rise_bytes / MIB,
        a.consistency,
        a.confidence
    );
}

pub fn label(v: Verdict) -> &'static str {
    match v {
        Verdict::Stable => "stable",
        Verdict::Growing => "growing",
        Verdict::Leaking => "leaking",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::limits::LimitSource;

    const S: u64 = 1_000_000_000;

    fn fast() -> DetectorConfig {
        DetectorConfig {
            time_scale: 0.05,
            ..DetectorConfig::default()
        }
    }

    #[test]
    fn a_steady_leak_becomes_leaking_once_and_projects_its_limit() {
        let cfg = fast();
        let mut st = LeakState::new(&cfg, 0, 10 << 20);
        let mut changes = Vec::new();
        // 10 MiB/min nominal, sampled every 50 ms = 1 s nominal, for 5 nominal minutes.
        for i in 0..300u64 {
            let now = i * S / 20;
            let rss = (10 << 20) + i * ((10 << 20) / 60);
            if let Some(before) = st.observe(&cfg, 0, now, rss) {
                changes.push((before, st.assessment.verdict));
            }
        }
        assert_eq!(
            st.assessment.verdict,
            Verdict::Leaking,
            "{:?}",
            st.assessment
        );
        assert_eq!(changes.last().map(|c| c.1), Some(Verdict::Leaking));
        st.set_limit(Some(Limit {
            limit_bytes: 1 << 30,
            used_bytes: 500 << 20,
            source: LimitSource::Cgroup,
        }));
        let ttl = st
            .time_to_limit_secs
            .expect("a leaking process has a time to limit");
        // 524 MiB left at 10 MiB/min nominal = 200 MiB/min real: about 157 s.
        assert!((120.0..200.0).contains(&ttl), "{ttl}");
    }

    #[test]
    fn a_verdict_on_the_edge_does_not_flap() {
        let cfg = fast();
        let mut st = LeakState::new(&cfg, 0, 10 << 20);
        let stable = st.assessment.clone();
        let growing = Assessment {
            verdict: Verdict::Growing,
            ..stable.clone()
        };
        let mut now = 0.0;
        let mut step = |st: &mut LeakState, reached: &Assessment| {
            now += 0.05;
            let before = st.assessment.verdict;
            st.assessment.verdict = st.hold(&cfg, reached.verdict, now);
            (st.assessment.verdict != before).then_some(before)
        };
        // Toggling at every assessment: never reported.
        for i in 0..40 {
            let reached = if i % 2 == 0 { &growing } else { &stable };
            assert_eq!(step(&mut st, reached), None, "assessment {i}");
        }
        assert_eq!(st.assessment.verdict, Verdict::Stable);
        // Held: reported at the third assessment, once.
        assert_eq!(step(&mut st, &growing), None);
        assert_eq!(step(&mut st, &growing), None);
        assert_eq!(step(&mut st, &growing), Some(Verdict::Stable));
        assert_eq!(st.assessment.verdict, Verdict::Growing);
        assert_eq!(step(&mut st, &growing), None);
        // A single stable assessment does not take it back.
        assert_eq!(step(&mut st, &stable), None);
        assert_eq!(step(&mut st, &growing), None);
        assert_eq!(st.assessment.verdict, Verdict::Growing);
    }

    #[test]
    fn leaving_leaking_is_reported_at_once_but_entering_it_waits() {
        let cfg = fast();
        let mut st = LeakState::new(&cfg, 0, 10 << 20);
        for (i, now) in [0.05, 0.10].into_iter().enumerate() {
            assert_eq!(st.hold(&cfg, Verdict::Leaking, now), Verdict::Stable, "{i}");
        }
        st.assessment.verdict = st.hold(&cfg, Verdict::Leaking, 0.15);
        assert_eq!(st.assessment.verdict, Verdict::Leaking);
        // The detector no longer calls it a leak: neither does the report, from this
        // assessment on.
        assert_eq!(st.hold(&cfg, Verdict::Growing, 0.20), Verdict::Growing);
    }

    #[test]
    fn a_verdict_held_long_enough_is_reported_however_rare_the_assessments() {
        let cfg = fast();
        let mut st = LeakState::new(&cfg, 0, 10 << 20);
        // 10 nominal seconds at time scale 0.05: half a second.
        assert_eq!(st.hold(&cfg, Verdict::Leaking, 1.0), Verdict::Stable);
        assert_eq!(st.hold(&cfg, Verdict::Leaking, 1.3), Verdict::Stable);
        assert_eq!(st.hold(&cfg, Verdict::Leaking, 1.5), Verdict::Leaking);
    }

    #[test]
    fn exec_starts_a_new_history() {
        let cfg = fast();
        let mut st = LeakState::new(&cfg, 0, 1);
        for i in 0..300u64 {
            st.observe(&cfg, 0, i * S / 20, (1 << 20) * i);
        }
        assert_eq!(st.assessment.verdict, Verdict::Leaking);
        st.observe(&cfg, 15 * S, 15 * S, 5 << 20);
        assert_eq!(st.assessment.verdict, Verdict::Stable, "warm-up after exec");
        assert_eq!(st.first_sample_bytes, 5 << 20);
        st.set_limit(None);
        assert_eq!(st.time_to_limit_secs, None);
    }

    #[test]
    fn an_ignored_sample_keeps_the_assessment_and_a_kept_one_redoes_it() {
        let cfg = fast();
        let mut st = LeakState::new(&cfg, 0, 10 << 20);
        // Warm-up (60 nominal s = 3 s here): samples are ignored, whatever the RSS does.
        for i in 0..50u64 {
            let rss = (10 << 20) + i * (1 << 20);
            assert_eq!(st.observe(&cfg, 0, i * S / 20, rss), None);
            assert_eq!(
                st.assessment,
                st.history().assess(&cfg),
                "warm-up sample {i}"
            );
            assert_eq!(st.assessment.samples, 0);
        }
        // Past it, a flat RSS is still sampled each time: the window and count move on.
        let mut last_samples = 0;
        for i in 60..160u64 {
            st.observe(&cfg, 0, i * S / 20, 10 << 20);
            assert!(st.assessment.samples > last_samples, "sample {i} was kept");
            last_samples = st.assessment.samples;
            assert_eq!(st.assessment, st.history().assess(&cfg));
            assert_eq!(st.assessment.verdict, Verdict::Stable);
        }
        assert!(st.assessment.window_secs > 0.0);
    }

    #[test]
    fn a_pending_verdict_is_still_reported_when_samples_are_ignored() {
        let cfg = fast();
        let mut st = LeakState::new(&cfg, 0, 10 << 20);
        let mut last_ns = 0;
        for i in 0..600u64 {
            last_ns = i * S / 20;
            st.observe(&cfg, 0, last_ns, (10 << 20) + i * ((10 << 20) / 60));
            if st.pending.is_some() {
                break;
            }
        }
        let waiting = st
            .pending
            .expect("a steady leak reaches a new verdict")
            .verdict;
        assert_ne!(st.assessment.verdict, waiting);
        // Samples from before the last one are ignored by the history, but each is still an
        // assessment that counts towards holding the new verdict.
        let mut reported = None;
        for k in 1..HOLD_ASSESSMENTS {
            if let Some(before) = st.observe(&cfg, 0, last_ns - u64::from(k), 10 << 20) {
                reported = Some((before, st.assessment.verdict));
            }
        }
        assert_eq!(reported.map(|r| r.1), Some(waiting));
        assert!(st.pending.is_none());
    }
}
