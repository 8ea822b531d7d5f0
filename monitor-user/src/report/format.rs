//! Text for people: escaped strings, bytes in binary units, rates, durations and clock times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;

/// `s` as HTML text or attribute value: every string from the agent passes through here, so a
/// process or task named `<script>` shows as its name and never becomes markup.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business in a name; show that one was there.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

pub fn bytes(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

/// Signed bytes (retained memory can be negative).
pub fn signed_bytes(n: i64) -> String {
    if n < 0 {
        format!("−{}", bytes(n.unsigned_abs()))
    } else {
        bytes(n as u64)
    }
}

/// A growth rate in the unit a person thinks in: per minute, or per hour when slow.
pub fn rate(bytes_per_sec: f64) -> String {
    if !bytes_per_sec.is_finite() {
        return "unknown".into();
    }
    let sign = if bytes_per_sec < 0.0 { "−" } else { "+" };
    let per_min = bytes_per_sec.abs() * 60.0;
    if per_min >= 1024.0 * 1024.0 || per_min == 0.0 {
        format!("{sign}{}/min", bytes(per_min.round() as u64))
    } else {
        format!("{sign}{}/h", bytes((per_min * 60.0).round() as u64))
    }
}

/// `2h05m`, `3m07s`: the same form `investigate` prints.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "unknown".into();
    }
    crate::investigate::report::human_duration(Duration::from_secs_f64(secs))
}

/// `2026-11-26 09:57:18 UTC`.
pub fn timestamp(unix_secs: f64) -> String {
    if !unix_secs.is_finite() || unix_secs < 0.0 {
        return "unknown time".into();
    }
    let t = UNIX_EPOCH + Duration::from_secs(unix_secs as u64);
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-11-26T09:57:18Z
    format!("{} {} UTC", &rfc[..10], &rfc[11..19])
}

/// `09:57` or `09:57:18` (UTC) for a chart's time axis.
pub fn clock(unix_secs: f64, with_seconds: bool) -> String {
    let day = unix_secs.rem_euclid(86_400.0).round() as u64 % 86_400;
    let (h, m, s) = (day / 3600, day / 60 % 60, day % 60);
    if with_seconds {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}")
    }
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.0}%", fraction * 100.0)
    } else {
        "unknown".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_a_name_becomes_text() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("celery\u{1b}[31m"), "celery\u{fffd}[31m");
        assert_eq!(escape("plain-name_1.2"), "plain-name_1.2");
    }

    #[test]
    fn sizes_and_rates_use_binary_units_and_a_human_period() {
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(signed_bytes(-(2 << 20)), "−2.0 MiB");
        // 10 MiB per minute.
        assert_eq!(rate((10 << 20) as f64 / 60.0), "+10.0 MiB/min");
        // 6 MiB per hour is too slow for per-minute figures.
        assert_eq!(rate((6 << 20) as f64 / 3600.0), "+6.0 MiB/h");
        assert_eq!(rate(-((2 << 20) as f64) / 60.0), "−2.0 MiB/min");
        assert_eq!(rate(f64::NAN), "unknown");
    }

    #[test]
    fn times_read_as_utc_clock_and_durations() {
        // 2023-11-14 22:13:20 UTC.
        let t = 1_700_000_000.0;
        assert_eq!(timestamp(t), "2023-11-14 22:13:20 UTC");
        assert_eq!(clock(t, false), "22:13");
        assert_eq!(clock(t + 5.0, true), "22:13:25");
        assert_eq!(duration(3.0 * 3600.0 + 300.0), "3h05m");
        assert_eq!(duration(f64::NAN), "unknown");
        assert_eq!(percent(0.934), "93%");
    }
}
