//! Python frames in place of the interpreter's: each `_PyEval_EvalFrameDefault` frame of the
//! native stack stands for the Python functions that call of the eval loop ran, from the
//! innermost one up to its entry frame. Native frames between two eval-loop frames (a C
//! extension calling back into Python) stay where they are.

use super::{PyPath, code::Code};
use crate::investigate::report::Frame;

/// The module Python frames are listed under (they have no machine address).
pub const PYTHON_MODULE: &str = "[python]";

pub fn python_frame(code: &Code, line: Option<u32>) -> Frame {
    Frame {
        function: Some(code.qualname.clone()),
        module: PYTHON_MODULE.to_owned(),
        offset: 0,
        address: 0,
        file: Some(code.filename.clone()),
        line,
        inlined: false,
        start_line: Some(code.first_line),
        python: true,
    }
}

/// Stands past the outermost Python frame of a path that could not be read to its end.
pub fn truncated_frame() -> Frame {
    Frame {
        function: Some("[python stack truncated]".to_owned()),
        module: PYTHON_MODULE.to_owned(),
        offset: 0,
        address: 0,
        file: None,
        line: None,
        inlined: false,
        start_line: None,
        python: false,
    }
}

fn is_eval_loop(frame: &Frame) -> bool {
    frame
        .function
        .as_deref()
        .is_some_and(|f| f.starts_with("_PyEval_EvalFrameDefault"))
}

/// The merged stack, leaf first. Python frames the native stack has no eval-loop frame for
/// (a stripped interpreter, or a walk that lost the native frames) go after the native ones.
pub fn merge(native: Vec<Frame>, py: &PyPath) -> Vec<Frame> {
    if py.frames.is_empty() {
        return native;
    }
    // Segments of one eval-loop call each, leaf first.
    let mut segments: Vec<&[Frame]> = Vec::new();
    let mut start = 0;
    for (i, entry) in py.entries.iter().enumerate() {
        if *entry {
            segments.push(&py.frames[start..=i]);
            start = i + 1;
        }
    }
    if start < py.frames.len() {
        segments.push(&py.frames[start..]);
    }
    let mut segments = segments.into_iter();
    let mut merged = Vec::with_capacity(native.len() + py.frames.len());
    for frame in native {
        if is_eval_loop(&frame) {
            // An eval-loop frame without Python frames left is a walk artefact: drop it.
            if let Some(segment) = segments.next() {
                merged.extend_from_slice(segment);
            }
        } else {
            merged.push(frame);
        }
    }
    for segment in segments {
        merged.extend_from_slice(segment);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::investigate::report::test_support::frame;

    fn py(name: &str) -> Frame {
        Frame {
            function: Some(name.to_owned()),
            module: PYTHON_MODULE.to_owned(),
            file: Some("/app/jobs.py".to_owned()),
            line: Some(3),
            start_line: Some(1),
            python: true,
            ..frame(name, PYTHON_MODULE, 0)
        }
    }

    fn names(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(Frame::display_name).collect()
    }

    #[test]
    fn python_frames_replace_eval_loop_frames_and_keep_c_extensions_between() {
        let lib = "/usr/lib/libpython3.11.so.1.0";
        let native = vec![
            frame("_PyObject_Malloc", lib, 1),
            frame("_PyEval_EvalFrameDefault", lib, 2),
            frame("ext_callback", "/app/ext.so", 3),
            frame("_PyEval_EvalFrameDefault", lib, 4),
            frame("Py_RunMain", lib, 5),
        ];
        let path = PyPath {
            frames: vec![py("keep"), py("handle"), py("<module>")],
            // `handle` was entered from C (ext_callback); `<module>` by Py_RunMain.
            entries: vec![false, true, true],
            note: None,
        };
        assert_eq!(
            names(&merge(native, &path)),
            [
                "_PyObject_Malloc",
                "keep",
                "handle",
                "ext_callback",
                "<module>",
                "Py_RunMain"
            ]
        );
    }

    #[test]
    fn without_eval_loop_frames_python_frames_follow_the_native_ones() {
        let native = vec![frame("memset", "/lib/libc.so.6", 1)];
        let path = PyPath {
            frames: vec![py("keep"), py("<module>")],
            entries: vec![false, true],
            note: None,
        };
        assert_eq!(names(&merge(native, &path)), ["memset", "keep", "<module>"]);
    }

    #[test]
    fn no_python_frames_leave_the_native_stack_alone() {
        let native = vec![frame("main", "/bin/app", 1)];
        assert_eq!(names(&merge(native, &PyPath::default())), ["main"]);
    }
}
