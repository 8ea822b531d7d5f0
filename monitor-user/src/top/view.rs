//! What `leakscope top` shows, as plain data: the rows (groups, then processes), their order,
//! the filter, and the words and numbers in each cell. The terminal drawing (`tui.rs`) and the
//! text snapshot (`text.rs`) both render these rows, so the two never disagree.

use std::{cmp::Ordering, collections::BTreeMap, time::Duration};

use leakscope_api::{LimitSource, Pool, Process, Task, Verdict};

/// What an agent knew at one moment: the answers `top` reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub processes: Vec<Process>,
    /// Selected processes beyond the agent's `--max-processes`, not listed one by one.
    pub overflow_processes: u64,
    pub pools: Vec<Pool>,
    pub tasks: Vec<Task>,
    /// Parts of the snapshot the agent could not give (e.g. the task API), in words.
    pub problems: Vec<String>,
}

/// The kinds of groups, in the order they are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKind {
    /// A Docker Compose service (`project/service`).
    Compose,
    /// A container without Compose labels (its name, or its short id).
    Container,
    /// A systemd unit.
    Unit,
    /// A Kubernetes pod (`namespace/name`).
    Pod,
    /// A prefork pool (`parent pid/comm`).
    Pool,
}

impl GroupKind {
    pub const ALL: [GroupKind; 5] = [
        Self::Compose,
        Self::Container,
        Self::Unit,
        Self::Pod,
        Self::Pool,
    ];

    /// The KIND column: four characters at most.
    pub fn label(self) -> &'static str {
        match self {
            Self::Compose => "svc",
            Self::Container => "ctr",
            Self::Unit => "unit",
            Self::Pod => "pod",
            Self::Pool => "pool",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Compose => "Compose service",
            Self::Container => "container",
            Self::Unit => "systemd unit",
            Self::Pod => "pod",
            Self::Pool => "worker pool",
        }
    }
}

/// What a row stands for, to drill down into it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowKey {
    Group(GroupKind, String),
    Process(u32),
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: RowKey,
    pub name: String,
    /// Processes in a group (live children, for a pool); None for a process.
    pub members: Option<u64>,
    pub resident_bytes: u64,
    /// Bytes per second: the process's fitted rate, or the sum of its members'.
    pub rate: Option<f64>,
    /// The worst verdict (of the members, for a group).
    pub verdict: Option<Verdict>,
    pub confidence: Option<f64>,
    /// The soonest time to a limit (of the members).
    pub time_to_limit: Option<f64>,
    pub limit_source: Option<LimitSource>,
    /// A pool's recycles, shown instead of nothing in its verdict when no child is judged.
    pub recycles: Option<u64>,
    /// Whether a pool is suspected from its recycles.
    pub pool_suspected: bool,
    /// What `/` matches against, lower case.
    haystack: String,
}

impl Row {
    pub fn pid(&self) -> Option<u32> {
        match self.key {
            RowKey::Process(pid) => Some(pid),
            RowKey::Group(..) => None,
        }
    }

    pub fn kind_label(&self) -> &'static str {
        match &self.key {
            RowKey::Group(kind, _) => kind.label(),
            RowKey::Process(_) => "proc",
        }
    }

    pub fn is_group(&self) -> bool {
        matches!(self.key, RowKey::Group(..))
    }
}

/// The groups a process belongs to, most specific names first.
pub fn groups_of(p: &Process) -> Vec<(GroupKind, String)> {
    let mut out = Vec::new();
    if let Some(c) = &p.container {
        match (&c.compose_project, &c.compose_service) {
            (Some(project), Some(service)) => {
                out.push((GroupKind::Compose, format!("{project}/{service}")));
            }
            (None, Some(service)) => out.push((GroupKind::Compose, service.clone())),
            _ => out.push((GroupKind::Container, c.name.clone())),
        }
    } else if let Some(id) = &p.container_id
        && p.pod_uid.is_none()
    {
        // A container the Docker daemon could not name: its short id, as `docker ps` shows.
        out.push((GroupKind::Container, id.chars().take(12).collect()));
    }
    if let Some(unit) = &p.unit {
        out.push((GroupKind::Unit, unit.clone()));
    }
    if let Some(pod) = &p.pod {
        out.push((GroupKind::Pod, format!("{}/{}", pod.namespace, pod.name)));
    } else if let Some(uid) = &p.pod_uid {
        out.push((GroupKind::Pod, uid.chars().take(13).collect()));
    }
    if let Some(pool) = &p.pool {
        out.push((GroupKind::Pool, pool.clone()));
    }
    out
}

/// Verdicts ranked by how much they ask for attention.
fn severity(v: Option<Verdict>) -> u8 {
    match v {
        Some(Verdict::Leaking) => 3,
        Some(Verdict::Growing) => 2,
        Some(Verdict::Stable) => 1,
        None => 0,
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn process_row(p: &Process) -> Row {
    let names: Vec<String> = groups_of(p).into_iter().map(|(_, n)| n).collect();
    let verdict = p.leak.as_ref().map(|a| a.verdict);
    Row {
        key: RowKey::Process(p.pid),
        name: p.comm.clone(),
        members: None,
        resident_bytes: p.resident_bytes,
        rate: p
            .leak
            .as_ref()
            .and_then(|a| finite(a.rate_bytes_per_sec))
            .filter(|_| p.leak.as_ref().is_some_and(|a| a.samples > 0)),
        verdict,
        confidence: p.leak.as_ref().and_then(|a| finite(a.confidence)),
        time_to_limit: p.time_to_limit_seconds.and_then(finite),
        limit_source: p.memory_limit_source,
        recycles: None,
        pool_suspected: false,
        haystack: format!(
            "{} {} {} {} {}",
            p.comm,
            p.pid,
            names.join(" "),
            verdict.map_or("", Verdict::as_str),
            p.container.as_ref().map_or("", |c| c.image.as_str())
        )
        .to_lowercase(),
    }
}

fn group_row(kind: GroupKind, name: &str, members: &[&Process], pool: Option<&Pool>) -> Row {
    let rows: Vec<Row> = members.iter().map(|p| process_row(p)).collect();
    let worst = rows.iter().max_by(|a, b| {
        severity(a.verdict)
            .cmp(&severity(b.verdict))
            .then(cmp_f64(a.confidence, b.confidence))
    });
    let soonest = rows
        .iter()
        .filter(|r| r.time_to_limit.is_some())
        .min_by(|a, b| cmp_f64(a.time_to_limit, b.time_to_limit));
    let rates: Vec<f64> = rows.iter().filter_map(|r| r.rate).collect();
    Row {
        key: RowKey::Group(kind, name.to_string()),
        name: name.to_string(),
        members: Some(pool.map_or(members.len() as u64, |p| {
            p.children.max(members.len() as u64)
        })),
        resident_bytes: rows.iter().map(|r| r.resident_bytes).sum(),
        rate: (!rates.is_empty()).then(|| rates.iter().sum()),
        verdict: worst.and_then(|r| r.verdict),
        confidence: worst.and_then(|r| r.confidence),
        time_to_limit: soonest.and_then(|r| r.time_to_limit),
        limit_source: soonest.and_then(|r| r.limit_source),
        recycles: pool.map(|p| p.recycles),
        pool_suspected: pool.is_some_and(|p| p.leak_suspected),
        haystack: format!("{} {} {}", kind.label(), kind.describe(), name,).to_lowercase(),
    }
}

/// Every group (each kind in [`GroupKind::ALL`] order), then every process, unsorted within.
pub fn rows(snapshot: &Snapshot) -> Vec<Row> {
    let mut groups: BTreeMap<(GroupKind, String), Vec<&Process>> = BTreeMap::new();
    for p in &snapshot.processes {
        for key in groups_of(p) {
            groups.entry(key).or_default().push(p);
        }
    }
    // A pool with no listed child (all recycled, or its children not selected) still shows
    // when its recycles point at memory: they are the evidence. The agent sees every pool on
    // the host (shells, compilers); those that only recycle cleanly are left out.
    for pool in &snapshot.pools {
        if pool.leak_suspected || pool.recycles_for_memory > 0 {
            groups
                .entry((GroupKind::Pool, pool.pool.clone()))
                .or_default();
        }
    }
    let mut out: Vec<Row> = groups
        .iter()
        .map(|((kind, name), members)| {
            let pool = (*kind == GroupKind::Pool)
                .then(|| snapshot.pools.iter().find(|p| &p.pool == name))
                .flatten();
            group_row(*kind, name, members, pool)
        })
        .collect();
    out.extend(snapshot.processes.iter().map(process_row));
    out
}

/// The columns one can sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    TimeToLimit,
    Rss,
    Rate,
    Verdict,
    Name,
}

impl SortBy {
    /// The key that picks it, and the column's header.
    pub const KEYS: [(char, SortBy, &'static str); 5] = [
        ('t', SortBy::TimeToLimit, "TO LIMIT"),
        ('m', SortBy::Rss, "RSS"),
        ('g', SortBy::Rate, "GROWTH"),
        ('v', SortBy::Verdict, "VERDICT"),
        ('n', SortBy::Name, "NAME"),
    ];

    pub fn from_key(c: char) -> Option<Self> {
        Self::KEYS
            .iter()
            .find(|(k, ..)| *k == c)
            .map(|(_, s, _)| *s)
    }

    pub fn header(self) -> &'static str {
        Self::KEYS
            .iter()
            .find(|(_, s, _)| *s == self)
            .map_or("", |(.., h)| h)
    }
}

/// Absent values last, whatever the direction.
fn cmp_f64(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Orders rows: groups before processes always; within each, by `by` in its natural direction
/// (soonest limit, most memory, fastest growth, worst verdict, name A-Z), reversed when
/// `reverse`, with unknown limits and rates last either way; ties by memory, then name, so the
/// order is stable between refreshes.
pub fn sort(rows: &mut [Row], by: SortBy, reverse: bool) {
    let absent = |r: &Row| match by {
        SortBy::TimeToLimit => r.time_to_limit.is_none(),
        SortBy::Rate => r.rate.is_none(),
        _ => false,
    };
    rows.sort_by(|a, b| {
        let primary = match by {
            SortBy::TimeToLimit => cmp_f64(a.time_to_limit, b.time_to_limit),
            SortBy::Rss => b.resident_bytes.cmp(&a.resident_bytes),
            SortBy::Rate => cmp_f64(b.rate, a.rate),
            SortBy::Verdict => attention(b)
                .cmp(&attention(a))
                .then(severity(b.verdict).cmp(&severity(a.verdict)))
                .then(cmp_f64(b.confidence, a.confidence)),
            SortBy::Name => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
        };
        let primary = if reverse { primary.reverse() } else { primary };
        b.is_group()
            .cmp(&a.is_group())
            .then(absent(a).cmp(&absent(b)))
            .then(primary)
            .then(b.resident_bytes.cmp(&a.resident_bytes))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Rows whose name, pid, kind, group names or verdict contain every word of `filter`,
/// case-insensitively.
pub fn filter(rows: Vec<Row>, filter: &str) -> Vec<Row> {
    let words: Vec<String> = filter.split_whitespace().map(str::to_lowercase).collect();
    if words.is_empty() {
        return rows;
    }
    rows.into_iter()
        .filter(|r| words.iter().all(|w| r.haystack.contains(w.as_str())))
        .collect()
}

/// The rows shown for `snapshot` with this sort and filter.
pub fn table(snapshot: &Snapshot, by: SortBy, reverse: bool, text: &str) -> Vec<Row> {
    let mut rows = filter(rows(snapshot), text);
    sort(&mut rows, by, reverse);
    rows
}

/// The processes of a group, as rows (largest first).
pub fn members(snapshot: &Snapshot, kind: GroupKind, name: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = snapshot
        .processes
        .iter()
        .filter(|p| groups_of(p).iter().any(|(k, n)| *k == kind && n == name))
        .map(process_row)
        .collect();
    sort(&mut rows, SortBy::Rss, false);
    rows
}

/// The task types a process ran recently (its pid among their recent jobs), suspected first.
pub fn tasks_of(snapshot: &Snapshot, pid: u32) -> Vec<&Task> {
    let mut out: Vec<&Task> = snapshot
        .tasks
        .iter()
        .filter(|t| t.recent_jobs.iter().any(|j| j.pid == pid))
        .collect();
    out.sort_by(|a, b| {
        b.leak_suspected
            .cmp(&a.leak_suspected)
            .then(b.retained_bytes_per_run.cmp(&a.retained_bytes_per_run))
            .then_with(|| a.task.cmp(&b.task))
    });
    out
}

// ---- cells ----

/// Bytes in at most 6 characters: `812K`, `12.3M`, `4.1G`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// Signed bytes, as `bytes` with a sign.
pub fn signed_bytes(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "+" };
    format!("{sign}{}", bytes(n.unsigned_abs()))
}

/// A growth rate in the unit that reads best: per second for fast growth, per minute or per
/// hour for the slow leaks that take a night to fill a limit. Blank when there is no fit.
pub fn rate(r: Option<f64>) -> String {
    let Some(r) = r else {
        return "-".into();
    };
    let sign = if r < 0.0 { "-" } else { "+" };
    let a = r.abs();
    const MIB: f64 = 1024.0 * 1024.0;
    let (value, per) = if a >= MIB {
        (a, "s")
    } else if a * 60.0 >= MIB {
        (a * 60.0, "m")
    } else {
        (a * 3600.0, "h")
    };
    if value < 1.0 {
        return "0".into();
    }
    format!("{sign}{}/{per}", bytes(value as u64))
}

/// A pool suspected from its recycles says so, unless a child is called leaking outright:
/// its children may each look stable, living too short for a verdict of their own.
pub fn verdict(row: &Row) -> String {
    match (row.verdict, row.pool_suspected) {
        (Some(Verdict::Leaking), _) => Verdict::Leaking.as_str().into(),
        (_, true) => "suspect".into(),
        (Some(v), false) => v.as_str().into(),
        (None, false) => "-".into(),
    }
}

/// How much a row asks for attention: its verdict, a suspected pool as much as a leak.
fn attention(row: &Row) -> u8 {
    if row.pool_suspected {
        severity(Some(Verdict::Leaking))
    } else {
        severity(row.verdict)
    }
}

pub fn confidence(c: Option<f64>) -> String {
    c.map_or("-".into(), |c| {
        format!("{:.0}%", (c * 100.0).clamp(0.0, 100.0))
    })
}

/// Time to a limit, compact: `45s`, `12m05s`, `3h20m`, `2d04h`; `-` when none is known.
pub fn time_to_limit(t: Option<f64>) -> String {
    match t {
        None => "-".into(),
        Some(t) if t <= 0.0 => "now".into(),
        Some(t) if t > 365.0 * 86_400.0 => ">1y".into(),
        Some(t) => crate::investigate::report::human_duration(Duration::from_secs_f64(t.max(1.0))),
    }
}

pub fn limit_source(s: Option<LimitSource>) -> &'static str {
    match s {
        Some(LimitSource::Cgroup) => "cgroup",
        Some(LimitSource::Configured) => "--limit",
        None => "-",
    }
}

/// The columns of the table: header, width (0 = takes the rest), right-aligned. Widths leave
/// room for the sort arrow after a header; in 80 columns NAME gets 18.
pub const COLUMNS: [(&str, u16, bool); 9] = [
    ("KIND", 4, false),
    ("NAME", 0, false),
    ("PID", 7, true),
    ("RSS", 6, true),
    ("GROWTH", 9, true),
    ("VERDICT", 8, false),
    ("CONF", 4, true),
    ("TO LIMIT", 9, true),
    ("LIMIT", 7, false),
];

/// A row's cells, in [`COLUMNS`] order.
pub fn cells(row: &Row) -> [String; 9] {
    let pid = match (row.pid(), row.members) {
        (Some(pid), _) => pid.to_string(),
        (None, Some(n)) => format!("{n}×"),
        (None, None) => String::new(),
    };
    [
        row.kind_label().into(),
        row.name.clone(),
        pid,
        bytes(row.resident_bytes),
        rate(row.rate),
        verdict(row),
        confidence(row.confidence),
        time_to_limit(row.time_to_limit),
        limit_source(row.limit_source).into(),
    ]
}

/// `s` safe to put on a terminal: process and task names, image names and symbols come from
/// the processes being watched, and a control character in them (an escape sequence in a
/// `comm` set with prctl) must not reach the terminal. Each shows as `?`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Cuts `s` to `width` characters, marking the cut with `…`.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use leakscope_api::{
        Assessment, RecycleReason, RssBytes, RssSources, Runtime, Series, Source,
        processes::ContainerName,
    };

    use super::*;

    const MIB: u64 = 1 << 20;

    pub(crate) fn process(pid: u32, comm: &str, rss_mib: u64) -> Process {
        Process {
            pid,
            ppid: 1,
            comm: comm.into(),
            start_time_seconds: 1.7e9,
            cgroup_id: 1,
            cgroup: None,
            runtime: Runtime::Unknown,
            container_id: None,
            container: None,
            pod_uid: None,
            pod: None,
            qos: None,
            unit: None,
            rss_bytes: RssBytes {
                anon: rss_mib * MIB,
                ..RssBytes::default()
            },
            resident_bytes: rss_mib * MIB,
            peak_rss_bytes: rss_mib * MIB,
            leak: None,
            memory_limit_bytes: None,
            memory_limit_source: None,
            time_to_limit_seconds: None,
            pool: None,
            source: RssSources {
                anon: Source::Kernel,
                file: Source::Kernel,
                shmem: Source::Kernel,
                swap: Source::Kernel,
            },
            series: Series::Own,
            threads: None,
            threads_mapped_off: None,
            rss_error_bytes: Some(0),
            growth_sampled: false,
        }
    }

    pub(crate) fn judged(mut p: Process, verdict: Verdict, rate: f64, ttl: Option<f64>) -> Process {
        p.leak = Some(Assessment {
            verdict,
            confidence: 0.9,
            rate_bytes_per_sec: rate,
            window_secs: 600.0,
            floor_rise_bytes: rate * 600.0,
            consistency: 1.0,
            samples: 600,
        });
        p.time_to_limit_seconds = ttl;
        p.memory_limit_source = ttl.map(|_| LimitSource::Cgroup);
        p.memory_limit_bytes = ttl.map(|_| 1 << 30);
        p
    }

    pub(crate) fn pool(name: &str, children: u64, recycles: u64) -> Pool {
        let (parent, comm) = name.split_once('/').unwrap();
        Pool {
            pool: name.into(),
            parent_pid: parent.parse().unwrap(),
            comm: comm.into(),
            recycles,
            recycles_by_reason: [(RecycleReason::Memory, recycles)].into(),
            recycles_for_memory: recycles,
            leak_suspected: recycles > 0,
            evidence: (recycles > 0).then(|| format!("{recycles} recycled for memory")),
            exits: Vec::new(),
            children,
            ..Pool::default()
        }
    }

    /// A Compose service with a leaking worker pool, a stable web process in a systemd unit,
    /// and a pool whose children all recycled.
    pub(crate) fn snapshot() -> Snapshot {
        let compose = Some(ContainerName {
            name: "shop-worker-1".into(),
            image: "shop:latest".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("worker".into()),
        });
        let mut parent = process(100, "celery", 80);
        parent.container = compose.clone();
        let mut a = judged(
            process(101, "celery", 400),
            Verdict::Leaking,
            2.0 * MIB as f64,
            Some(300.0),
        );
        a.container = compose.clone();
        a.pool = Some("100/celery".into());
        a.ppid = 100;
        let mut b = judged(
            process(102, "celery", 300),
            Verdict::Growing,
            1000.0,
            Some(9000.0),
        );
        b.container = compose;
        b.pool = Some("100/celery".into());
        b.ppid = 100;
        let mut web = judged(process(200, "gunicorn", 900), Verdict::Stable, 0.0, None);
        web.unit = Some("web.service".into());
        Snapshot {
            processes: vec![parent, a, b, web],
            overflow_processes: 0,
            pools: vec![
                pool("100/celery", 2, 3),
                pool("300/rq", 0, 5),
                pool("400/bash", 1, 0),
            ],
            tasks: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn names(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|r| format!("{} {}", r.kind_label(), r.name))
            .collect()
    }

    #[test]
    fn groups_come_first_with_their_members_summed_and_worst_verdict() {
        let rows = table(&snapshot(), SortBy::TimeToLimit, false, "");
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind_label()).collect();
        let first_proc = kinds.iter().position(|k| *k == "proc").unwrap();
        assert!(kinds[..first_proc].iter().all(|k| *k != "proc"));
        assert!(kinds[first_proc..].iter().all(|k| *k == "proc"));
        let svc = rows.iter().find(|r| r.name == "shop/worker").unwrap();
        assert_eq!(svc.kind_label(), "svc");
        assert_eq!(svc.members, Some(3));
        assert_eq!(svc.resident_bytes, 780 * MIB);
        assert_eq!(svc.verdict, Some(Verdict::Leaking));
        assert_eq!(svc.time_to_limit, Some(300.0));
        assert_eq!(svc.limit_source, Some(LimitSource::Cgroup));
        assert_eq!(svc.rate, Some(2.0 * MIB as f64 + 1000.0));
        let pool = rows.iter().find(|r| r.name == "100/celery").unwrap();
        assert_eq!((pool.members, pool.recycles), (Some(2), Some(3)));
        assert_eq!(
            verdict(pool),
            "leaking",
            "a child called leaking outright says so"
        );
        // A pool with no live child still shows, suspected from its recycles.
        let rq = rows.iter().find(|r| r.name == "300/rq").unwrap();
        assert_eq!((rq.members, rq.resident_bytes), (Some(0), 0));
        assert_eq!(verdict(rq), "suspect");
        assert!(rows.iter().any(|r| r.name == "web.service"));
        // A pool of unselected processes that only recycles cleanly is noise.
        assert!(!rows.iter().any(|r| r.name == "400/bash"));
    }

    #[test]
    fn default_order_is_soonest_limit_first_unknown_last() {
        let rows = table(&snapshot(), SortBy::TimeToLimit, false, "");
        let procs: Vec<u32> = rows.iter().filter_map(Row::pid).collect();
        assert_eq!(&procs[..2], &[101, 102]);
        // Unknown limits after, by memory.
        assert_eq!(&procs[2..], &[200, 100]);
        let reversed = table(&snapshot(), SortBy::TimeToLimit, true, "");
        let procs: Vec<u32> = reversed.iter().filter_map(Row::pid).collect();
        assert_eq!(procs[0], 102, "{procs:?}");
        assert!(reversed[0].is_group());
    }

    #[test]
    fn every_column_sorts() {
        let s = snapshot();
        let pids = |by| -> Vec<u32> {
            table(&s, by, false, "")
                .iter()
                .filter_map(Row::pid)
                .collect()
        };
        assert_eq!(pids(SortBy::Rss), [200, 101, 102, 100]);
        assert_eq!(pids(SortBy::Rate), [101, 102, 200, 100]);
        assert_eq!(pids(SortBy::Verdict)[..3], [101, 102, 200]);
        assert_eq!(pids(SortBy::Name), [101, 102, 100, 200]);
        let rev: Vec<u32> = table(&s, SortBy::Rate, true, "")
            .iter()
            .filter_map(Row::pid)
            .collect();
        assert_eq!(*rev.last().unwrap(), 100, "no rate stays last: {rev:?}");
        assert_eq!(SortBy::from_key('m'), Some(SortBy::Rss));
        assert_eq!(SortBy::from_key('x'), None);
    }

    #[test]
    fn the_filter_matches_names_pids_groups_and_verdicts() {
        let s = snapshot();
        let f = |text| names(&table(&s, SortBy::Name, false, text));
        assert_eq!(f("gunicorn"), ["proc gunicorn"].map(String::from));
        assert_eq!(
            f("web"),
            ["unit web.service", "proc gunicorn"].map(String::from)
        );
        assert_eq!(f("101"), ["proc celery"].map(String::from));
        assert_eq!(f("LEAKING"), ["proc celery"].map(String::from));
        assert_eq!(f("shop worker").len(), 1 + 3, "{:?}", f("shop worker"));
        assert!(f("nothing-like-it").is_empty());
        assert_eq!(f("  ").len(), table(&s, SortBy::Name, false, "").len());
    }

    #[test]
    fn members_and_tasks_of_a_drill_down() {
        let s = snapshot();
        let m = members(&s, GroupKind::Pool, "100/celery");
        assert_eq!(
            m.iter().filter_map(Row::pid).collect::<Vec<_>>(),
            [101, 102]
        );
        assert!(members(&s, GroupKind::Pool, "300/rq").is_empty());
        assert!(tasks_of(&s, 101).is_empty());
    }

    #[test]
    fn cells_fit_their_columns() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(812 * 1024), "812K");
        assert_eq!(bytes(12 * MIB + MIB / 3), "12M");
        assert_eq!(bytes(4 * 1024 * MIB + 100 * MIB), "4.1G");
        assert_eq!(rate(Some(2.0 * MIB as f64)), "+2.0M/s");
        assert_eq!(rate(Some(100.0 * 1024.0)), "+5.9M/m");
        assert_eq!(rate(Some(-10.0)), "-35K/h");
        assert_eq!(rate(Some(0.0)), "0");
        assert_eq!(rate(None), "-");
        assert_eq!(time_to_limit(Some(42.4)), "42s");
        assert_eq!(time_to_limit(Some(12_000.0)), "3h20m");
        assert_eq!(time_to_limit(Some(-1.0)), "now");
        assert_eq!(time_to_limit(Some(1e12)), ">1y");
        assert_eq!(time_to_limit(None), "-");
        assert_eq!(confidence(Some(0.876)), "88%");
        assert_eq!(limit_source(Some(LimitSource::Configured)), "--limit");
        for row in rows(&snapshot()) {
            for (cell, (name, width, _)) in cells(&row).iter().zip(COLUMNS) {
                if width > 0 {
                    assert!(
                        cell.chars().count() <= width as usize,
                        "{name}: {cell:?} wider than {width}"
                    );
                }
            }
        }
        assert_eq!(fit("worker_wrapper.service", 10), "worker_wr…");
        assert_eq!(printable("evil\x1b]0;owned\x07"), "evil?]0;owned?");
        assert_eq!(fit("short", 10), "short");
    }
}
