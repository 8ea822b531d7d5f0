//! The agent as Prometheus sees it: Debian's real `prometheus` scrapes a real agent watching
//! a real leak, evaluates the shipped rules file, and fires the alert; and every metric the
//! dashboard and the rules name is one the agent exports.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{Agent, Spawned, free_port, kernel_tests_enabled, scenario_bin, wait_for};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The Prometheus server binary: $PROMETHEUS_BIN, else `prometheus` on PATH.
fn prometheus_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    })
}

/// A Prometheus server on a free loopback port with its own data directory, killed and
/// cleaned up when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    http: ureq::Agent,
}

impl Prometheus {
    fn start(bin: &Path, target: SocketAddr, rules: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leakscope-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus data dir");
        std::fs::write(dir.join("rules.yml"), rules).expect("write rules");
        // job="leakscope" as the ServiceMonitor names it, so LeakscopeAgentDown's selector
        // is exercised as shipped.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: leakscope\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let mut p = Self {
            child,
            addr,
            dir,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited at start ({status}):\n{}", p.log());
            }
            if p.get("/-/ready").is_some_and(|(s, _)| s == 200) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path_and_query: &str) -> Option<(u16, String)> {
        let mut resp = self
            .http
            .get(&format!("http://{}{path_and_query}", self.addr))
            .call()
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.body_mut().read_to_string().ok()?))
    }

    /// `data` of a successful API answer.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let mut req = self.http.get(&format!("http://{}{path}", self.addr));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut resp = req.call().ok()?;
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", promql)])
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts", &[])
            .and_then(|d| d["alerts"].as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `for:` the test gives LeakscopeLeakSuspected: the shipped 15m fits no test run.
const TEST_FOR: &str = "5s";

/// The shipped rules file with one change: LeakscopeLeakSuspected's `for:` shortened to
/// [`TEST_FOR`]. Done on the parsed YAML, and checked to have happened exactly once, so every
/// expression, label and annotation Prometheus evaluates is the shipped one.
fn rules_for_test() -> String {
    let path = repo().join("deploy/prometheus/leakscope-rules.yml");
    let text = std::fs::read_to_string(&path).expect("read the rules file");
    let mut doc: serde_norway::Value = serde_norway::from_str(&text).expect("rules YAML");
    let mut changed = 0;
    for group in doc["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            if rule["alert"].as_str() == Some("LeakscopeLeakSuspected") {
                assert!(
                    rule["for"].is_string(),
                    "LeakscopeLeakSuspected has no `for`"
                );
                rule["for"] = TEST_FOR.into();
                changed += 1;
            }
        }
    }
    assert_eq!(
        changed,
        1,
        "LeakscopeLeakSuspected not found once in {}",
        path.display()
    );
    serde_norway::to_string(&doc).expect("serialize rules")
}

#[test]
fn prometheus_scrapes_the_leak_and_fires_the_alert() {
    if !kernel_tests_enabled("prometheus_scrapes_the_leak_and_fires_the_alert") {
        return;
    }
    let Some(bin) = prometheus_bin() else {
        let why = "prometheus_scrapes_the_leak_and_fires_the_alert: no `prometheus` binary \
                   (Debian package `prometheus`; `cargo xtask setup --tests` installs it)";
        assert!(!ci(), "{why}: under CI=true this test may not be skipped");
        eprintln!("SKIPPED {why}");
        return;
    };
    let agent = Agent::start(&[
        "--detector-time-scale",
        "0.1",
        "--match",
        "comm=^leak_linear$",
    ]);
    let prom = Prometheus::start(&bin, agent.addr, &rules_for_test());
    let leaker = Spawned::new(Command::new(scenario_bin("leak_linear")).args([
        "--rate-mib-per-min",
        "10",
        "--time-scale",
        "0.1",
    ]));
    let pid = leaker.pid().to_string();
    let instance = agent.addr.to_string();

    // The verdict, through Prometheus: 180 nominal seconds (18 s here) plus scrape delay.
    let suspected = format!("leakscope_process_leak_suspected{{pid=\"{pid}\"}} == 1");
    let series =
        wait_for(Duration::from_secs(40), || prom.query(&suspected).pop()).unwrap_or_else(|| {
            panic!(
                "Prometheus never saw {suspected}: {:?}\nagent: {:?}\n{}\nprometheus log:\n{}",
                prom.query(&format!(
                    "leakscope_process_leak_suspected{{pid=\"{pid}\"}}"
                )),
                agent.process(leaker.pid()),
                agent.log(),
                prom.log()
            )
        });
    let labels = &series["metric"];
    assert_eq!(labels["comm"], "leak_linear", "{series}");
    assert_eq!(labels["job"], "leakscope", "{series}");
    assert_eq!(labels["instance"], instance.as_str(), "{series}");

    // Pending, then firing once the condition has held for TEST_FOR.
    let mut states = BTreeSet::new();
    let alert = wait_for(Duration::from_secs(30), || {
        let a = prom.alerts().into_iter().find(|a| {
            a["labels"]["alertname"] == "LeakscopeLeakSuspected"
                && a["labels"]["pid"] == pid.as_str()
        })?;
        states.insert(a["state"].as_str().unwrap_or_default().to_string());
        (a["state"] == "firing").then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "alert never fired (states seen {states:?}): {:?}",
            prom.alerts()
        )
    });
    eprintln!("alert states seen: {states:?}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    assert_eq!(alert["labels"]["comm"], "leak_linear", "{alert}");
    // The annotations' queries ran against the real series.
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert_eq!(
        summary,
        format!("Memory leak suspected in leak_linear (pid {pid}) on {instance}"),
        "{alert}"
    );
    let description = alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    for part in ["Confidence ", "RSS grows by ", "Anonymous RSS is "] {
        assert!(
            description.contains(part),
            "{part:?} missing: {description}"
        );
    }

    // The recording rules work on the real label set.
    let leaking = prom.query("instance:leakscope_process_leak_suspected:sum");
    assert!(
        leaking
            .iter()
            .any(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)),
        "{leaking:?}"
    );
    let rss = prom.query("instance:leakscope_process_rss_bytes:sum");
    assert!(!rss.is_empty(), "recording rule empty");
    // A healthy agent, scraped: nothing else fires.
    let up = prom.query("up{job=\"leakscope\"} == 1");
    assert_eq!(up.len(), 1, "{up:?}");
    for a in prom.alerts() {
        let name = a["labels"]["alertname"].as_str().unwrap_or_default();
        assert!(
            name == "LeakscopeLeakSuspected"
                || name == "LeakscopeAgentDegraded" && a["state"] == "pending",
            "unexpected alert {a}"
        );
    }
}

// ---------------------------------------------------------------- metric names

const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
];

/// Metric names in a PromQL expression: identifiers that are not keywords, functions,
/// label names (inside `{}` or the lists after by/without/on/ignoring/group_*), strings or
/// durations.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let b: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < b.len() {
        let c = b[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < b.len() && b[i] != close {
                    if b[i] == '"' {
                        i += 1;
                        while i < b.len() && b[i] != '"' {
                            i += if b[i] == '\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_list => {
                while i < b.len() && b[i] != ')' {
                    i += 1;
                }
                skip_list = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let prev = i.checked_sub(1).map(|p| b[p]);
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                    i += 1;
                }
                // Part of a number or duration (5m, 1e9) or a Grafana variable ($node).
                if prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == '.' || p == '$') {
                    continue;
                }
                let word: String = b[start..i].iter().collect();
                let mut j = i;
                while j < b.len() && b[j].is_whitespace() {
                    j += 1;
                }
                let call = j < b.len() && b[j] == '(';
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
                {
                    skip_list = call;
                    continue;
                }
                if call || KEYWORDS.contains(&word.as_str()) {
                    continue;
                }
                out.insert(word);
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn promql_names_are_found() {
    let n = |e: &str| promql_metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        n(r#"sum without (pid, comm) (leakscope_process_rss_bytes{kind!="swap"})"#),
        ["leakscope_process_rss_bytes"]
    );
    assert_eq!(
        n("increase(a_total[5m]) > 0 or (a_total unless a_total offset 5m)"),
        ["a_total"]
    );
    assert_eq!(
        n(
            r#"histogram_quantile(0.95, sum by (task, le) (rate(x_bucket{n=~"$node"}[$__rate_interval])))"#
        ),
        ["x_bucket"]
    );
    assert_eq!(
        n(
            r#"label_replace(sum by (c) (m{a="}"}), "container", "$1", "container_id", "(.{12}).*") * 1e9"#
        ),
        ["m"]
    );
    assert_eq!(n("up{job=\"leakscope\"} == 0"), ["up"]);
}

/// Every `leakscope_…`-looking word in annotation templates (their `query` calls and prose).
fn template_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.contains("leakscope_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    let exported: BTreeSet<&str> = leakscope_api::metrics::ALL.iter().copied().collect();
    let rules_text = std::fs::read_to_string(repo().join("deploy/prometheus/leakscope-rules.yml"))
        .expect("rules file");
    let rules: serde_norway::Value = serde_norway::from_str(&rules_text).expect("rules YAML");
    let mut recorded = BTreeSet::new();
    let mut uses: Vec<(String, String)> = Vec::new(); // (where, name)
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let what = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?")
                .to_string();
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_string());
            }
            let expr = rule["expr"].as_str().expect("expr");
            let names = promql_metric_names(expr);
            assert!(!names.is_empty(), "rule {what}: no metric in {expr}");
            uses.extend(names.into_iter().map(|n| (format!("rule {what}"), n)));
            if let Some(ann) = rule["annotations"].as_mapping() {
                for v in ann.values().filter_map(|v| v.as_str()) {
                    uses.extend(
                        template_names(v)
                            .into_iter()
                            .map(|n| (format!("annotation of {what}"), n)),
                    );
                }
            }
        }
    }

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/leakscope-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    fn panels(v: &Value, out: &mut Vec<(String, String)>) {
        for p in v.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {:?}", p["title"]), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&dash["panels"], &mut exprs);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or("");
        // label_values(<selector>, <label>): the selector's metric.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map_or(q, |(sel, _)| sel);
        exprs.push((
            format!("variable ${}", v["name"].as_str().unwrap_or("?")),
            inner.to_string(),
        ));
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            exprs.push((format!("annotation {:?}", a["name"]), e.to_string()));
        }
    }
    assert!(exprs.len() > 20, "dashboard queries not found: {exprs:?}");
    for (where_, e) in &exprs {
        let names = promql_metric_names(e);
        assert!(!names.is_empty(), "{where_}: no metric in {e}");
        uses.extend(names.into_iter().map(|n| (where_.clone(), n)));
    }

    let known = |n: &str| {
        exported.contains(n)
            || recorded.contains(n)
            || n == "up"
            // Histogram and summary series of an exported family.
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| n.strip_suffix(s).is_some_and(|base| exported.contains(base)))
    };
    let unknown: BTreeSet<_> = uses.iter().filter(|(_, n)| !known(n)).collect();
    assert!(
        unknown.is_empty(),
        "names the agent does not export (leakscope_api::metrics::ALL):\n{}",
        unknown
            .iter()
            .map(|(w, n)| format!("  {w}: {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
