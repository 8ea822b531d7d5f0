//! Charts as inline SVG, drawn here rather than by a charting library: a report must open
//! with no script and no network, and two axes a person can read are all it needs. The y axis
//! is always bytes, in one binary unit per chart (`120 MiB`); the x axis is UTC clock time.

use std::fmt::Write as _;

use super::format::{clock, escape};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 250.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 36.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 44.0;

/// A level above the data by more than this factor is named in the legend, not drawn: it
/// would flatten the growth the chart is there to show.
const LEVEL_REACH: f64 = 2.0;

/// A line through time: `(unix seconds, bytes)`, oldest first.
pub struct Line {
    pub label: String,
    /// A CSS class of the page's style (`rss`, `floor`).
    pub class: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// One event in time, such as a worker's exit.
pub struct Marker {
    pub at: f64,
    pub bytes: f64,
    pub class: &'static str,
    /// Shown on hover.
    pub title: String,
}

/// A horizontal line, such as a memory limit.
pub struct Level {
    pub label: String,
    pub class: &'static str,
    pub bytes: f64,
}

pub struct TimeChart {
    /// What the chart shows, for its accessible name.
    pub title: String,
    pub y_title: String,
    pub lines: Vec<Line>,
    pub markers: Vec<Marker>,
    pub levels: Vec<Level>,
}

/// Ticks of one axis, in the axis's own unit.
#[derive(Debug, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
    pub ticks: Vec<f64>,
}

/// A binary unit for a byte axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteUnit {
    pub name: &'static str,
    pub size: f64,
}

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// The largest unit the top of the axis reaches, so its labels have few digits.
pub fn byte_unit(max_bytes: f64) -> ByteUnit {
    let mut k = 0;
    while k + 1 < UNITS.len() && max_bytes >= 1024f64.powi(k as i32 + 1) {
        k += 1;
    }
    ByteUnit {
        name: UNITS[k],
        size: 1024f64.powi(k as i32),
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * magnitude >= raw * (1.0 - 1e-9) {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

/// About five ticks on whole steps covering `lo..=hi` (in the unit's numbers), never below 0.
pub fn value_axis(lo: f64, hi: f64) -> Axis {
    let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
    if hi - lo <= hi.abs() * 1e-6 {
        // A flat line: give it room rather than a zero-height axis.
        let pad = (hi.abs() * 0.1).max(1.0);
        lo -= pad;
        hi += pad;
    }
    let step = nice_step((hi - lo) / 5.0);
    let lo = ((lo / step).floor() * step).max(0.0);
    let hi = (hi / step).ceil() * step;
    let n = ((hi - lo) / step).round() as usize;
    let ticks = (0..=n).map(|i| lo + i as f64 * step).collect();
    Axis {
        lo,
        hi,
        step,
        ticks,
    }
}

/// Steps a clock axis may take, in seconds.
const TIME_STEPS: [f64; 18] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    10800.0, 21600.0, 43200.0, 86400.0,
];

/// At most six ticks on whole clock steps (every 5 minutes, every hour …) within `lo..=hi`.
pub fn time_axis(lo: f64, hi: f64) -> Axis {
    let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
    if hi - lo < 1.0 {
        lo -= 30.0;
        hi += 30.0;
    }
    let span = hi - lo;
    let step = TIME_STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 6.0)
        .unwrap_or_else(|| (span / 6.0 / 86400.0).ceil() * 86400.0);
    let first = (lo / step).ceil() * step;
    let ticks = (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|t| *t <= hi + 1e-6)
        .collect();
    Axis {
        lo,
        hi,
        step,
        ticks,
    }
}

/// `120 MiB`, `1.5 GiB`: as many decimals as the step needs.
pub fn byte_tick(value: f64, step: f64, unit: ByteUnit) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$} {}", unit.name)
}

impl TimeChart {
    /// The chart as an SVG element, or None when there is nothing to draw.
    pub fn svg(&self) -> Option<String> {
        let xs = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .chain(self.markers.iter().map(|m| m.at))
            .filter(|x| x.is_finite());
        let ys = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(self.markers.iter().map(|m| m.bytes));
        let (mut x_lo, mut x_hi) = bounds(xs)?;
        if !self.markers.is_empty() {
            // A dot on the frame would be cut in half.
            let pad = ((x_hi - x_lo) * 0.04).max(1.0);
            x_lo -= pad;
            x_hi += pad;
        }
        let (y_lo, y_hi) = bounds(ys)?;
        let drawn_levels: Vec<&Level> = self
            .levels
            .iter()
            .filter(|l| l.bytes <= y_hi * LEVEL_REACH)
            .collect();
        let y_hi = drawn_levels.iter().map(|l| l.bytes).fold(y_hi, f64::max);
        let unit = byte_unit(y_hi);
        let y = value_axis(y_lo / unit.size, y_hi / unit.size);
        let x = time_axis(x_lo, x_hi);

        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let px = |t: f64| LEFT + (t - x.lo) / (x.hi - x.lo) * plot_w;
        let py = |b: f64| TOP + plot_h - (b / unit.size - y.lo) / (y.hi - y.lo) * plot_h;

        let mut s = String::new();
        let title = escape(&self.title);
        let _ = write!(
            s,
            r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{title}"><title>{title}</title>"#
        );
        for v in &y.ticks {
            let yy = TOP + plot_h - (v - y.lo) / (y.hi - y.lo) * plot_h;
            let _ = write!(
                s,
                r#"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick y-tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT + plot_w,
                LEFT - 6.0,
                yy + 4.0,
                byte_tick(*v, y.step, unit)
            );
        }
        let with_seconds = x.step < 60.0;
        for t in &x.ticks {
            let xx = px(*t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{:.1}"/><text class="tick x-tick" x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + plot_h,
                TOP + plot_h + 16.0,
                clock(*t, with_seconds)
            );
        }
        let _ = write!(
            s,
            r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}"/><text class="axis-title" x="{:.1}" y="{:.1}" text-anchor="middle">time (UTC)</text><text class="axis-title" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{} ({})</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 6.0,
            TOP + plot_h / 2.0,
            escape(&self.y_title),
            unit.name
        );
        for level in &drawn_levels {
            let yy = py(level.bytes);
            let _ = write!(
                s,
                r#"<line class="level {}" x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}"><title>{}</title></line>"#,
                level.class,
                LEFT + plot_w,
                escape(&level.label)
            );
        }
        for line in &self.lines {
            let points: Vec<String> = line
                .points
                .iter()
                .filter(|(t, b)| t.is_finite() && b.is_finite())
                .map(|(t, b)| format!("{:.1},{:.1}", px(*t), py(*b)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline class="series {}" points="{}"><title>{}</title></polyline>"#,
                line.class,
                points.join(" "),
                escape(&line.label)
            );
        }
        for m in self.markers.iter().filter(|m| m.at.is_finite()) {
            let _ = write!(
                s,
                r#"<circle class="marker {}" cx="{:.1}" cy="{:.1}" r="4"><title>{}</title></circle>"#,
                m.class,
                px(m.at),
                py(m.bytes),
                escape(&m.title)
            );
        }
        s.push_str("</svg>");
        Some(s)
    }

    /// The chart with its legend; a level left out of the drawing is named there.
    pub fn figure(&self) -> Option<String> {
        let svg = self.svg()?;
        let top = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(self.markers.iter().map(|m| m.bytes))
            .fold(0.0, f64::max);
        let mut legend = String::new();
        for line in &self.lines {
            let _ = write!(
                legend,
                r#"<span class="key {}">{}</span>"#,
                line.class,
                escape(&line.label)
            );
        }
        for level in &self.levels {
            let off = if level.bytes > top * LEVEL_REACH {
                " (above the chart)"
            } else {
                ""
            };
            let _ = write!(
                legend,
                r#"<span class="key {}">{}{off}</span>"#,
                level.class,
                escape(&level.label)
            );
        }
        Some(format!(
            r#"<figure>{svg}<figcaption class="legend">{legend}</figcaption></figure>"#
        ))
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.031), 0.05);
        assert_eq!(nice_step(240.0), 500.0);
    }

    #[test]
    fn a_byte_axis_takes_the_unit_its_top_reaches_and_whole_ticks() {
        assert_eq!(byte_unit(800.0).name, "B");
        assert_eq!(byte_unit(300.0 * MIB).name, "MiB");
        assert_eq!(byte_unit(1.2 * 1024.0 * MIB).name, "GiB");
        // 100 to 340 MiB: ticks every 50 MiB from 100 to 350.
        let axis = value_axis(100.0, 340.0);
        assert_eq!(axis.step, 50.0);
        assert_eq!(axis.ticks, [100.0, 150.0, 200.0, 250.0, 300.0, 350.0]);
        let unit = byte_unit(340.0 * MIB);
        assert_eq!(byte_tick(150.0, axis.step, unit), "150 MiB");
        let gib = byte_unit(1.5 * 1024.0 * MIB);
        assert_eq!(byte_tick(1.5, 0.5, gib), "1.5 GiB");
        // A flat line still gets an axis around it, not below zero.
        let flat = value_axis(0.0, 0.0);
        assert!(
            flat.lo == 0.0 && flat.hi > 0.0 && flat.ticks.len() >= 2,
            "{flat:?}"
        );
    }

    #[test]
    fn a_time_axis_ticks_on_whole_clock_steps() {
        // 2023-11-14 22:13:20 UTC plus ten minutes: a tick every two minutes on the minute.
        let t0 = 1_700_000_000.0;
        let axis = time_axis(t0, t0 + 600.0);
        assert_eq!(axis.step, 120.0);
        let labels: Vec<String> = axis.ticks.iter().map(|t| clock(*t, false)).collect();
        assert_eq!(labels, ["22:14", "22:16", "22:18", "22:20", "22:22"]);
        // Forty seconds: every ten seconds, with seconds shown.
        let short = time_axis(t0, t0 + 40.0);
        assert_eq!(short.step, 10.0);
        assert_eq!(clock(short.ticks[0], true), "22:13:20");
    }

    fn rising(n: usize) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (1_700_000_000.0 + i as f64 * 10.0, (100.0 + i as f64) * MIB))
            .collect()
    }

    #[test]
    fn a_chart_has_labelled_axes_in_units_and_its_lines() {
        let chart = TimeChart {
            title: "RSS of pid 7 <x>".into(),
            y_title: "resident memory".into(),
            lines: vec![Line {
                label: "resident".into(),
                class: "rss",
                points: rising(60),
            }],
            markers: Vec::new(),
            levels: vec![Level {
                label: "limit 8 GiB".into(),
                class: "limit",
                bytes: 8.0 * 1024.0 * MIB,
            }],
        };
        let svg = chart.svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("RSS of pid 7 &lt;x&gt;"), "{svg}");
        assert!(svg.contains(">100 MiB</text>"), "{svg}");
        assert!(svg.contains(">160 MiB</text>"), "{svg}");
        assert!(svg.contains("resident memory (MiB)"), "{svg}");
        assert!(svg.contains("time (UTC)"));
        assert!(svg.contains(">22:14</text>"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 1);
        // The 8 GiB limit is far above 160 MiB: named in the legend, not drawn.
        assert!(!svg.contains("class=\"level"), "{svg}");
        let figure = chart.figure().unwrap();
        assert!(figure.contains("limit 8 GiB (above the chart)"), "{figure}");
    }

    #[test]
    fn a_near_level_is_drawn_and_widens_the_axis() {
        let chart = TimeChart {
            title: "t".into(),
            y_title: "resident memory".into(),
            lines: vec![Line {
                label: "resident".into(),
                class: "rss",
                points: rising(60),
            }],
            markers: vec![Marker {
                at: 1_700_000_100.0,
                bytes: 120.0 * MIB,
                class: "memory",
                title: "pid 9".into(),
            }],
            levels: vec![Level {
                label: "limit".into(),
                class: "limit",
                bytes: 256.0 * MIB,
            }],
        };
        let svg = chart.svg().unwrap();
        assert!(svg.contains("class=\"level limit\""), "{svg}");
        assert!(svg.contains(">250 MiB</text>"), "{svg}");
        assert!(svg.contains("<circle class=\"marker memory\""), "{svg}");
    }

    #[test]
    fn nothing_to_draw_is_no_chart() {
        let chart = TimeChart {
            title: "t".into(),
            y_title: "y".into(),
            lines: vec![Line {
                label: "resident".into(),
                class: "rss",
                points: Vec::new(),
            }],
            markers: Vec::new(),
            levels: Vec::new(),
        };
        assert!(chart.svg().is_none());
        assert!(chart.figure().is_none());
    }
}
