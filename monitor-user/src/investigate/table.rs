//! The ranked table `leakscope investigate` prints: what an on-call engineer reads first, so
//! the function to look at comes first in every row and each row fits one terminal line.

use std::fmt::Write as _;

use bytesize::ByteSize;

use super::report::{Mode, Report, StackRecord, TRUNCATED_FRAME, human_duration};

/// Longest function name shown in the FUNCTION column before it is shortened.
const FUNCTION_WIDTH: usize = 40;
/// Longest frame name in CALL PATH: enough for a qualified name, short of a C++ signature.
const PATH_FRAME_WIDTH: usize = 48;
/// Frames in CALL PATH, starting at the headline and going towards `main`.
const PATH_FRAMES: usize = 4;
const PATH_SEPARATOR: &str = " ← ";
const HEADERS: [&str; 8] = [
    "#",
    "FUNCTION",
    "BYTES",
    "COUNT",
    "AGE",
    "SOURCE",
    "TASK",
    "CALL PATH",
];
/// Longest task name shown.
const TASK_WIDTH: usize = 32;
/// Numbers line up on the right; names on the left.
const RIGHT_ALIGNED: [bool; 8] = [true, false, true, true, true, false, false, false];

/// The report as text: a header line, the `top` largest stacks (all of them when `top` is 0),
/// then the notes. Columns are aligned by character count, so names with double-width
/// characters may shift the columns after them, but never break the output.
pub fn render(report: &Report, top: usize) -> String {
    let mut out = String::new();
    out.push_str(&header_line(report));
    out.push('\n');

    if report.stacks.is_empty() {
        out.push_str(&nothing_found(report));
        out.push('\n');
    } else {
        let shown = if top == 0 {
            report.stacks.len()
        } else {
            top.min(report.stacks.len())
        };
        let rows: Vec<[String; 8]> = report.stacks[..shown]
            .iter()
            .enumerate()
            .map(|(index, stack)| row(index + 1, stack))
            .collect();
        out.push_str(&aligned(&rows));
        let hidden = &report.stacks[shown..];
        if !hidden.is_empty() {
            let hidden_bytes = hidden
                .iter()
                .fold(0u64, |total, stack| total.saturating_add(stack.bytes));
            let _ = writeln!(
                out,
                "… {} more stacks with {} not shown",
                hidden.len(),
                human_bytes(hidden_bytes)
            );
        }
    }

    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn header_line(report: &Report) -> String {
    let mut line = format!(
        "pid {} ({})  mode {}  traced {}",
        report.pid,
        report.comm,
        report.mode.as_str(),
        human_duration(report.duration)
    );
    match report.mode {
        Mode::Growth => {
            if let Some(period) = report.sample_period {
                let _ = write!(line, "  sample period 1/{period} faults");
            }
        }
        Mode::Alloc => {
            if let Some(min_age) = report.min_age {
                let _ = write!(line, "  min age {}", human_duration(min_age));
            }
        }
    }
    let _ = write!(
        line,
        "  total {} in {} stacks",
        human_bytes(report.total_bytes()),
        report.stacks.len()
    );
    line
}

/// Says what was looked for, so "nothing" is not mistaken for "the tool did not work".
fn nothing_found(report: &Report) -> String {
    let traced = human_duration(report.duration);
    match report.mode {
        Mode::Growth => format!("no memory growth found in {traced} of tracing"),
        Mode::Alloc => match report.min_age {
            Some(min_age) => format!(
                "no outstanding allocations older than {} found in {traced} of tracing",
                human_duration(min_age)
            ),
            None => format!("no outstanding allocations found in {traced} of tracing"),
        },
    }
}

fn row(rank: usize, stack: &StackRecord) -> [String; 8] {
    let headline = stack.headline();
    [
        rank.to_string(),
        shorten(&headline.display_name(), FUNCTION_WIDTH),
        human_bytes(stack.bytes),
        stack.count.to_string(),
        stack
            .oldest_age
            .map_or_else(|| "-".to_string(), human_duration),
        stack.source.as_str().to_string(),
        stack
            .task
            .as_deref()
            .map_or_else(|| "-".to_string(), |t| shorten(t, TASK_WIDTH)),
        call_path(stack),
    ]
}

/// The headline and its callers, innermost first, so the row reads "this, called from that".
fn call_path(stack: &StackRecord) -> String {
    let Some(start) = stack.headline_index() else {
        return stack.headline().display_name();
    };
    let callers = &stack.frames[start..];
    let mut path = callers
        .iter()
        .take(PATH_FRAMES)
        .map(|frame| shorten(&frame.display_name(), PATH_FRAME_WIDTH))
        .collect::<Vec<_>>()
        .join(PATH_SEPARATOR);
    if callers.len() > PATH_FRAMES {
        path.push_str(PATH_SEPARATOR);
        path.push('…');
        // A stack that stops short says so even when its end is not shown.
        if stack.truncated {
            path.push_str(PATH_SEPARATOR);
            path.push_str(TRUNCATED_FRAME);
        }
    }
    if let Some(location) = stack.headline().location() {
        let _ = write!(path, " ({location})");
    }
    path
}

fn aligned(rows: &[[String; 8]]) -> String {
    let mut widths = HEADERS.map(|header| header.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(str::to_string);
    for cells in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            let width = widths[column];
            let last = column + 1 == cells.len();
            // `{:<w$}` pads by char count, which is what `widths` measured.
            if RIGHT_ALIGNED[column] {
                let _ = write!(line, "{cell:>width$}");
            } else if last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Fits a function name into `max` characters. The innermost name says which function it is
/// (`…::Cache::insert`), so a C++ parameter list goes first, then the start of the qualified
/// name, marked with `…`. Cuts between chars, never inside one.
fn shorten(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_string();
    }
    let name = without_parameters(name);
    let length = name.chars().count();
    if length <= max {
        return name.to_string();
    }
    let mut cut = String::from("…");
    cut.extend(name.chars().skip(length + 1 - max.max(1)));
    cut
}

/// `ns::f(int, char const*) const` → `ns::f`: the parameter list of a demangled C++ name,
/// found by matching the last `)` back to its `(`.
fn without_parameters(name: &str) -> &str {
    let trimmed = name.trim_end();
    let trimmed = trimmed.strip_suffix(" const").unwrap_or(trimmed);
    if !trimmed.ends_with(')') {
        return name;
    }
    let mut depth = 0usize;
    for (index, c) in trimmed.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return if index == 0 { name } else { &trimmed[..index] };
                }
            }
            _ => {}
        }
    }
    name
}

pub fn human_bytes(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::report::{Source, test_support::*};
    use super::*;

    const EXE: &str = "/opt/app/bin/server";

    fn growth_report() -> Report {
        let mut report = report(
            Mode::Growth,
            vec![
                record(
                    vec![
                        frame("small_leak", EXE, 0x5555_5555_5000),
                        frame("main", EXE, 0x5555_5555_7000),
                    ],
                    Source::Mmap,
                    64 * 1024,
                    2,
                ),
                record(
                    vec![
                        libc("malloc", 0x7fff_0000_2000),
                        frame_at("cache_insert", EXE, 0x5555_5555_6000, "/src/cache.c", 42),
                        frame("handle_request", EXE, 0x5555_5555_6100),
                        frame("worker_loop", EXE, 0x5555_5555_6200),
                        frame("start_thread", EXE, 0x5555_5555_6300),
                        frame("clone3", EXE, 0x5555_5555_6400),
                    ],
                    Source::PageFault,
                    4 * 1024 * 1024,
                    64,
                ),
            ],
        );
        report.rank();
        report
    }

    fn row_of<'a>(text: &'a str, function: &str) -> &'a str {
        text.lines()
            .find(|line| line.contains(function))
            .unwrap_or_else(|| panic!("no row for {function} in\n{text}"))
    }

    #[test]
    fn header_line_describes_the_run() {
        let text = render(&growth_report(), 10);
        let header = text.lines().next().unwrap();
        assert!(header.contains("pid 4242 (leak_paths)"), "{header}");
        assert!(header.contains("mode growth"), "{header}");
        assert!(header.contains("traced 30s"), "{header}");
        assert!(header.contains("sample period 1/16"), "{header}");
        assert!(header.contains("total 4.1 MiB in 2 stacks"), "{header}");
    }

    #[test]
    fn rows_are_ranked_with_headline_function_first() {
        let text = render(&growth_report(), 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].trim_start().starts_with("#  FUNCTION"), "{text}");
        let first = lines[2].split_whitespace().collect::<Vec<_>>();
        assert_eq!(
            &first[..5],
            ["1", "cache_insert", "4.0", "MiB", "64"],
            "{text}"
        );
        assert!(lines[3].contains("small_leak"), "{text}");
        assert!(lines[3].trim_start().starts_with("2  small_leak"), "{text}");
    }

    #[test]
    fn a_truncated_stack_says_so_past_the_frames_shown() {
        let mut report = growth_report();
        let stack = report
            .stacks
            .iter_mut()
            .find(|s| s.headline().function.as_deref() == Some("cache_insert"))
            .unwrap();
        stack.truncated = true;
        let mut end = stack.frames.last().unwrap().clone();
        end.function = Some(TRUNCATED_FRAME.to_owned());
        stack.frames.push(end);
        let text = render(&report, 10);
        let row = row_of(&text, "cache_insert");
        assert!(
            row.contains("start_thread ← … ← [truncated] (cache.c:42)"),
            "{row}"
        );
    }

    #[test]
    fn call_path_starts_at_headline_and_shows_location() {
        let text = render(&growth_report(), 10);
        let row = row_of(&text, "cache_insert");
        assert!(
            row.ends_with(
                "cache_insert ← handle_request ← worker_loop ← start_thread ← … (cache.c:42)"
            ),
            "{row}"
        );
        assert!(!row.contains("malloc"), "{row}");
        assert!(row.contains("page_fault"), "{row}");
        assert!(
            row.contains(" - "),
            "age column shows '-' without an age: {row}"
        );
    }

    #[test]
    fn top_limits_rows_and_reports_the_rest() {
        let text = render(&growth_report(), 1);
        assert!(text.contains("cache_insert"), "{text}");
        assert!(!text.contains("small_leak"), "{text}");
        assert!(
            text.contains("… 1 more stacks with 64.0 KiB not shown"),
            "{text}"
        );
    }

    #[test]
    fn notes_are_printed_after_the_table() {
        let mut report = growth_report();
        report.notes = vec!["12 samples lost".to_string(), "stack map full".to_string()];
        let text = render(&report, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[lines.len() - 2..],
            ["note: 12 samples lost", "note: stack map full"]
        );
    }

    #[test]
    fn empty_reports_say_what_was_not_found() {
        let mut growth = report(Mode::Growth, Vec::new());
        growth.notes.push("probes off".to_string());
        let text = render(&growth, 10);
        assert!(
            text.contains("no memory growth found in 30s of tracing"),
            "{text}"
        );
        assert!(text.contains("note: probes off"), "{text}");
        assert!(!text.contains("FUNCTION"), "{text}");

        let text = render(&report(Mode::Alloc, Vec::new()), 10);
        assert!(text.contains("mode alloc"), "{text}");
        assert!(text.contains("min age 10s"), "{text}");
        assert!(
            text.contains("no outstanding allocations older than 10s found"),
            "{text}"
        );
    }

    #[test]
    fn age_column_is_humanised() {
        let mut stack = record(vec![frame("keep", EXE, 0x10)], Source::Alloc, 100, 1);
        stack.oldest_age = Some(Duration::from_secs(312));
        let text = render(&report(Mode::Alloc, vec![stack]), 10);
        assert!(row_of(&text, "keep").contains("5m12s"), "{text}");
    }

    #[test]
    fn long_and_multibyte_names_are_cut_and_stay_aligned() {
        let long_utf8 = "ñ".repeat(30) + &"日本語".repeat(20);
        let stripped_frame = stripped("/opt/app/leak_paths.stripped", 0x5555_5555_5189, 0x1189);
        let mut report = report(
            Mode::Alloc,
            vec![
                record(vec![frame(&long_utf8, EXE, 0x10)], Source::Alloc, 2048, 3),
                record(vec![stripped_frame], Source::Alloc, 1024, 1),
            ],
        );
        report.rank();
        let text = render(&report, 10);
        let lines: Vec<&str> = text.lines().collect();
        let long_row = lines[2];
        let kept: String = long_utf8.chars().skip(90 - (FUNCTION_WIDTH - 1)).collect();
        assert!(long_row.contains(&format!("…{kept}  ")), "{text}");
        // BYTES is right-aligned, so its last character sits at the same column in every row.
        let bytes_end = |line: &str| {
            let chars: Vec<char> = line.chars().collect();
            let header_end = lines[1].find("BYTES").unwrap() + "BYTES".len();
            chars[..header_end].iter().collect::<String>()
        };
        assert!(bytes_end(long_row).ends_with("2.0 KiB"), "{text}");
        assert!(bytes_end(lines[3]).ends_with("1.0 KiB"), "{text}");
        assert!(lines[3].contains("leak_paths.stripped+0x1189"), "{text}");
    }

    #[test]
    fn shorten_keeps_the_innermost_name_and_whole_chars() {
        assert_eq!(shorten("日本語", 2), "…語");
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("app::cache::Lru::insert", 12), "…Lru::insert");
        assert_eq!(
            shorten("std::vector<int>::push_back(int const&)", 30),
            "std::vector<int>::push_back"
        );
        assert_eq!(
            shorten("ns::Functor::operator()(int) const", 25),
            "ns::Functor::operator()"
        );
        assert_eq!(shorten("((((", 3), "…((");
    }
}
