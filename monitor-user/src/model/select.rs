//! Which processes get series of their own: `--match` filters, then a cap, largest first.

use std::str::FromStr;

use regex::Regex;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatchError {
    #[error("`{0}` is not KEY=VALUE; use comm=REGEX, cmdline=REGEX, cgroup=REGEX or pid=N")]
    NoEquals(String),
    #[error("unknown match key `{0}`; use comm, cmdline, cgroup or pid")]
    UnknownKey(String),
    #[error("invalid regex for {key}: {detail}")]
    BadRegex { key: String, detail: String },
    #[error("invalid pid `{0}`: expected a positive integer")]
    BadPid(String),
}

/// One `--match` argument.
#[derive(Clone, Debug)]
pub enum Matcher {
    Comm(Regex),
    /// Matched against the command line, which is never stored or exported.
    Cmdline(Regex),
    CgroupPath(Regex),
    Pid(u32),
}

impl FromStr for Matcher {
    type Err = MatchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| MatchError::NoEquals(s.to_string()))?;
        let regex = || {
            Regex::new(value).map_err(|e| MatchError::BadRegex {
                key: key.to_string(),
                detail: e.to_string(),
            })
        };
        match key {
            "comm" => Ok(Self::Comm(regex()?)),
            "cmdline" => Ok(Self::Cmdline(regex()?)),
            "cgroup" => Ok(Self::CgroupPath(regex()?)),
            "pid" => value
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .map(Self::Pid)
                .ok_or_else(|| MatchError::BadPid(value.to_string())),
            other => Err(MatchError::UnknownKey(other.to_string())),
        }
    }
}

/// What a matcher may look at; the expensive parts are fetched only when a matcher needs them.
pub trait Candidate {
    fn pid(&self) -> u32;
    fn comm(&self) -> &str;
    fn cmdline(&self) -> Option<String>;
    fn cgroup_path(&self) -> Option<String>;
}

#[derive(Clone, Debug, Default)]
pub struct Selector {
    matchers: Vec<Matcher>,
}

impl Selector {
    pub fn new(matchers: Vec<Matcher>) -> Self {
        Self { matchers }
    }

    /// No matcher selects every process; otherwise any matching one does.
    pub fn selects(&self, c: &impl Candidate) -> bool {
        self.matchers.is_empty()
            || self.matchers.iter().any(|m| match m {
                Matcher::Comm(r) => r.is_match(c.comm()),
                Matcher::Cmdline(r) => c.cmdline().is_some_and(|l| r.is_match(&l)),
                Matcher::CgroupPath(r) => c.cgroup_path().is_some_and(|p| r.is_match(&p)),
                Matcher::Pid(p) => *p == c.pid(),
            })
    }

    pub fn needs_cgroup(&self) -> bool {
        self.matchers
            .iter()
            .any(|m| matches!(m, Matcher::CgroupPath(_)))
    }
}

/// Splits `items` into the `cap` largest by `size` and the rest.
pub fn cap_largest<T>(mut items: Vec<T>, cap: usize, size: impl Fn(&T) -> u64) -> (Vec<T>, Vec<T>) {
    items.sort_by_key(|t| std::cmp::Reverse(size(t)));
    let rest = items.split_off(cap.min(items.len()));
    (items, rest)
}

/// A live process as `--match`-style matchers see it: its command line is read only when a
/// matcher asks for it, and its cgroup path too unless the caller already knows it.
pub struct ProcCandidate {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
}

impl Candidate for ProcCandidate {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn comm(&self) -> &str {
        &self.comm
    }
    fn cmdline(&self) -> Option<String> {
        crate::host::proc::cmdline(self.pid)
    }
    fn cgroup_path(&self) -> Option<String> {
        self.cgroup
            .clone()
            .or_else(|| crate::host::proc::cgroup_paths(self.pid).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P {
        pid: u32,
        comm: &'static str,
        cmdline: &'static str,
        cgroup: &'static str,
    }

    impl Candidate for P {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn comm(&self) -> &str {
            self.comm
        }
        fn cmdline(&self) -> Option<String> {
            Some(self.cmdline.into())
        }
        fn cgroup_path(&self) -> Option<String> {
            Some(self.cgroup.into())
        }
    }

    const CELERY: P = P {
        pid: 42,
        comm: "celery",
        cmdline: "celery -A app worker --password=hunter2",
        cgroup: "/kubepods.slice/pod1",
    };
    const REDIS: P = P {
        pid: 7,
        comm: "redis-server",
        cmdline: "redis-server *:6379",
        cgroup: "/system.slice/redis.service",
    };

    fn sel(args: &[&str]) -> Selector {
        Selector::new(args.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn empty_selects_everything() {
        assert!(sel(&[]).selects(&CELERY) && sel(&[]).selects(&REDIS));
    }

    #[test]
    fn each_key_selects_its_process_only() {
        for args in [
            &["comm=^cel"][..],
            &["cmdline=worker"],
            &["cgroup=kubepods"],
            &["pid=42"],
        ] {
            assert!(sel(args).selects(&CELERY), "{args:?}");
            assert!(!sel(args).selects(&REDIS), "{args:?}");
        }
        assert!(
            sel(&["pid=7", "comm=^cel"]).selects(&REDIS),
            "matchers are OR-ed"
        );
    }

    #[test]
    fn bad_matchers_say_what_is_wrong() {
        let e = |s: &str| s.parse::<Matcher>().unwrap_err().to_string();
        assert!(e("comm").contains("KEY=VALUE"));
        assert!(e("user=root").contains("unknown match key `user`"));
        assert!(e("comm=(").contains("invalid regex for comm"));
        assert!(e("pid=abc").contains("invalid pid"));
        assert!(e("pid=0").contains("invalid pid"));
    }

    #[test]
    fn cap_keeps_the_largest() {
        let (kept, rest) = cap_largest(vec![5u64, 50, 1, 30], 2, |v| *v);
        assert_eq!(kept, [50, 30]);
        assert_eq!(rest, [5, 1]);
        let (kept, rest) = cap_largest(vec![1u64], 10, |v| *v);
        assert_eq!((kept.len(), rest.len()), (1, 0));
    }
}
