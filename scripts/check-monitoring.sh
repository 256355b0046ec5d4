#!/usr/bin/env bash
# Checks the monitoring configuration under deploy/ (docs/alerts.md):
#   - promtool check rules / test rules on the alert rules and their unit tests
#   - promtool check config on the Prometheus configuration (with its rule file)
#   - amtool check-config on the Alertmanager configuration, and where each severity is routed
#   - the Grafana dashboard: valid JSON, unique panel ids, every panel with non-empty queries,
#     and every query valid PromQL (parsed and run by promtool against an empty database)
#   - the rules: each alert has labels.severity and the annotations summary, description and a
#     runbook that is a section of docs/alerts.md, and has a test where it fires and one where it
#     stays quiet
#   - the rules, their tests and the dashboard name only metrics of docs/metrics.md
# promtool and amtool come from scripts/monitoring-tools.sh (no root install). Exits non-zero on
# the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=deploy/prometheus/shoal-rules.yml
TESTS=deploy/prometheus/shoal-rules.test.yml
PROM_CONFIG=deploy/prometheus/prometheus.yml
AM_CONFIG=deploy/alertmanager/alertmanager.yml
DASHBOARD=deploy/grafana/dashboards/shoal.json

step() { echo "== $*"; }

step "tools (scripts/monitoring-tools.sh)"
tools="$(scripts/monitoring-tools.sh)"
eval "$tools"
echo "promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n 1))"
echo "amtool:   $AMTOOL ($("$AMTOOL" --version 2>&1 | head -n 1))"

step "promtool check rules $RULES"
"$PROMTOOL" check rules "$RULES"

step "promtool test rules $TESTS"
"$PROMTOOL" test rules "$TESTS"
groups=$(grep -c '^  - interval:' "$TESTS" || true)
alert_cases=$(grep -c '^ *alertname:' "$TESTS" || true)
expr_cases=$(grep -c '^ *- expr:' "$TESTS" || true)
echo "rule tests passed: $alert_cases alert cases and $expr_cases expression cases in $groups test groups"

step "promtool check config $PROM_CONFIG"
"$PROMTOOL" check config "$PROM_CONFIG"

step "amtool check-config $AM_CONFIG"
"$AMTOOL" check-config "$AM_CONFIG"
for route in critical:shoal-critical warning:shoal-warning info:shoal-info none:shoal-warning; do
    severity="${route%%:*}" want="${route#*:}"
    got="$("$AMTOOL" config routes test --config.file="$AM_CONFIG" severity="$severity" alertname=ShoalTest 2>/dev/null)"
    if [ "$got" != "$want" ]; then
        echo "alertmanager: severity=$severity goes to '$got', expected '$want'" >&2
        exit 1
    fi
    echo "severity=$severity -> $got"
done

step "dashboard, rule annotations, runbooks, test coverage and metric names (python3)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$RULES" "$TESTS" "$DASHBOARD" docs/alerts.md docs/metrics.md "$work/dashboard-queries.test.yml" <<'PY'
import json, os, re, sys

rules_path, tests_path, dash_path, alerts_doc, metrics_doc, queries_out = sys.argv[1:]
problems = []

# --- dashboard
with open(dash_path) as f:
    dash = json.load(f)  # fails loudly on invalid JSON
ids, exprs, n_panels = [], [], 0

def walk(panels):
    global n_panels
    for p in panels:
        ids.append(p.get("id"))
        if p.get("type") == "row":
            walk(p.get("panels", []))
            continue
        n_panels += 1
        title = p.get("title", "?")
        if "gridPos" not in p:
            problems.append(f"dashboard panel {title!r}: no gridPos")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"dashboard panel {title!r}: no targets")
        for t in targets:
            e = (t.get("expr") or "").strip()
            if not e:
                problems.append(f"dashboard panel {title!r}: target {t.get('refId')} has an empty expr")
            else:
                exprs.append((title, e))

walk(dash.get("panels", []))
if None in ids:
    problems.append("dashboard: a panel has no id")
dups = sorted({i for i in ids if i is not None and ids.count(i) > 1})
if dups:
    problems.append(f"dashboard: duplicate panel ids {dups}")
if not 36 <= int(dash.get("schemaVersion", 0)) <= 41:
    problems.append(f"dashboard: schemaVersion {dash.get('schemaVersion')}")
variables = [v.get("query", {}).get("query") if isinstance(v.get("query"), dict) else v.get("query")
             for v in dash.get("templating", {}).get("list", []) if v.get("type") == "query"]
print(f"dashboard: {n_panels} panels ({len(ids) - n_panels} rows), {len(exprs)} queries, ids unique: {not dups}")

# Every panel query as a promtool expression test over an empty database: a query that does not
# parse or evaluate fails the test. Grafana's variables are replaced by what they expand to.
def promql(e):
    return (e.replace("$__rate_interval", "1m").replace("$__interval", "1m")
             .replace("$__range", "1h").replace("$instance", ".*").replace("$collection", ".*"))

with open(queries_out, "w") as f:
    f.write("rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n")
    f.write("    input_series: []\n    promql_expr_test:\n")
    for title, e in exprs:
        f.write(f"      - expr: {json.dumps(promql(e))}\n        eval_time: 1m\n        exp_samples: []\n")

# --- rules: labels, annotations, runbooks
rules = open(rules_path).read()
doc = open(alerts_doc).read() if os.path.exists(alerts_doc) else ""
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+ (.+)$", doc, re.M)}
blocks = re.split(r"\n(?=\s*- (?:alert|record):)", rules)
alerts = []
for b in blocks:
    m = re.match(r"\s*- alert: (\S+)", b)
    if not m:
        continue
    name = m.group(1)
    alerts.append(name)
    if not re.search(r"^\s+severity: (critical|warning|info)\s*$", b, re.M):
        problems.append(f"{name}: no labels.severity (critical, warning or info)")
    for key in ("summary", "description", "runbook"):
        if not re.search(rf"^\s+{key}: \S", b, re.M):
            problems.append(f"{name}: no annotation {key}")
    rb = re.search(r"^\s+runbook: \"?docs/alerts\.md#([a-z0-9_-]+)\"?\s*$", b, re.M)
    if not rb:
        problems.append(f"{name}: runbook is not a link into docs/alerts.md")
    elif rb.group(1) != name.lower():
        problems.append(f"{name}: runbook anchor #{rb.group(1)}, expected #{name.lower()}")
    elif rb.group(1) not in anchors:
        problems.append(f"{name}: docs/alerts.md has no section #{rb.group(1)}")
if len(set(alerts)) != len(alerts):
    problems.append("rules: an alert name is used twice")

# --- tests: each alert fires somewhere and stays quiet somewhere
tests = open(tests_path).read()
cases = re.findall(r"alertname: (\S+)\n\s+exp_alerts:( \[\])?", tests)
fires = {a for a, quiet in cases if not quiet}
quiet = {a for a, q in cases if q}
for a in alerts:
    if a not in fires:
        problems.append(f"{a}: no test case where it fires")
    if a not in quiet:
        problems.append(f"{a}: no test case where it stays quiet")
for a in {a for a, _ in cases} - set(alerts):
    problems.append(f"tests name an alert the rules do not have: {a}")
print(f"rules: {len(alerts)} alerts, each with severity, summary, description, runbook; "
      f"tests: {len(cases)} alert cases, every alert fires in one and stays quiet in another")

# --- metric names (the same reading as tests/tests/metrics.rs)
def named(text):
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9])shoal_[A-Za-z0-9_]*", text):
        n = m.group(0)
        for suffix in ("_bucket", "_sum", "_count"):
            if n.endswith(suffix):
                base = n[: -len(suffix)]
                if not base.endswith("_total") or suffix != "_count":
                    n = base
        names.add(n)
    return names

if os.path.exists(metrics_doc):
    documented = set()
    for line in open(metrics_doc):
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1].startswith("`shoal_") and cells[1].endswith("`"):
            documented.add(cells[1].strip("`"))
    sources = {rules_path: rules, tests_path: tests,
               dash_path: "\n".join(e for _, e in exprs) + "\n" + "\n".join(v or "" for v in variables)}
    used = set()
    for path, text in sources.items():
        for n in sorted(named(text)):
            used.add(n)
            if n not in documented:
                problems.append(f"{path}: {n} is not a metric of {metrics_doc}")
    print(f"metric names: {len(used)} shoal_ families used, all in {metrics_doc}: "
          f"{not any('is not a metric' in p for p in problems)}")
else:
    print(f"metric names: {metrics_doc} missing, not checked")

if problems:
    print("\n".join("FAIL: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
PY

step "dashboard queries parse and evaluate (promtool test rules, empty database)"
"$PROMTOOL" test rules "$work/dashboard-queries.test.yml"

echo "== monitoring checks passed"
