//! The report as a flame graph: folded stacks (the input of every flame graph tool) and an
//! SVG drawn with inferno. Widths are bytes, not samples, so a wide frame holds or added the
//! most memory.

use inferno::flamegraph::{
    self, Options,
    color::{BasicPalette, Palette},
};

use super::report::{Frame, Mode, Report, StackRecord, human_duration};

#[derive(Debug, thiserror::Error)]
pub enum FlameError {
    #[error("drawing the flame graph: {0}")]
    Render(std::io::Error),
}

impl From<std::io::Error> for FlameError {
    fn from(e: std::io::Error) -> Self {
        Self::Render(e)
    }
}

/// One folded line per stack: `[source];root;...;leaf BYTES`. The source comes first so the
/// graph splits page faults, mmap, brk and allocations at its base.
pub fn folded(report: &Report) -> Vec<String> {
    report.stacks.iter().map(folded_line).collect()
}

fn folded_line(stack: &StackRecord) -> String {
    let mut line = format!("[{}]", stack.source.as_str());
    for frame in stack.frames.iter().rev() {
        line.push(';');
        line.push_str(&folded_name(frame));
    }
    line.push(' ');
    line.push_str(&stack.bytes.to_string());
    line
}

/// A frame name that cannot break the folded format: `;` separates frames and a line break
/// ends the stack. C++ and Rust names can hold `;` (`[u8; 8]`).
fn folded_name(frame: &Frame) -> String {
    let mut name = frame.display_name();
    // A Python function is told apart by where it is: `qualname (file:line)`.
    if frame.python
        && let Some(location) = frame.location()
    {
        name = format!("{name} ({location})");
    }
    let name: String = name
        .chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            other => other,
        })
        .collect();
    let name = name.trim();
    if name.is_empty() {
        "[unknown]".to_string()
    } else {
        name.to_string()
    }
}

/// The flame graph as an SVG document. A report with nothing to draw still gives a readable
/// SVG: a single bar saying nothing was found (inferno refuses empty input, and a file that
/// `investigate --out` wrote should open either way). That bar's width of 1 byte is a
/// placeholder, not a measurement.
pub fn svg(report: &Report) -> Result<Vec<u8>, FlameError> {
    let mut lines: Vec<String> = report
        .stacks
        .iter()
        .filter(|stack| stack.bytes > 0)
        .map(folded_line)
        .collect();
    if lines.is_empty() {
        lines.push(format!("[{}] 1", nothing_found(report.mode)));
    }

    let mut options = Options::default();
    options.title = format!(
        "leakscope {}: pid {} ({})",
        report.mode.as_str(),
        report.pid,
        report.comm
    );
    options.subtitle = Some(subtitle(report));
    options.count_name = "bytes".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);

    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}

fn nothing_found(mode: Mode) -> &'static str {
    match mode {
        Mode::Growth => "no memory growth found",
        Mode::Alloc => "no outstanding allocations found",
    }
}

/// What was traced and what the reader should know about completeness, under the title.
fn subtitle(report: &Report) -> String {
    let mut parts = vec![format!("traced {}", human_duration(report.duration))];
    if let Some(period) = report.sample_period {
        parts.push(format!("1 in {period} faults sampled"));
    }
    if let Some(min_age) = report.min_age {
        parts.push(format!(
            "allocations older than {}",
            human_duration(min_age)
        ));
    }
    if report.stacks.iter().all(|stack| stack.bytes == 0) {
        parts.push("nothing to draw".to_string());
    }
    parts.extend(report.notes.iter().cloned());
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::super::report::{Source, test_support::*};
    use super::*;

    const EXE: &str = "/opt/app/bin/server";

    fn growth_report() -> Report {
        let mut report = report(
            Mode::Growth,
            vec![
                record(
                    vec![
                        libc("malloc", 0x7fff_0000_2000),
                        frame("cache_insert", EXE, 0x5555_5555_6000),
                        frame("main", EXE, 0x5555_5555_7000),
                    ],
                    Source::PageFault,
                    4 << 20,
                    64,
                ),
                record(
                    vec![
                        stripped("/opt/app/leak_paths.stripped", 0x5555_5555_5189, 0x1189),
                        frame("main", EXE, 0x5555_5555_7000),
                    ],
                    Source::Mmap,
                    8192,
                    2,
                ),
            ],
        );
        report.rank();
        report
    }

    #[test]
    fn folded_lines_are_root_first_with_bytes() {
        assert_eq!(
            folded(&growth_report()),
            [
                "[page_fault];main;cache_insert;malloc 4194304",
                "[mmap];main;leak_paths.stripped+0x1189 8192",
            ]
        );
    }

    #[test]
    fn python_frames_are_labelled_with_file_and_line() {
        let stack = record(
            vec![
                frame("malloc", EXE, 0x10),
                python("keep_document", "/app/jobs.py", 15, 16),
                python("<module>", "/app/jobs.py", 1, 30),
            ],
            Source::PageFault,
            4096,
            1,
        );
        assert_eq!(
            folded(&report(Mode::Growth, vec![stack])),
            ["[page_fault];<module> (jobs.py:30);keep_document (jobs.py:16);malloc 4096"]
        );
    }

    #[test]
    fn folded_names_cannot_break_the_format() {
        let stack = record(
            vec![
                frame("<[u8; 8] as Debug>::fmt", EXE, 0x10),
                frame("weird\nname\r", EXE, 0x20),
                frame("", EXE, 0x30),
            ],
            Source::Brk,
            12,
            1,
        );
        assert_eq!(
            folded(&report(Mode::Growth, vec![stack])),
            ["[brk];[unknown];weird name;<[u8: 8] as Debug>::fmt 12"]
        );
    }

    #[test]
    fn svg_draws_the_stacks() {
        let svg = String::from_utf8(svg(&growth_report()).unwrap()).unwrap();
        assert!(
            svg.starts_with("<?xml") || svg.contains("<svg"),
            "{svg:.200}"
        );
        assert!(svg.contains("leakscope growth: pid 4242 (leak_paths)"));
        assert!(svg.contains("cache_insert"));
        assert!(svg.contains("leak_paths.stripped+0x1189"));
        assert!(svg.contains("bytes"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn empty_report_still_gives_a_readable_svg() {
        let svg = String::from_utf8(svg(&report(Mode::Alloc, Vec::new())).unwrap()).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("no outstanding allocations found"));
        assert!(svg.contains("nothing to draw"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn zero_byte_stacks_alone_count_as_empty() {
        let stack = record(vec![frame("idle", EXE, 0x10)], Source::PageFault, 0, 3);
        let svg = String::from_utf8(svg(&report(Mode::Growth, vec![stack])).unwrap()).unwrap();
        assert!(svg.contains("no memory growth found"));
        assert!(!svg.contains("idle"));
    }
}
