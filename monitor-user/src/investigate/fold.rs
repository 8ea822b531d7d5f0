//! `--fold user-entry`: one row per place where the user's code was entered, so that a
//! worker's memory is attributed per task function without task markers. The user entry of
//! a Python stack is the outermost frame of the user's code that library code (a framework
//! in site-packages, or the standard library) called: Celery's, RQ's or Dramatiq's call into
//! the task function. A stack with no library frame above the user's code (a plain script)
//! enters it at its outermost user frame.

use std::collections::HashMap;

use super::report::{Frame, Report, StackRecord};

/// How rows are folded (`--fold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// By the user entry frame (see the module).
    UserEntry,
}

impl Fold {
    pub fn as_str(self) -> &'static str {
        match self {
            Fold::UserEntry => "user-entry",
        }
    }
}

/// Python code that is not the user's: the standard library, frozen modules and installed
/// packages.
fn is_library_python(frame: &Frame) -> bool {
    let installed = frame
        .file
        .as_deref()
        .is_some_and(|f| f.contains("/site-packages/") || f.contains("/dist-packages/"));
    frame.python && (installed || !frame.is_user_python())
}

fn is_user_code(frame: &Frame) -> bool {
    frame.is_user_python() && !is_library_python(frame)
}

/// Index (in `frames`, leaf first) of the stack's user entry frame; None without user
/// Python code.
pub fn user_entry(frames: &[Frame]) -> Option<usize> {
    let mut below_library = None;
    let mut outermost_user = None;
    let mut library_above = false;
    for (i, frame) in frames.iter().enumerate().rev() {
        if is_library_python(frame) {
            library_above = true;
        } else if is_user_code(frame) {
            outermost_user.get_or_insert(i);
            if library_above {
                below_library = Some(i);
                break;
            }
        }
    }
    below_library.or(outermost_user)
}

/// Folds `report`'s rows: rows with the same source, task and user entry function become
/// one, whose frames are the entry frame and its callers (of the row holding the most
/// bytes). Rows without user Python code stay as they are.
pub fn fold(report: &mut Report, how: Fold) {
    let Fold::UserEntry = how;
    report.rank();
    let before = report.stacks.len();
    let mut rows: Vec<StackRecord> = Vec::with_capacity(before);
    // Source, task, and the entry frame: function, file, first line.
    type Key = (
        &'static str,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<u32>,
    );
    let mut index: HashMap<Key, usize> = HashMap::new();
    for mut record in std::mem::take(&mut report.stacks) {
        let Some(entry) = user_entry(&record.frames) else {
            rows.push(record);
            continue;
        };
        let f = &record.frames[entry];
        let key = (
            record.source.as_str(),
            record.task.clone(),
            f.function.clone(),
            f.file.clone(),
            f.start_line,
        );
        match index.get(&key) {
            Some(&at) => {
                let row = &mut rows[at];
                row.bytes = row.bytes.saturating_add(record.bytes);
                row.count = row.count.saturating_add(record.count);
                row.oldest_age = row.oldest_age.max(record.oldest_age);
            }
            None => {
                record.frames.drain(..entry);
                index.insert(key, rows.len());
                rows.push(record);
            }
        }
    }
    report.stacks = rows;
    report.rank();
    report.notes.push(format!(
        "rows folded by their user entry frame (--fold {}): {before} stacks into {} rows; a \
         folded row shows the line of its largest stack",
        how.as_str(),
        report.stacks.len()
    ));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::investigate::report::{
        Mode, Source, basename,
        test_support::{frame, python, record},
    };

    /// A row's headline as `qualname (file)`.
    fn describe(frame: &Frame) -> String {
        match &frame.file {
            Some(file) => format!("{} ({})", frame.display_name(), basename(file)),
            None => frame.display_name(),
        }
    }

    const CELERY: &str = "/venv/lib/python3.11/site-packages/celery/app/trace.py";
    const STDLIB: &str = "/usr/lib/python3.11/json/decoder.py";

    fn worker_stack(task: &str, line: u32, leaf_line: u32) -> Vec<Frame> {
        vec![
            frame("_PyObject_Malloc", "/usr/bin/python3.11", 0x1000),
            python("JSONDecoder.raw_decode", STDLIB, 343, 353),
            python("parse", "/app/jobs.py", 10, leaf_line),
            python(task, "/app/tasks.py", 20, line),
            python("trace_task", CELERY, 400, 451),
            python("main", "/venv/bin/celery", 5, 8),
            python("<module>", "/venv/bin/celery", 1, 8),
        ]
    }

    fn report(stacks: Vec<StackRecord>) -> Report {
        Report {
            pid: 1,
            comm: "celery".to_owned(),
            mode: Mode::Growth,
            duration: Duration::from_secs(1),
            sample_period: Some(64),
            min_age: None,
            stacks,
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_user_entry_is_the_user_frame_a_library_called() {
        let stack = worker_stack("ingest", 22, 11);
        assert_eq!(user_entry(&stack), Some(3));
        // A script: no library above the user's code, its outermost user frame.
        let script = vec![
            python("keep", "/app/s.py", 3, 4),
            python("main", "/app/s.py", 8, 9),
            python("<module>", "/app/s.py", 1, 12),
        ];
        assert_eq!(user_entry(&script), Some(2));
        let native = vec![frame("main", "/usr/bin/leaky", 0x10)];
        assert_eq!(user_entry(&native), None);
    }

    #[test]
    fn rows_of_one_task_function_fold_into_one_and_others_stay_apart() {
        let mut r = report(vec![
            record(worker_stack("ingest", 22, 11), Source::PageFault, 300, 3),
            record(worker_stack("ingest", 25, 12), Source::PageFault, 500, 5),
            record(worker_stack("export", 22, 11), Source::PageFault, 600, 6),
            record(
                vec![frame("map_and_keep", "/usr/bin/leaky", 0x10)],
                Source::Mmap,
                50,
                1,
            ),
        ]);
        fold(&mut r, Fold::UserEntry);
        let rows: Vec<(String, u64, u64)> = r
            .stacks
            .iter()
            .map(|s| (describe(s.headline()), s.bytes, s.count))
            .collect();
        assert_eq!(
            rows,
            [
                ("ingest (tasks.py)".to_owned(), 800, 8),
                ("export (tasks.py)".to_owned(), 600, 6),
                ("map_and_keep".to_owned(), 50, 1),
            ]
        );
        // The folded row starts at the entry frame, with the line of its largest stack.
        let ingest = &r.stacks[0];
        assert_eq!(ingest.frames[0].line, Some(25));
        assert_eq!(ingest.frames.len(), 4);
        assert!(r.notes[0].contains("4 stacks into 3 rows"), "{:?}", r.notes);
    }

    #[test]
    fn rows_of_different_tasks_stay_apart() {
        let mut a = record(worker_stack("run", 22, 11), Source::PageFault, 300, 3);
        a.task = Some("jobs.a".to_owned());
        let mut b = a.clone();
        b.task = Some("jobs.b".to_owned());
        let mut r = report(vec![a, b]);
        fold(&mut r, Fold::UserEntry);
        assert_eq!(r.stacks.len(), 2);
    }
}
