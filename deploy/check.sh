#!/usr/bin/env bash
# Checks everything under deploy/ that can be checked without a cluster:
#   - promtool check rules + promtool test rules (prometheus/)
#   - kubernetes/prometheusrule.yaml spec.groups == prometheus/leakscope-rules.yml groups
#   - every alert has a firing and a non-firing unit test
#   - every YAML file parses, the dashboard JSON parses
#   - dashboard/rule queries parse as PromQL and use only leakscope's metric names
#   - kustomization lists every manifest; DaemonSet security invariants
#   - optional: `kubectl kustomize` build, strict field check with the
#     `kubernetes` Python package (skipped when not installed)
#
# Needs: promtool (Debian: apt-get install prometheus), python3 with PyYAML
# (pip install pyyaml). Runs from any cwd. Exits non-zero on any failure.
set -uo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$DEPLOY_DIR" || exit 2

passed=0
failed=0
failures=()

ok() {
    passed=$((passed + 1))
    echo "ok:   $1"
}
fail() {
    failed=$((failed + 1))
    failures+=("$1")
    echo "FAIL: $1"
}
# run NAME CMD...: runs CMD, shows its output only when it fails.
run() {
    local name="$1"
    shift
    local out
    if out="$("$@" 2>&1)"; then
        ok "$name"
    else
        # shellcheck disable=SC2001 # indent every line, not one substitution
        echo "$out" | sed 's/^/      /'
        fail "$name"
    fi
}

if ! command -v promtool >/dev/null 2>&1; then
    fail "promtool not found (apt-get install prometheus)"
else
    run "promtool check rules prometheus/leakscope-rules.yml" \
        promtool check rules prometheus/leakscope-rules.yml
    # promtool resolves rule_files relative to the test file.
    run "promtool test rules prometheus/leakscope-rules.test.yml" \
        promtool test rules prometheus/leakscope-rules.test.yml
fi

if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    fail "python3 with PyYAML not found (pip install pyyaml)"
else
    # The Python part prints its own ok:/FAIL: lines and a last line
    # "python: <passed> <failed>".
    py_out="$(python3 - "$DEPLOY_DIR" <<'PY'
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path = [p for p in sys.path if p not in ("", ".", os.getcwd())]
import yaml

root = sys.argv[1]
P = lambda *a: os.path.join(root, *a)
passed = failed = 0


def check(name, problems):
    global passed, failed
    if problems:
        failed += 1
        print(f"FAIL: {name}")
        for p in problems[:40]:
            for line in str(p).splitlines():
                print(f"      {line}")
        if len(problems) > 40:
            print(f"      ... and {len(problems) - 40} more")
    else:
        passed += 1
        print(f"ok:   {name}")


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------- YAML parses
docs = {}
problems = []
for dirpath, _, files in os.walk(root):
    for fn in sorted(files):
        if fn.endswith((".yml", ".yaml")):
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, root)
            try:
                with open(path) as f:
                    docs[rel] = [d for d in yaml.safe_load_all(f) if d is not None]
                if not docs[rel]:
                    problems.append(f"{rel}: empty")
            except Exception as e:  # noqa: BLE001
                problems.append(f"{rel}: {e}")
check(f"{len(docs)} YAML files parse", problems)

dash_path = P("grafana", "leakscope-dashboard.json")
dash = None
try:
    with open(dash_path) as f:
        dash = json.load(f)
    check("grafana/leakscope-dashboard.json parses", [])
except Exception as e:  # noqa: BLE001
    check("grafana/leakscope-dashboard.json parses", [str(e)])

# ---------------------------------------------------------------- PrometheusRule == plain rules
problems = []
try:
    plain = load(P("prometheus", "leakscope-rules.yml"))
    pr = load(P("kubernetes", "prometheusrule.yaml"))
    if pr.get("kind") != "PrometheusRule" or pr.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("kubernetes/prometheusrule.yaml is not a monitoring.coreos.com/v1 PrometheusRule")
    a, b = plain.get("groups"), (pr.get("spec") or {}).get("groups")
    if a != b:
        da = yaml.safe_dump(a, sort_keys=True, width=1000).splitlines()
        db = yaml.safe_dump(b, sort_keys=True, width=1000).splitlines()
        problems.append("spec.groups differs from prometheus/leakscope-rules.yml groups:")
        problems.extend(difflib.unified_diff(da, db, "leakscope-rules.yml", "prometheusrule.yaml", lineterm=""))
except Exception as e:  # noqa: BLE001
    problems.append(str(e))
    plain = {"groups": []}
check("PrometheusRule spec.groups identical to prometheus/leakscope-rules.yml", problems)

# ---------------------------------------------------------------- alerts: presence, labels, tests
REQUIRED_ALERTS = [
    "LeakscopeLeakSuspected",
    "LeakscopeTimeToLimitUnderOneHour",
    "LeakscopePoolRecycledForMemory",
    "LeakscopeOOMKill",
    "LeakscopeAgentDegraded",
    "LeakscopeLosingEvents",
    "LeakscopeProbeDetached",
]
rules = [r for g in plain.get("groups") or [] for r in g.get("rules") or []]
alerts = {r["alert"]: r for r in rules if "alert" in r}
problems = [f"missing alert {a}" for a in REQUIRED_ALERTS if a not in alerts]
for name, r in alerts.items():
    if (r.get("labels") or {}).get("severity") not in ("info", "warning", "critical"):
        problems.append(f"{name}: no severity label")
    for ann in ("summary", "description"):
        if not (r.get("annotations") or {}).get(ann):
            problems.append(f"{name}: no {ann} annotation")
check(f"{len(alerts)} alerts present with severity, summary, description", problems)

problems = []
try:
    tests = load(P("prometheus", "leakscope-rules.test.yml"))
    fires, quiet = set(), set()
    for t in tests.get("tests") or []:
        for case in t.get("alert_rule_test") or []:
            (fires if case.get("exp_alerts") else quiet).add(case.get("alertname"))
            for exp in case.get("exp_alerts") or []:
                if not exp.get("exp_annotations"):
                    problems.append(f"{case.get('alertname')}: a firing case without exp_annotations")
    for name in alerts:
        if name not in fires:
            problems.append(f"{name}: no unit test where it fires")
        if name not in quiet:
            problems.append(f"{name}: no unit test where it must not fire (exp_alerts: [])")
except Exception as e:  # noqa: BLE001
    problems.append(str(e))
check("every alert has a firing and a non-firing unit test", problems)

# ---------------------------------------------------------------- metric names in queries
# A standalone copy for deploy/ on its own; the authoritative check is
# tests/tests/prometheus.rs (dashboard_and_rules_name_only_exported_metrics), against
# leakscope-api/src/metrics.rs (ALL).
ALLOWED = {
    "leakscope_process_rss_bytes", "leakscope_process_peak_rss_bytes",
    "leakscope_processes_tracked", "leakscope_processes_overflow",
    "leakscope_process_rss_growth_bytes_per_second", "leakscope_process_leak_suspected",
    "leakscope_process_leak_confidence", "leakscope_process_time_to_limit_seconds",
    "leakscope_process_memory_limit_bytes",
    "leakscope_pool_recycles_total", "leakscope_pool_leak_suspected", "leakscope_pool_children",
    "leakscope_oom_kills_total",
    "leakscope_task_runs_total", "leakscope_task_retained_bytes_bucket",
    "leakscope_task_retained_bytes_sum", "leakscope_task_retained_bytes_count",
    "leakscope_task_leak_suspected",
    "leakscope_probe_attached", "leakscope_probe_events_total",
    "leakscope_probe_events_lost_total", "leakscope_kernel_map_evictions_total",
    "leakscope_agent_degraded", "leakscope_build_info",
}
KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio", "by", "without", "on", "ignoring",
    "group_left", "group_right", "offset", "bool", "and", "or", "unless", "atan2", "inf",
    "nan", "start", "end",
}
LIST_AFTER = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr):
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)
    names = set()
    toks = list(re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", s))
    skip_until = -1
    for m in toks:
        if m.start() < skip_until:
            continue
        word, rest = m.group(0), s[m.end():].lstrip()
        if word in LIST_AFTER and rest.startswith("("):
            close = s.index(")", m.end())
            skip_until = close
            continue
        if word in KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def grafana_to_promql(expr):
    for k, v in (("$__rate_interval", "5m"), ("$__range", "1h"), ("$__interval", "1m"),
                 ("${__rate_interval}", "5m"), ("${__range}", "1h"), ("${__interval}", "1m")):
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


queries = []  # (where, promql)
for r in rules:
    queries.append((f"rule {r.get('alert') or r.get('record')}", r["expr"]))
if dash:
    def walk_panels(panels):
        for p in panels:
            yield p
            yield from walk_panels(p.get("panels") or [])

    for p in walk_panels(dash.get("panels") or []):
        for t in p.get("targets") or []:
            if t.get("expr"):
                queries.append((f"panel {p.get('title')!r} {t.get('refId')}", grafana_to_promql(t["expr"])))
    for a in (dash.get("annotations") or {}).get("list") or []:
        if a.get("expr"):
            queries.append((f"annotation {a.get('name')!r}", grafana_to_promql(a["expr"])))
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q or "")
        if not m:
            check(f"dashboard variable {v.get('name')}", [f"not a label_values(<selector>, <label>) query: {q!r}"])
            continue
        queries.append((f"variable ${v.get('name')}", grafana_to_promql(m.group(1))))

problems = []
for where, q in queries:
    extra = {"up"} if where.startswith("rule ") else set()
    for name in sorted(metric_names(q) - ALLOWED - extra):
        problems.append(f"{where}: unknown metric {name!r} in {q}")
    if not metric_names(q):
        problems.append(f"{where}: no metric found in {q}")
check(f"{len(queries)} queries use only leakscope metric names", problems)

# PromQL syntax of the dashboard queries: promtool parses them as recording rules.
problems = []
dash_queries = [(w, q) for w, q in queries if not w.startswith("rule ")]
if dash_queries:
    doc = {"groups": [{"name": "dashboard-syntax", "rules": [
        {"record": f"dashboard:q{i}", "expr": q} for i, (_, q) in enumerate(dash_queries)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as tf:
        yaml.safe_dump(doc, tf)
    try:
        res = subprocess.run(["promtool", "check", "rules", tf.name], capture_output=True, text=True)
        if res.returncode != 0:
            out = res.stdout + res.stderr
            problems.append(out.strip())
            for i, (w, q) in enumerate(dash_queries):
                if f"dashboard:q{i}\"" in out or f"q{i}:" in out:
                    problems.append(f"  q{i} = {w}: {q}")
    except FileNotFoundError:
        problems.append("promtool not found")
    finally:
        os.unlink(tf.name)
check(f"{len(dash_queries)} dashboard queries parse as PromQL", problems)

# ---------------------------------------------------------------- dashboard shape
problems = []
if dash:
    if not 36 <= int(dash.get("schemaVersion", 0)) <= 41:
        problems.append(f"schemaVersion {dash.get('schemaVersion')}")
    tvars = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = tvars.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no ${datasource} template variable of type prometheus")
    for n in ("node", "namespace", "pod"):
        if n not in tvars:
            problems.append(f"no ${n} template variable")
    ids = set()
    for p in walk_panels(dash.get("panels") or []):
        if p.get("id") in ids:
            problems.append(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        for obj in [p] + list(p.get("targets") or []):
            uid = (obj.get("datasource") or {}).get("uid")
            if uid != "${datasource}":
                problems.append(f"panel {p.get('title')!r}: datasource {uid!r} is not ${{datasource}}")
else:
    problems.append("dashboard did not parse")
check("dashboard: schemaVersion, template variables, datasource", problems)

# ---------------------------------------------------------------- kustomization
problems = []
try:
    kz = load(P("kubernetes", "kustomization.yaml"))
    listed = kz.get("resources") or []
    for r in listed:
        if not os.path.exists(P("kubernetes", r)):
            problems.append(f"listed but missing: {r}")
    for fn in sorted(os.listdir(P("kubernetes"))):
        if fn.endswith((".yaml", ".yml")) and fn != "kustomization.yaml" and fn not in listed:
            problems.append(f"not listed in kustomization.yaml: {fn}")
except Exception as e:  # noqa: BLE001
    problems.append(str(e))
check("kustomization.yaml lists every manifest", problems)

# ---------------------------------------------------------------- DaemonSet invariants
problems = []
try:
    ds = load(P("kubernetes", "daemonset.yaml"))
    spec = ds["spec"]["template"]["spec"]
    if ds["metadata"].get("namespace") != "leakscope":
        problems.append("namespace is not leakscope")
    if spec.get("hostPID") is not True:
        problems.append("hostPID is not true")
    if not any(t.get("operator") == "Exists" and not t.get("key") for t in spec.get("tolerations") or []):
        problems.append("no catch-all toleration (operator: Exists)")
    for c in spec["containers"]:
        sc = c.get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged")
        if caps.get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities.drop is not [ALL]")
        if "SYS_ADMIN" in (caps.get("add") or []):
            problems.append(f"{c['name']}: SYS_ADMIN added")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem not true")
        if "$(POD_IP):9633" not in (c.get("args") or []):
            problems.append(f"{c['name']}: args lack $(POD_IP):9633")
        for probe in ("livenessProbe", "readinessProbe"):
            hg = (c.get(probe) or {}).get("httpGet") or {}
            if hg.get("path") != "/healthz" or hg.get("port") not in (9633, "metrics"):
                problems.append(f"{c['name']}: {probe} is not GET /healthz on 9633")
        if not (c.get("resources") or {}).get("limits"):
            problems.append(f"{c['name']}: no resource limits")
except Exception as e:  # noqa: BLE001
    problems.append(repr(e))
check("DaemonSet security and probe invariants", problems)

print(f"python: {passed} {failed}")
PY
)"
    py_rc=$?
    echo "$py_out" | grep -v '^python: '
    summary="$(echo "$py_out" | grep '^python: ' | sed -n '$p')"
    if [[ -z "$summary" ]]; then
        fail "python checks crashed (exit $py_rc)"
    else
        read -r _ p f <<<"$summary"
        passed=$((passed + p))
        failed=$((failed + f))
        while IFS= read -r line; do failures+=("${line#FAIL: }"); done < <(echo "$py_out" | grep '^FAIL: ')
    fi
fi

# ---------------------------------------------------------------- optional checks
if command -v kubectl >/dev/null 2>&1; then
    run "kubectl kustomize kubernetes (client-side build)" kubectl kustomize kubernetes
else
    echo "skip: kubectl not found, kustomize build not checked"
fi

# (from / : deploy/kubernetes/ would otherwise shadow the package)
if (cd / && python3 -c 'from kubernetes import client') >/dev/null 2>&1; then
    # Strict field-name check: a round trip through the official client's
    # models drops any field the Kubernetes API does not know.
    run "Kubernetes objects only use known fields (kubernetes Python client)" python3 - "$DEPLOY_DIR/kubernetes" <<'PY'
import json, os, sys

sys.path = [p for p in sys.path if p not in ("", ".", os.getcwd())]
import yaml
from kubernetes import client

api = client.ApiClient()
KINDS = {"Namespace": "V1Namespace", "ServiceAccount": "V1ServiceAccount",
         "ClusterRole": "V1ClusterRole", "ClusterRoleBinding": "V1ClusterRoleBinding",
         "DaemonSet": "V1DaemonSet", "Service": "V1Service"}


def norm(x):
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items() if v not in (None, [], {})}
    if isinstance(x, list):
        return [norm(v) for v in x]
    return x


bad = []


def diff(a, b, path):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k not in b:
                bad.append(f"unknown field {path}.{k}")
            else:
                diff(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]")


d = sys.argv[1]
for fn in sorted(os.listdir(d)):
    if not fn.endswith((".yaml", ".yml")):
        continue
    with open(os.path.join(d, fn)) as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") in KINDS:
                obj = api.deserialize(json.dumps(doc), KINDS[doc["kind"]], "application/json")
                diff(norm(doc), norm(api.sanitize_for_serialization(obj)), f"{fn}:{doc['kind']}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
else
    echo "skip: python 'kubernetes' package not installed, field names not checked (pip install kubernetes)"
fi

echo
if ((failed > 0)); then
    echo "failed checks:"
    for f in "${failures[@]}"; do echo "  - $f"; done
fi
echo "deploy check: $passed passed, $failed failed"
((failed == 0))
