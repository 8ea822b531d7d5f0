//! Parser for the task-marker protocol (`LS1`), spoken by worker processes to
//! the agent over a Unix datagram socket. The full specification lives in
//! `integrations/PROTOCOL.md`; this module is its reference implementation.
//!
//! One marker per datagram, ASCII text:
//!
//! ```text
//! LS1 <begin|end> <task> [job=<id>] [tid=<tid>] [status=<ok|error>] [blocks=<delta>]
//! ```
//!
//! The parser is pure (no I/O, no allocation) and borrows from the datagram.
//! The sender's pid/uid are *not* part of the message: the agent takes them
//! from the kernel (`SCM_CREDENTIALS`).

use std::fmt;

/// Largest datagram the protocol allows, in bytes, including the optional
/// trailing `\n`. A receiver should read with a buffer of at least
/// `MAX_DATAGRAM + 1` bytes (or use `MSG_TRUNC`) so that an oversized
/// datagram is seen as oversized and not silently truncated into a valid one.
pub const MAX_DATAGRAM: usize = 512;

/// Longest task name, in bytes.
pub const MAX_TASK_LEN: usize = 128;

/// Longest job id, in bytes.
pub const MAX_JOB_ID_LEN: usize = 64;

/// Largest `blocks=` magnitude: 2^40 live blocks is more memory than any machine has, so a
/// larger change is a broken client, not a job.
pub const MAX_BLOCKS_DELTA: i64 = 1 << 40;

/// The only protocol magic/version this parser accepts.
pub const MAGIC: &str = "LS1";

/// Whether a marker opens or closes a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Begin,
    End,
}

impl Phase {
    /// The wire spelling: `begin` or `end`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Begin => "begin",
            Phase::End => "end",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed marker, borrowing from the datagram it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker<'a> {
    pub phase: Phase,
    /// 1..=128 bytes of `[A-Za-z0-9_.:/@-]`.
    pub task: &'a str,
    /// 1..=64 bytes of printable ASCII other than space (0x21..=0x7e).
    pub job_id: Option<&'a str>,
    /// Thread id *as seen by the sender* (its own pid namespace). Advisory:
    /// the agent must not trust it without checking it belongs to the sender.
    pub tid: Option<u32>,
    /// `status=error` was given. Always `false` for [`Phase::Begin`].
    pub failed: bool,
    /// `end` only: the change over the job in the sender's count of live allocator blocks
    /// (Python: `sys.getallocatedblocks()`), within ±[`MAX_BLOCKS_DELTA`].
    pub blocks: Option<i64>,
}

impl fmt::Display for Marker<'_> {
    /// Canonical form, without trailing newline: fields in the order
    /// `job`, `tid`, `status`; `status` is always written on `end` markers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MAGIC} {} {}", self.phase, self.task)?;
        if let Some(job) = self.job_id {
            write!(f, " job={job}")?;
        }
        if let Some(tid) = self.tid {
            write!(f, " tid={tid}")?;
        }
        if self.phase == Phase::End {
            f.write_str(if self.failed {
                " status=error"
            } else {
                " status=ok"
            })?;
        }
        if let Some(blocks) = self.blocks {
            write!(f, " blocks={blocks}")?;
        }
        Ok(())
    }
}

/// Why a datagram was rejected. Each variant maps to a stable metrics label
/// via [`MarkerError::reason`].
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq, Hash)]
pub enum MarkerError {
    #[error("empty datagram")]
    Empty,
    #[error("datagram longer than {MAX_DATAGRAM} bytes")]
    TooLong,
    #[error("datagram is not valid UTF-8")]
    NotUtf8,
    #[error("datagram does not start with {MAGIC}")]
    BadMagic,
    #[error("unsupported protocol version (only {MAGIC} is understood)")]
    UnsupportedVersion,
    #[error("fields must be separated by exactly one space, with none leading or trailing")]
    BadSpacing,
    #[error("phase missing or not `begin`/`end`")]
    UnknownPhase,
    #[error("task name missing")]
    MissingTask,
    #[error("task name longer than {MAX_TASK_LEN} bytes")]
    TaskTooLong,
    #[error("task name contains a character outside [A-Za-z0-9_.:/@-]")]
    TaskInvalidChar,
    #[error("job id empty, longer than {MAX_JOB_ID_LEN} bytes, or not printable non-space ASCII")]
    JobIdInvalid,
    #[error("tid is not a canonical non-zero decimal u32")]
    TidInvalid,
    #[error("status is not `ok` or `error`")]
    StatusInvalid,
    #[error("status is only allowed on `end` markers")]
    StatusOnBegin,
    #[error("blocks is not a canonical decimal within ±2^40")]
    BlocksInvalid,
    #[error("blocks is only allowed on `end` markers")]
    BlocksOnBegin,
    #[error("unknown or malformed field")]
    UnknownField,
    #[error("field given more than once")]
    DuplicateField,
}

impl MarkerError {
    /// Every variant, e.g. to pre-register metric label values at zero.
    pub const ALL: &'static [MarkerError] = &[
        MarkerError::Empty,
        MarkerError::TooLong,
        MarkerError::NotUtf8,
        MarkerError::BadMagic,
        MarkerError::UnsupportedVersion,
        MarkerError::BadSpacing,
        MarkerError::UnknownPhase,
        MarkerError::MissingTask,
        MarkerError::TaskTooLong,
        MarkerError::TaskInvalidChar,
        MarkerError::JobIdInvalid,
        MarkerError::TidInvalid,
        MarkerError::StatusInvalid,
        MarkerError::StatusOnBegin,
        MarkerError::BlocksInvalid,
        MarkerError::BlocksOnBegin,
        MarkerError::UnknownField,
        MarkerError::DuplicateField,
    ];

    /// Short, stable `snake_case` label for
    /// `leakscope_markers_dropped_total{reason="..."}`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            MarkerError::Empty => "empty",
            MarkerError::TooLong => "too_long",
            MarkerError::NotUtf8 => "not_utf8",
            MarkerError::BadMagic => "bad_magic",
            MarkerError::UnsupportedVersion => "unsupported_version",
            MarkerError::BadSpacing => "bad_spacing",
            MarkerError::UnknownPhase => "unknown_phase",
            MarkerError::MissingTask => "missing_task",
            MarkerError::TaskTooLong => "task_too_long",
            MarkerError::TaskInvalidChar => "task_invalid_char",
            MarkerError::JobIdInvalid => "job_id_invalid",
            MarkerError::TidInvalid => "tid_invalid",
            MarkerError::StatusInvalid => "status_invalid",
            MarkerError::StatusOnBegin => "status_on_begin",
            MarkerError::BlocksInvalid => "blocks_invalid",
            MarkerError::BlocksOnBegin => "blocks_on_begin",
            MarkerError::UnknownField => "unknown_field",
            MarkerError::DuplicateField => "duplicate_field",
        }
    }
}

fn is_task_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'/' | b'@')
}

fn is_job_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// `LS` followed by one or more digits: a well-formed magic of another version.
fn is_other_version(token: &str) -> bool {
    token
        .strip_prefix("LS")
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_tid(value: &str) -> Result<u32, MarkerError> {
    let bytes = value.as_bytes();
    // Canonical decimal only: no sign, no leading zero, no empty string.
    if bytes.is_empty()
        || bytes.len() > 10
        || bytes[0] == b'0'
        || !bytes.iter().all(u8::is_ascii_digit)
    {
        return Err(MarkerError::TidInvalid);
    }
    value.parse::<u32>().map_err(|_| MarkerError::TidInvalid)
}

fn parse_blocks(value: &str) -> Result<i64, MarkerError> {
    // Canonical signed decimal: an optional `-`, then `0` alone or digits without a leading
    // zero; `-0` is not canonical.
    let digits = value.strip_prefix('-').unwrap_or(value);
    let canonical = !digits.is_empty()
        && digits.len() <= 13
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && value != "-0";
    if !canonical {
        return Err(MarkerError::BlocksInvalid);
    }
    match value.parse::<i64>() {
        Ok(v) if v.abs() <= MAX_BLOCKS_DELTA => Ok(v),
        _ => Err(MarkerError::BlocksInvalid),
    }
}

/// Parses one datagram. Never panics; runs in time linear in the input and
/// rejects anything longer than [`MAX_DATAGRAM`] before looking at it.
///
/// # Errors
///
/// Returns the first [`MarkerError`] found, checking in wire order: size,
/// encoding, magic, phase, task, then each `key=value` field left to right.
pub fn parse(datagram: &[u8]) -> Result<Marker<'_>, MarkerError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(MarkerError::TooLong);
    }
    let body = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    if body.is_empty() {
        return Err(MarkerError::Empty);
    }
    let text = std::str::from_utf8(body).map_err(|_| MarkerError::NotUtf8)?;
    let mut tokens = text.split(' ');

    // `split` always yields at least one item.
    let magic = tokens.next().unwrap_or_default();
    if magic.is_empty() {
        return Err(MarkerError::BadSpacing);
    }
    if magic != MAGIC {
        return Err(if is_other_version(magic) {
            MarkerError::UnsupportedVersion
        } else {
            MarkerError::BadMagic
        });
    }

    let phase = match tokens.next() {
        Some("begin") => Phase::Begin,
        Some("end") => Phase::End,
        Some("") => return Err(MarkerError::BadSpacing),
        Some(_) | None => return Err(MarkerError::UnknownPhase),
    };

    let task = match tokens.next() {
        None => return Err(MarkerError::MissingTask),
        Some("") => return Err(MarkerError::BadSpacing),
        // A `key=value` where the task should be: the task was left out.
        Some(t) if t.contains('=') => return Err(MarkerError::MissingTask),
        Some(t) if t.len() > MAX_TASK_LEN => return Err(MarkerError::TaskTooLong),
        Some(t) if !t.bytes().all(is_task_byte) => return Err(MarkerError::TaskInvalidChar),
        Some(t) => t,
    };

    let mut marker = Marker {
        phase,
        task,
        job_id: None,
        tid: None,
        failed: false,
        blocks: None,
    };
    let mut seen_status = false;

    for token in tokens {
        if token.is_empty() {
            return Err(MarkerError::BadSpacing);
        }
        let Some((key, value)) = token.split_once('=') else {
            return Err(MarkerError::UnknownField);
        };
        match key {
            "job" => {
                if marker.job_id.is_some() {
                    return Err(MarkerError::DuplicateField);
                }
                if value.is_empty()
                    || value.len() > MAX_JOB_ID_LEN
                    || !value.bytes().all(is_job_byte)
                {
                    return Err(MarkerError::JobIdInvalid);
                }
                marker.job_id = Some(value);
            }
            "tid" => {
                if marker.tid.is_some() {
                    return Err(MarkerError::DuplicateField);
                }
                marker.tid = Some(parse_tid(value)?);
            }
            "status" => {
                if seen_status {
                    return Err(MarkerError::DuplicateField);
                }
                seen_status = true;
                if phase == Phase::Begin {
                    return Err(MarkerError::StatusOnBegin);
                }
                marker.failed = match value {
                    "ok" => false,
                    "error" => true,
                    _ => return Err(MarkerError::StatusInvalid),
                };
            }
            "blocks" => {
                if marker.blocks.is_some() {
                    return Err(MarkerError::DuplicateField);
                }
                if phase == Phase::Begin {
                    return Err(MarkerError::BlocksOnBegin);
                }
                marker.blocks = Some(parse_blocks(value)?);
            }
            _ => return Err(MarkerError::UnknownField),
        }
    }
    Ok(marker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MarkerError as E;

    fn ok(s: &str) -> Marker<'_> {
        match parse(s.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("{s:?} rejected: {e:?}"),
        }
    }

    fn err(s: &[u8]) -> MarkerError {
        match parse(s) {
            Ok(m) => panic!("{s:?} accepted as {m:?}"),
            Err(e) => e,
        }
    }

    fn begin(task: &str) -> Marker<'_> {
        Marker {
            phase: Phase::Begin,
            task,
            job_id: None,
            tid: None,
            failed: false,
            blocks: None,
        }
    }

    // ---- valid forms -----------------------------------------------------

    #[test]
    fn minimal_begin_and_end() {
        assert_eq!(ok("LS1 begin t"), begin("t"));
        assert_eq!(
            ok("LS1 end t"),
            Marker {
                phase: Phase::End,
                ..begin("t")
            }
        );
    }

    #[test]
    fn all_fields_begin() {
        assert_eq!(
            ok("LS1 begin proj.tasks:add job=abc-123 tid=4242"),
            Marker {
                job_id: Some("abc-123"),
                tid: Some(4242),
                ..begin("proj.tasks:add")
            }
        );
    }

    #[test]
    fn all_fields_end_error() {
        assert_eq!(
            ok("LS1 end a/b@c job=J tid=1 status=error"),
            Marker {
                phase: Phase::End,
                task: "a/b@c",
                job_id: Some("J"),
                tid: Some(1),
                failed: true,
                blocks: None,
            }
        );
    }

    #[test]
    fn blocks_on_end() {
        assert_eq!(ok("LS1 end t blocks=3541").blocks, Some(3541));
        assert_eq!(ok("LS1 end t blocks=-12 status=ok").blocks, Some(-12));
        assert_eq!(ok("LS1 end t blocks=0").blocks, Some(0));
        let max = MAX_BLOCKS_DELTA.to_string();
        assert_eq!(
            ok(&format!("LS1 end t blocks=-{max}")).blocks,
            Some(-MAX_BLOCKS_DELTA)
        );
        assert_eq!(ok("LS1 end t").blocks, None);
    }

    #[test]
    fn blocks_invalid() {
        let over = format!("LS1 end t blocks={}", MAX_BLOCKS_DELTA + 1);
        for bad in [
            "LS1 end t blocks=",
            "LS1 end t blocks=-",
            "LS1 end t blocks=-0",
            "LS1 end t blocks=007",
            "LS1 end t blocks=+7",
            "LS1 end t blocks=1e3",
            "LS1 end t blocks=99999999999999999999",
            over.as_str(),
        ] {
            assert_eq!(err(bad.as_bytes()), E::BlocksInvalid, "{bad}");
        }
        assert_eq!(err(b"LS1 begin t blocks=5"), E::BlocksOnBegin);
        assert_eq!(err(b"LS1 end t blocks=1 blocks=1"), E::DuplicateField);
    }

    #[test]
    fn status_ok_is_not_failed() {
        let m = ok("LS1 end t status=ok");
        assert!(!m.failed);
        assert_eq!(m.phase, Phase::End);
    }

    #[test]
    fn each_optional_field_alone() {
        assert_eq!(ok("LS1 begin t job=x").job_id, Some("x"));
        assert_eq!(ok("LS1 begin t tid=7").tid, Some(7));
        assert!(ok("LS1 end t status=error").failed);
    }

    #[test]
    fn fields_in_any_order() {
        let canonical = ok("LS1 end t job=j tid=9 status=error");
        for s in [
            "LS1 end t status=error tid=9 job=j",
            "LS1 end t tid=9 job=j status=error",
            "LS1 end t status=error job=j tid=9",
            "LS1 end t job=j status=error tid=9",
            "LS1 end t tid=9 status=error job=j",
        ] {
            assert_eq!(ok(s), canonical, "{s}");
        }
    }

    #[test]
    fn one_trailing_newline_tolerated() {
        assert_eq!(ok("LS1 begin t\n"), begin("t"));
        assert_eq!(ok("LS1 end t job=1 status=ok\n").job_id, Some("1"));
        assert_eq!(err(b"LS1 begin t\n\n"), E::TaskInvalidChar);
        assert_eq!(err(b"LS1 begin t\r\n"), E::TaskInvalidChar);
        assert_eq!(err(b"LS1 end t status=ok\r\n"), E::StatusInvalid);
        assert_eq!(err(b"LS1 begin t job=1\n\n"), E::JobIdInvalid);
    }

    #[test]
    fn task_name_charset_and_length_limits() {
        let all = "azAZ09_.:-/@";
        assert_eq!(ok(&format!("LS1 begin {all}")).task, all);
        let max = "x".repeat(MAX_TASK_LEN);
        assert_eq!(ok(&format!("LS1 begin {max}")).task, max);
        let over = "x".repeat(MAX_TASK_LEN + 1);
        assert_eq!(err(format!("LS1 begin {over}").as_bytes()), E::TaskTooLong);
    }

    #[test]
    fn job_id_limits() {
        let all_printable: String = (0x21u8..=0x7e).map(char::from).take(64).collect();
        assert_eq!(
            ok(&format!("LS1 begin t job={all_printable}")).job_id,
            Some(all_printable.as_str())
        );
        let tail: String = (0x21u8..=0x7e).map(char::from).skip(64).collect();
        assert_eq!(
            ok(&format!("LS1 begin t job={tail}")).job_id,
            Some(tail.as_str())
        );
        // `=` inside the value is fine: the key ends at the first `=`.
        assert_eq!(ok("LS1 begin t job=a=b").job_id, Some("a=b"));
        let max = "j".repeat(MAX_JOB_ID_LEN);
        assert_eq!(ok(&format!("LS1 begin t job={max}")).job_id, Some(&*max));
    }

    #[test]
    fn tid_limits() {
        assert_eq!(ok("LS1 begin t tid=1").tid, Some(1));
        assert_eq!(ok("LS1 begin t tid=4294967295").tid, Some(u32::MAX));
    }

    #[test]
    fn longest_valid_marker_fits() {
        // Fields cannot repeat, so the longest valid marker is well under the
        // datagram limit; the limit only bounds what a receiver must read.
        let m = format!(
            "LS1 end {} job={} tid={} status=error blocks=-{MAX_BLOCKS_DELTA}",
            "t".repeat(MAX_TASK_LEN),
            "j".repeat(MAX_JOB_ID_LEN),
            u32::MAX
        );
        assert!(m.len() < MAX_DATAGRAM);
        assert!(ok(&m).failed);
    }

    // ---- errors ------------------------------------------------------------

    #[test]
    fn empty_input() {
        assert_eq!(err(b""), E::Empty);
        assert_eq!(err(b"\n"), E::Empty);
    }

    #[test]
    fn too_long() {
        let mut d = b"LS1 begin t job=".to_vec();
        d.resize(MAX_DATAGRAM + 1, b'j');
        assert_eq!(err(&d), E::TooLong);
        // Exactly MAX_DATAGRAM with a trailing newline is judged on content.
        let mut d = b"LS1 begin t job=".to_vec();
        d.resize(MAX_DATAGRAM - 1, b'j');
        d.push(b'\n');
        assert_eq!(err(&d), E::JobIdInvalid);
    }

    #[test]
    fn huge_input_rejected_without_scanning() {
        let huge = vec![0xffu8; 16 * 1024 * 1024];
        assert_eq!(err(&huge), E::TooLong);
        let huge_valid_prefix = [b"LS1 begin t ".as_slice(), &vec![b'a'; 1 << 20]].concat();
        assert_eq!(err(&huge_valid_prefix), E::TooLong);
    }

    #[test]
    fn not_utf8() {
        assert_eq!(err(b"LS1 begin \xff"), E::NotUtf8);
        assert_eq!(err(b"\xc3\x28"), E::NotUtf8);
        // Truncated multi-byte sequence at the end.
        assert_eq!(err(b"LS1 begin t job=\xe2\x82"), E::NotUtf8);
        // Valid UTF-8 that is not ASCII is rejected by the field rules instead.
        assert_eq!(err("LS1 begin tâsk".as_bytes()), E::TaskInvalidChar);
        assert_eq!(err("LS1 begin t job=ü".as_bytes()), E::JobIdInvalid);
    }

    #[test]
    fn nul_bytes() {
        assert_eq!(err(b"\0"), E::BadMagic);
        assert_eq!(err(b"LS1\0begin t"), E::BadMagic);
        assert_eq!(err(b"LS1 begin\0 t"), E::UnknownPhase);
        assert_eq!(err(b"LS1 begin t\0"), E::TaskInvalidChar);
        assert_eq!(err(b"LS1 begin t job=a\0b"), E::JobIdInvalid);
        assert_eq!(err(b"LS1 begin t tid=1\0"), E::TidInvalid);
        assert_eq!(err(b"LS1 end t status=ok\0"), E::StatusInvalid);
        assert_eq!(err(b"LS1 begin t \0job=1"), E::UnknownField);
        assert_eq!(err(&[0u8; 64]), E::BadMagic);
    }

    #[test]
    fn bad_magic() {
        for d in [
            b"ls1 begin t".as_slice(),
            b"LS begin t",
            b"LS1x begin t",
            b"LSX begin t",
            b"begin t",
            b"LS1begin t",
            b"\tLS1 begin t",
            b"x",
        ] {
            assert_eq!(err(d), E::BadMagic, "{:?}", String::from_utf8_lossy(d));
        }
    }

    #[test]
    fn unsupported_version() {
        assert_eq!(err(b"LS2 begin t"), E::UnsupportedVersion);
        assert_eq!(err(b"LS10 begin t"), E::UnsupportedVersion);
        assert_eq!(err(b"LS0"), E::UnsupportedVersion);
    }

    #[test]
    fn bad_spacing() {
        for d in [
            b" LS1 begin t".as_slice(),
            b"LS1  begin t",
            b"LS1 begin  t",
            b"LS1 begin t ",
            b"LS1 begin t  job=1",
            b"LS1 begin t job=1 ",
            b"LS1 begin t \n",
            b" ",
        ] {
            assert_eq!(err(d), E::BadSpacing, "{:?}", String::from_utf8_lossy(d));
        }
    }

    #[test]
    fn unknown_phase() {
        for d in [
            b"LS1".as_slice(),
            b"LS1\n",
            b"LS1 start t",
            b"LS1 BEGIN t",
            b"LS1 End t",
            b"LS1 beginx t",
            b"LS1 begin\tt",
        ] {
            assert_eq!(err(d), E::UnknownPhase, "{:?}", String::from_utf8_lossy(d));
        }
    }

    #[test]
    fn missing_task() {
        assert_eq!(err(b"LS1 begin"), E::MissingTask);
        assert_eq!(err(b"LS1 end\n"), E::MissingTask);
        assert_eq!(err(b"LS1 begin job=1"), E::MissingTask);
        assert_eq!(err(b"LS1 end status=ok"), E::MissingTask);
    }

    #[test]
    fn task_invalid_char() {
        for d in [
            b"LS1 begin a,b".as_slice(),
            b"LS1 begin a\tb",
            b"LS1 begin <lambda>",
            b"LS1 begin a#b",
            b"LS1 begin a\\b",
            b"LS1 begin a%20b",
            b"LS1 begin a+b",
        ] {
            assert_eq!(
                err(d),
                E::TaskInvalidChar,
                "{:?}",
                String::from_utf8_lossy(d)
            );
        }
    }

    #[test]
    fn task_too_long_takes_precedence_over_charset() {
        let d = format!("LS1 begin {}", "#".repeat(MAX_TASK_LEN + 1));
        assert_eq!(err(d.as_bytes()), E::TaskTooLong);
    }

    #[test]
    fn job_id_invalid() {
        assert_eq!(err(b"LS1 begin t job="), E::JobIdInvalid);
        assert_eq!(err(b"LS1 begin t job=a\tb"), E::JobIdInvalid);
        assert_eq!(err(b"LS1 begin t job=a\x7fb"), E::JobIdInvalid);
        let over = format!("LS1 begin t job={}", "j".repeat(MAX_JOB_ID_LEN + 1));
        assert_eq!(err(over.as_bytes()), E::JobIdInvalid);
    }

    #[test]
    fn tid_invalid() {
        for v in [
            "",
            "0",
            "01",
            "-1",
            "+1",
            "1.0",
            "0x10",
            "4294967296",
            "99999999999",
            "12a",
            " 1",
            "١",
        ] {
            let d = format!("LS1 begin t tid={v}");
            let e = err(d.as_bytes());
            // " 1" yields an empty value followed by an unknown token, which
            // fails on the value first.
            assert_eq!(e, E::TidInvalid, "{d:?}");
        }
    }

    #[test]
    fn status_invalid() {
        for v in ["", "OK", "failed", "err", "ok,error", "1"] {
            let d = format!("LS1 end t status={v}");
            assert_eq!(err(d.as_bytes()), E::StatusInvalid, "{d:?}");
        }
    }

    #[test]
    fn status_on_begin() {
        assert_eq!(err(b"LS1 begin t status=ok"), E::StatusOnBegin);
        assert_eq!(err(b"LS1 begin t status=error"), E::StatusOnBegin);
        assert_eq!(err(b"LS1 begin t status=bogus"), E::StatusOnBegin);
    }

    #[test]
    fn unknown_field() {
        for d in [
            b"LS1 begin t foo=1".as_slice(),
            b"LS1 begin t job",
            b"LS1 begin t =1",
            b"LS1 begin t JOB=1",
            b"LS1 begin t pid=1",
            b"LS1 end t extra",
            b"LS1 begin t job=1 x",
        ] {
            assert_eq!(err(d), E::UnknownField, "{:?}", String::from_utf8_lossy(d));
        }
    }

    #[test]
    fn duplicate_field() {
        assert_eq!(err(b"LS1 begin t job=1 job=1"), E::DuplicateField);
        assert_eq!(err(b"LS1 begin t tid=1 tid=2"), E::DuplicateField);
        assert_eq!(err(b"LS1 end t status=ok status=ok"), E::DuplicateField);
        // Duplicate is reported even when the second value is also invalid.
        assert_eq!(err(b"LS1 begin t job=1 job="), E::DuplicateField);
        assert_eq!(err(b"LS1 begin t tid=1 tid=x"), E::DuplicateField);
        assert_eq!(err(b"LS1 end t status=ok status=x"), E::DuplicateField);
    }

    #[test]
    fn reasons_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for e in MarkerError::ALL {
            let r = e.reason();
            assert!(!r.is_empty());
            assert!(
                r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{r}"
            );
            assert!(seen.insert(r), "duplicate reason {r}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(MarkerError::ALL.len(), 18);
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(ok("LS1 begin t").to_string(), "LS1 begin t");
        assert_eq!(ok("LS1 end t").to_string(), "LS1 end t status=ok");
        assert_eq!(
            ok("LS1 end t status=error tid=3 job=q\n").to_string(),
            "LS1 end t job=q tid=3 status=error"
        );
        assert_eq!(
            ok("LS1 end t blocks=-4 job=q").to_string(),
            "LS1 end t job=q status=ok blocks=-4"
        );
        assert_eq!(Phase::Begin.to_string(), "begin");
    }

    // ---- fuzz-style --------------------------------------------------------

    /// xorshift64* — tiny, deterministic, good enough to shake a parser.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
        fn chance(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }
    }

    const TASK_ALPHABET: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-/@";

    fn gen_valid(rng: &mut Rng) -> Vec<u8> {
        let phase = if rng.chance(2) { "begin" } else { "end" };
        let task_len = 1 + rng.below(MAX_TASK_LEN);
        let task: String = (0..task_len)
            .map(|_| char::from(*rng.pick(TASK_ALPHABET)))
            .collect();
        let mut fields: Vec<String> = Vec::new();
        if rng.chance(2) {
            let len = 1 + rng.below(MAX_JOB_ID_LEN);
            let job: String = (0..len)
                .map(|_| char::from(0x21 + rng.below(0x7e - 0x21 + 1) as u8))
                .collect();
            fields.push(format!("job={job}"));
        }
        if rng.chance(2) {
            let tid = 1 + rng.next() % u64::from(u32::MAX);
            fields.push(format!("tid={tid}"));
        }
        if phase == "end" && rng.chance(2) {
            fields.push(format!(
                "status={}",
                if rng.chance(2) { "ok" } else { "error" }
            ));
        }
        if phase == "end" && rng.chance(2) {
            let v = (rng.next() % (2 * MAX_BLOCKS_DELTA as u64 + 1)) as i64 - MAX_BLOCKS_DELTA;
            fields.push(format!("blocks={v}"));
        }
        // Shuffle field order.
        for i in (1..fields.len()).rev() {
            let j = rng.below(i + 1);
            fields.swap(i, j);
        }
        let mut s = format!("LS1 {phase} {task}");
        for f in fields {
            s.push(' ');
            s.push_str(&f);
        }
        if rng.chance(3) {
            s.push('\n');
        }
        s.into_bytes()
    }

    const TOKENS: &[&str] = &[
        "LS1",
        "LS2",
        "ls1",
        "begin",
        "end",
        "t",
        "job=",
        "job=1",
        "tid=",
        "tid=0",
        "tid=1",
        "tid=4294967295",
        "tid=4294967296",
        "status=",
        "status=ok",
        "status=error",
        "blocks=0",
        "blocks=-0",
        "blocks=-17",
        "=",
        " ",
        "  ",
        "\n",
        "\0",
        "\u{fffd}",
        "é",
        "a.b:c",
        "x=y",
        "\r",
        "\t",
    ];

    fn gen_tokens(rng: &mut Rng) -> Vec<u8> {
        let n = rng.below(8);
        let mut s = String::new();
        for i in 0..n {
            if i > 0 && !rng.chance(6) {
                s.push(' ');
            }
            let token = *rng.pick::<&str>(TOKENS);
            s.push_str(token);
        }
        s.into_bytes()
    }

    fn gen_random(rng: &mut Rng) -> Vec<u8> {
        let len = if rng.chance(50) {
            MAX_DATAGRAM - 2 + rng.below(5)
        } else {
            rng.below(64)
        };
        (0..len).map(|_| rng.next() as u8).collect()
    }

    fn mutate(rng: &mut Rng, mut d: Vec<u8>) -> Vec<u8> {
        let rounds = 1 + rng.below(4);
        for _ in 0..rounds {
            let len = d.len();
            match rng.below(8) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    d[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    d[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(len + 1);
                    let b = *rng.pick(b" =\n\0\xff\xc3azLS19");
                    d.insert(i, b);
                }
                3 if len > 0 => {
                    d.remove(rng.below(len));
                }
                4 => {
                    d.truncate(rng.below(len + 1));
                }
                5 if len > 0 => {
                    let a = rng.below(len);
                    let b = a + rng.below(len - a + 1);
                    let chunk = d[a..b].to_vec();
                    let at = rng.below(len + 1);
                    d.splice(at..at, chunk);
                }
                6 => {
                    let extra = rng.pick(&[" job=x", " tid=5", " status=ok", " z=1", "\n"]);
                    d.extend_from_slice(extra.as_bytes());
                }
                _ => {
                    let i = rng.below(len + 1);
                    let b = *rng.pick(TASK_ALPHABET);
                    d.insert(i, b);
                }
            }
        }
        d
    }

    fn check_invariants(m: &Marker<'_>) {
        assert!(!m.task.is_empty() && m.task.len() <= MAX_TASK_LEN);
        assert!(m.task.bytes().all(is_task_byte));
        if let Some(j) = m.job_id {
            assert!(!j.is_empty() && j.len() <= MAX_JOB_ID_LEN);
            assert!(j.bytes().all(is_job_byte));
        }
        assert_ne!(m.tid, Some(0));
        if m.phase == Phase::Begin {
            assert!(!m.failed);
            assert_eq!(m.blocks, None);
        }
        assert!(m.blocks.is_none_or(|b| b.abs() <= MAX_BLOCKS_DELTA));
    }

    #[test]
    fn fuzz_never_panics_and_round_trips() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0usize;
        let mut reasons = std::collections::HashSet::new();
        for i in 0..200_000 {
            let d = match i % 4 {
                0 => gen_valid(&mut rng),
                1 => {
                    let base = gen_valid(&mut rng);
                    mutate(&mut rng, base)
                }
                2 => gen_tokens(&mut rng),
                _ => gen_random(&mut rng),
            };
            match parse(&d) {
                Ok(m) => {
                    accepted += 1;
                    check_invariants(&m);
                    let text = m.to_string();
                    assert!(text.len() < MAX_DATAGRAM);
                    assert_eq!(parse(text.as_bytes()), Ok(m), "input {d:?}");
                    let with_nl = format!("{text}\n");
                    assert_eq!(parse(with_nl.as_bytes()), Ok(m));
                }
                Err(e) => {
                    reasons.insert(e.reason());
                }
            }
            // Every case from gen_valid must be accepted.
            if i % 4 == 0 {
                assert!(parse(&d).is_ok(), "valid generator produced {d:?}");
            }
        }
        // The generators must reach both sides of the parser.
        assert!(accepted > 50_000, "only {accepted} accepted");
        assert!(reasons.len() >= 12, "only reached {reasons:?}");
    }
}
