//! tracefs: where it is mounted, and the field layout of each tracepoint's `format` file.

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); \
         mount it with `mount -t tracefs nodev /sys/kernel/tracing` or give the agent CAP_SYS_ADMIN"
    )]
    NotMounted(std::io::Error),
    #[error("tracepoint {category}:{name} does not exist on this kernel")]
    NoTracepoint { category: String, name: String },
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    NoField { tracepoint: String, field: String },
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Finds tracefs, mounting it at `/sys/kernel/tracing` when nothing is there yet.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(found) = CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found.to_path_buf());
    }
    mount_tracefs(Path::new(CANDIDATES[0])).map_err(TracefsError::NotMounted)?;
    Ok(PathBuf::from(CANDIDATES[0]))
}

fn mount_tracefs(target: &Path) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e));
    let target_c = c(&target.to_string_lossy())?;
    let fstype = c("tracefs")?;
    let source = c("nodev")?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint, as its tracefs `format` file declares them.
#[derive(Clone, Debug)]
pub struct Format {
    tracepoint: String,
    fields: HashMap<String, Field>,
}

impl Format {
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path).map_err(|source| {
            if source.kind() == ErrorKind::NotFound {
                TracefsError::NoTracepoint {
                    category: category.into(),
                    name: name.into(),
                }
            } else {
                TracefsError::Read {
                    path,
                    cause: source,
                }
            }
        })?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    /// Parses lines such as `\tfield:unsigned int mm_id;\toffset:8;\tsize:4;\tsigned:0;`.
    pub fn parse(tracepoint: &str, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let mut decl = None;
                let mut offset = None;
                let mut size = None;
                for part in line.split(';').map(str::trim) {
                    if let Some(d) = part.strip_prefix("field:") {
                        decl = Some(d);
                    } else if let Some(o) = part.strip_prefix("offset:") {
                        offset = o.parse().ok();
                    } else if let Some(s) = part.strip_prefix("size:") {
                        size = s.parse().ok();
                    }
                }
                Some((
                    field_name(decl?)?,
                    Field {
                        offset: offset?,
                        size: size?,
                    },
                ))
            })
            .collect();
        Self {
            tracepoint: tracepoint.into(),
            fields,
        }
    }

    pub fn field(&self, name: &str) -> Result<Field, TracefsError> {
        self.fields
            .get(name)
            .copied()
            .ok_or_else(|| TracefsError::NoField {
                tracepoint: self.tracepoint.clone(),
                field: name.into(),
            })
    }

    pub fn offset(&self, name: &str) -> Result<u32, TracefsError> {
        self.field(name).map(|f| f.offset)
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }
}

/// `unsigned int mm_id` -> `mm_id`; `char comm[16]` -> `comm`; `__data_loc char[] x` -> `x`.
fn field_name(decl: &str) -> Option<String> {
    let last = decl.split_whitespace().last()?;
    let name = last.split('[').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSS_STAT: &str = "name: rss_stat
ID: 646
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int mm_id;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned int curr;\toffset:12;\tsize:4;\tsigned:0;
\tfield:int member;\toffset:16;\tsize:4;\tsigned:1;
\tfield:long size;\toffset:24;\tsize:8;\tsigned:1;

print fmt: \"mm_id=%u curr=%d type=%s size=%ldB\", REC->mm_id";

    #[test]
    fn parses_rss_stat_layout() {
        let f = Format::parse("kmem:rss_stat", RSS_STAT);
        assert_eq!(f.field("mm_id").unwrap(), Field { offset: 8, size: 4 });
        assert_eq!(f.offset("curr").unwrap(), 12);
        assert_eq!(f.offset("member").unwrap(), 16);
        assert_eq!(
            f.field("size").unwrap(),
            Field {
                offset: 24,
                size: 8
            }
        );
        assert_eq!(f.offset("common_pid").unwrap(), 4);
    }

    #[test]
    fn parses_arrays_and_data_loc() {
        let f = Format::parse(
            "x:y",
            "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
             \tfield:__data_loc char[] filename;\toffset:24;\tsize:4;\tsigned:0;\n",
        );
        assert_eq!(
            f.field("comm").unwrap(),
            Field {
                offset: 8,
                size: 16
            }
        );
        assert_eq!(f.offset("filename").unwrap(), 24);
    }

    #[test]
    fn missing_field_is_a_named_error() {
        let f = Format::parse("kmem:rss_stat", RSS_STAT);
        let err = f.offset("nope").unwrap_err().to_string();
        assert!(
            err.contains("kmem:rss_stat") && err.contains("nope"),
            "{err}"
        );
        assert!(!f.has("nope"));
    }

    #[test]
    fn garbage_lines_are_ignored() {
        let f = Format::parse("a:b", "field:;offset:x;\nfield:int a;offset:1;\n\u{0}\u{1}");
        assert!(!f.has("a"), "a field without size is not trusted");
    }
}
