//! Memory limits a process will run into: its cgroup's (v2 `memory.max`, v1
//! `memory.limit_in_bytes`, the tightest along the path to the root) and limits the user gives
//! per worker, like Celery's `--max-memory-per-child`.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    str::FromStr,
};

use procfs::process::MountInfo;
use serde::Serialize;

use crate::{host::proc, model::select::Matcher};

/// v1 reports "no limit" as a huge page-aligned number.
const V1_UNLIMITED: u64 = 1 << 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    Cgroup,
    Configured,
}

impl LimitSource {
    pub fn label(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Configured => "configured",
        }
    }
}

/// A limit and how much of it is already used (by the cgroup, or by the process itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub limit_bytes: u64,
    pub used_bytes: u64,
    pub source: LimitSource,
}

impl Limit {
    pub fn headroom(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.used_bytes)
    }

    /// Seconds until the limit is reached at `rate`; `None` when not growing.
    pub fn seconds_left(&self, rate_bytes_per_sec: f64) -> Option<f64> {
        crate::model::detector::time_to_limit(self.used_bytes, self.limit_bytes, rate_bytes_per_sec)
    }
}

/// `--limit MATCHER:SIZE`, e.g. `comm=^celery$:2GiB`.
#[derive(Clone, Debug)]
pub struct ConfiguredLimit {
    pub matcher: Matcher,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("`{0}` is not MATCHER:SIZE (e.g. comm=^celery$:2GiB)")]
    NoSize(String),
    #[error("invalid size `{size}`: {detail} (e.g. 512MiB, 2GiB, 2097152KiB)")]
    BadSize { size: String, detail: String },
    #[error("{0}")]
    BadMatcher(String),
}

impl FromStr for ConfiguredLimit {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (matcher, size) = s
            .rsplit_once(':')
            .ok_or_else(|| LimitError::NoSize(s.to_string()))?;
        let bytes = size
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|detail| LimitError::BadSize {
                size: size.to_string(),
                detail,
            })?
            .as_u64();
        if bytes == 0 {
            return Err(LimitError::BadSize {
                size: size.into(),
                detail: "must be more than zero".into(),
            });
        }
        let matcher = matcher
            .parse()
            .map_err(|e: crate::model::select::MatchError| LimitError::BadMatcher(e.to_string()))?;
        Ok(Self { matcher, bytes })
    }
}

/// Where the cgroup hierarchies are mounted on this host.
#[derive(Clone, Debug, Default)]
pub struct CgroupRoots {
    pub v2: Option<PathBuf>,
    pub v1_memory: Option<PathBuf>,
}

impl CgroupRoots {
    pub fn discover() -> Self {
        let mut roots = proc::own_mounts()
            .map(|m| Self::from_mounts(&m))
            .unwrap_or_default();
        // A hybrid host's cgroup2 mount may lack the memory controller (v1 has it): its
        // cgroups have no memory.max to read, every interval.
        if let Some(v2) = &roots.v2
            && fs::read_to_string(v2.join("cgroup.controllers"))
                .is_ok_and(|c| !c.split_whitespace().any(|c| c == "memory"))
        {
            roots.v2 = None;
        }
        roots
    }

    /// The first cgroup2 mount, and the first v1 mount with the memory controller.
    pub fn from_mounts(mounts: &[MountInfo]) -> Self {
        let mut roots = Self::default();
        for m in mounts {
            match m.fs_type.as_str() {
                "cgroup2" if roots.v2.is_none() => roots.v2 = Some(m.mount_point.clone()),
                "cgroup" if roots.v1_memory.is_none() && m.super_options.contains_key("memory") => {
                    roots.v1_memory = Some(m.mount_point.clone());
                }
                _ => {}
            }
        }
        roots
    }

    /// The tightest cgroup limit on the way from `v2_path` / `v1_path` to the root.
    pub fn limit(&self, v2_path: Option<&str>, v1_path: Option<&str>) -> Option<Limit> {
        self.limit_with(v2_path, v1_path, &mut HashMap::new())
    }

    /// As [`CgroupRoots::limit`], reading each cgroup directory once for all the calls that
    /// share `dirs` (sibling cgroups share their ancestors).
    fn limit_with(
        &self,
        v2_path: Option<&str>,
        v1_path: Option<&str>,
        dirs: &mut DirLimits,
    ) -> Option<Limit> {
        let v2 = self
            .v2
            .as_deref()
            .zip(v2_path)
            .and_then(|(root, p)| tightest(root, p, "memory.max", "memory.current", dirs));
        v2.or_else(|| {
            self.v1_memory
                .as_deref()
                .zip(v1_path)
                .and_then(|(root, p)| {
                    tightest(
                        root,
                        p,
                        "memory.limit_in_bytes",
                        "memory.usage_in_bytes",
                        dirs,
                    )
                })
        })
    }
}

/// A cgroup directory's (limit, usage), None without a limit.
type DirLimits = HashMap<PathBuf, Option<(u64, u64)>>;

fn tightest(
    root: &Path,
    cgroup: &str,
    max_file: &str,
    usage_file: &str,
    dirs: &mut DirLimits,
) -> Option<Limit> {
    let mut best: Option<Limit> = None;
    let mut dir = root.join(cgroup.trim_start_matches('/'));
    // Paths seen from inside a cgroup namespace start with /.. and name nothing here.
    if cgroup.contains("/..") || !dir.starts_with(root) {
        return None;
    }
    loop {
        let read = match dirs.get(&dir) {
            Some(known) => *known,
            None => {
                // Usage only where there is a limit: most directories have none.
                let read = read_limit(&dir.join(max_file))
                    .and_then(|limit| Some((limit, read_u64(&dir.join(usage_file))?)));
                dirs.insert(dir.clone(), read);
                read
            }
        };
        if let Some((limit, used)) = read {
            let candidate = Limit {
                limit_bytes: limit,
                used_bytes: used,
                source: LimitSource::Cgroup,
            };
            if best.is_none_or(|b| candidate.headroom() < b.headroom()) {
                best = Some(candidate);
            }
        }
        if dir == root || !dir.pop() {
            break;
        }
    }
    best
}

fn read_u64(path: &Path) -> Option<u64> {
    read_number(path, |t| t.parse().ok())
}

fn read_limit(path: &Path) -> Option<u64> {
    read_number(path, parse_limit)
}

/// A cgroup file holding one number, in one `read` into the stack: these are read for every
/// cgroup at every interval, and a whole-file read would ask its size and read twice.
fn read_number(path: &Path, parse: impl FnOnce(&str) -> Option<u64>) -> Option<u64> {
    use std::io::Read as _;
    // A u64 in decimal and its newline, or "max": longer is not a number file.
    let mut buf = [0u8; 32];
    let n = fs::File::open(path).ok()?.read(&mut buf).ok()?;
    if n == buf.len() {
        return None;
    }
    parse(std::str::from_utf8(&buf[..n]).ok()?.trim())
}

/// `max` (v2) or a value near 2^63 (v1) means no limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse().ok().filter(|v| *v < V1_UNLIMITED)
}

/// Cgroup limits read at most once per interval per cgroup directory. Keyed by v2 path, then
/// v1 path (absent as [`NO_PATH`]), so a process whose cgroups were seen costs no allocation.
#[derive(Default)]
pub struct LimitCache {
    /// Asked for every process at every interval: a fast hasher (see Cargo.toml).
    seen: foldhash::HashMap<String, foldhash::HashMap<String, Option<Limit>>>,
    dirs: DirLimits,
}

/// Stands for "no path" in [`LimitCache`]'s keys: no cgroup path contains a NUL.
const NO_PATH: &str = "\0";

impl LimitCache {
    pub fn get(
        &mut self,
        roots: &CgroupRoots,
        v2: Option<&str>,
        v1: Option<&str>,
    ) -> Option<Limit> {
        let (k2, k1) = (v2.unwrap_or(NO_PATH), v1.unwrap_or(NO_PATH));
        if let Some(known) = self.seen.get(k2).and_then(|m| m.get(k1)) {
            return *known;
        }
        let limit = roots.limit_with(v2, v1, &mut self.dirs);
        self.seen
            .entry(k2.to_string())
            .or_default()
            .insert(k1.to_string(), limit);
        limit
    }
}

/// The limit that will be hit first: the one with the least headroom.
pub fn nearest(a: Option<Limit>, b: Option<Limit>) -> Option<Limit> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.headroom() < x.headroom() { y } else { x }),
        (x, y) => x.or(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        let l: ConfiguredLimit = "comm=^celery$:2GiB".parse().unwrap();
        assert_eq!(l.bytes, 2 << 30);
        let l: ConfiguredLimit = "cmdline=worker --x:2097152KiB".parse().unwrap();
        assert_eq!(
            l.bytes,
            2 << 30,
            "Celery's --max-memory-per-child is in KiB"
        );
        assert!(matches!(
            "comm=x".parse::<ConfiguredLimit>(),
            Err(LimitError::NoSize(_))
        ));
        assert!(matches!(
            "comm=x:lots".parse::<ConfiguredLimit>(),
            Err(LimitError::BadSize { .. })
        ));
        assert!(matches!(
            "comm=x:0".parse::<ConfiguredLimit>(),
            Err(LimitError::BadSize { .. })
        ));
        assert!(matches!(
            "user=x:1GiB".parse::<ConfiguredLimit>(),
            Err(LimitError::BadMatcher(_))
        ));
    }

    #[test]
    fn unlimited_values_are_no_limit() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_limit("garbage"), None);
    }

    /// Mounts as `/proc/self/mountinfo` lists them.
    fn mounts(lines: &[&str]) -> Vec<MountInfo> {
        lines
            .iter()
            .map(|l| MountInfo::from_line(l).unwrap())
            .collect()
    }

    #[test]
    fn mountinfo_finds_both_hierarchies() {
        let m = mounts(&[
            "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate",
            "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
            "32 25 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu",
        ]);
        let r = CgroupRoots::from_mounts(&m);
        assert_eq!(r.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            r.v1_memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        let pure_v2 = CgroupRoots::from_mounts(&mounts(&[
            "1 2 0:3 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw",
        ]));
        assert_eq!(pure_v2.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(pure_v2.v1_memory.is_none());
    }

    fn fake_v2(dir: &Path, max: &str, current: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("memory.max"), max).unwrap();
        fs::write(dir.join("memory.current"), current).unwrap();
    }

    #[test]
    fn number_files_are_read_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("leakscope-numbers-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            path
        };
        assert_eq!(
            read_u64(&file("usage", "18446744073709551615\n")),
            Some(u64::MAX)
        );
        assert_eq!(read_limit(&file("v2", "max\n")), None);
        assert_eq!(read_limit(&file("v1", "9223372036854771712\n")), None);
        assert_eq!(read_limit(&file("set", "1048576\n")), Some(1 << 20));
        // Longer than any number: not taken for one, nor cut into one.
        assert_eq!(read_u64(&file("long", &"1".repeat(40))), None);
        assert_eq!(read_u64(&dir.join("absent")), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tightest_ancestor_wins() {
        let root = std::env::temp_dir().join(format!("leakscope-limits-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fake_v2(&root, "max\n", "0\n");
        fake_v2(&root.join("pod"), "1000\n", "900\n");
        fake_v2(&root.join("pod/ctr"), "5000\n", "800\n");
        let roots = CgroupRoots {
            v2: Some(root.clone()),
            v1_memory: None,
        };
        let l = roots.limit(Some("/pod/ctr"), None).unwrap();
        assert_eq!(
            (l.limit_bytes, l.used_bytes),
            (1000, 900),
            "the pod has 100 left, the container 4200"
        );
        assert_eq!(roots.limit(Some("/"), None), None);
        assert_eq!(roots.limit(Some("/../escape"), None), None);
        // Through the per-interval cache: the same answers, and absent paths are no path.
        let mut cache = LimitCache::default();
        for _ in 0..2 {
            assert_eq!(cache.get(&roots, Some("/pod/ctr"), None), Some(l));
            assert_eq!(cache.get(&roots, Some("/pod"), None), Some(l));
            assert_eq!(cache.get(&roots, None, None), None);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn nearest_is_least_headroom() {
        let a = Limit {
            limit_bytes: 100,
            used_bytes: 10,
            source: LimitSource::Cgroup,
        };
        let b = Limit {
            limit_bytes: 50,
            used_bytes: 30,
            source: LimitSource::Configured,
        };
        assert_eq!(nearest(Some(a), Some(b)), Some(b));
        assert_eq!(nearest(None, Some(a)), Some(a));
        assert_eq!(b.seconds_left(10.0), Some(2.0));
        assert_eq!(b.seconds_left(0.0), None);
    }
}
