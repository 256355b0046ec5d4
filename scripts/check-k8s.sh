#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/kubernetes:
#   1. every document of every manifest file against the Kubernetes API schemas bundled with the
#      PyPI package kubernetes-validate, in strict mode (an unknown field is an error), for the
#      newest Kubernetes version the package bundles and for the oldest one the manifests
#      support (MIN_K8S: the preStop sleep action needs 1.30);
#   2. what the schemas cannot see: probes on every container, the voters' PodDisruptionBudget
#      keeps a Raft majority, the headless Services select the pods they govern, the HPA scales
#      the learners, the voter list matches the replica count, the entrypoint script parses,
#      the shoal.toml (and the SHOAL_* variables) are accepted by a built `shoal`, if any;
#   3. kustomization.yaml lists every manifest but the *.example.yaml templates (the Secret,
#      the restore pod).
# Installs kubernetes-validate once into target/tools/k8s-venv (a virtualenv; needs python3
# with venv and the package index pip is set up for). Exits non-zero on any failure.
#
#   scripts/check-k8s.sh            # MIN_K8S=1.31 scripts/check-k8s.sh to raise the floor
set -euo pipefail
cd "$(dirname "$0")/.."

VALIDATE_VERSION=1.37.0 # kubernetes-validate, pinned: its version decides the bundled schemas
MIN_K8S=${MIN_K8S:-1.30}
VENV=target/tools/k8s-venv
DIR=${K8S_DIR:-deploy/kubernetes} # K8S_DIR: another folder (tests of this script)

if ! "$VENV/bin/python" -c "import sys, kubernetes_validate.version as v; sys.exit(v.__version__ != '$VALIDATE_VERSION')" 2>/dev/null; then
  echo "check-k8s: installing kubernetes-validate $VALIDATE_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATE_VERSION"
fi

# A built shoal checks shoal.toml and the SHOAL_* variables (`shoal config`); optional.
SHOAL_BIN=${SHOAL_BIN:-}
if [ -z "$SHOAL_BIN" ]; then
  for b in target/release/shoal target/debug/shoal; do
    if [ -x "$b" ]; then SHOAL_BIN=$b; break; fi
  done
fi

export DIR MIN_K8S SHOAL_BIN
exec "$VENV/bin/python" - <<'PY'
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import yaml
import kubernetes_validate
from referencing import Registry, Resource
from kubernetes_validate import utils as kv

DIR = os.environ["DIR"]
MIN_K8S = os.environ["MIN_K8S"]
SHOAL_BIN = os.environ.get("SHOAL_BIN") or ""

passed = 0
failed = 0


def ok(what):
    global passed
    passed += 1
    print(f"  ok    {what}")


def fail(what):
    global failed
    failed += 1
    print(f"  FAIL  {what}")


def check(cond, what, why=""):
    if cond:
        ok(what)
    else:
        fail(what + (f": {why}" if why else ""))
    return cond


# ---------------------------------------------------------------- 1. schemas
files = sorted(glob.glob(os.path.join(DIR, "*.yaml")) + glob.glob(os.path.join(DIR, "*.yml")))
manifests = [f for f in files if os.path.basename(f) not in ("kustomization.yaml", "kustomization.yml")]
newest = kv.latest_version()
versions = [MIN_K8S, newest] if MIN_K8S != kv.major_minor(newest) else [newest]
print(f"schemas: kubernetes-validate {kubernetes_validate.version.__version__}, strict, "
      f"Kubernetes {' and '.join(versions)} (newest bundled: {newest})")
if not manifests:
    fail(f"no manifest in {DIR}")


def schema_errors(d, version):
    """Every schema error of one document: kubernetes_validate.validate stops at the first, so
    this does its schema lookup (the strict schemas of that Kubernetes version) and then lists
    all of jsonschema's errors."""
    if d.get("apiVersion") is None or d.get("kind") is None:
        raise kv.InvalidSchemaError("a document without apiVersion or kind")
    v = [x for x in kv.all_versions() if kv.major_minor(x) == kv.major_minor(version)]
    if not v:
        raise kv.VersionNotSupportedError(version)
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", d["apiVersion"])
    folder = f"kubernetes-json-schema/v{v[-1]}-local-strict"
    try:
        schema = kv.schema_contents(f"{folder}/{d['kind'].lower()}-{api}.json", version)
    except FileNotFoundError:
        raise kv.SchemaNotFoundError(kind=d["kind"], version=version, api_version=d["apiVersion"])
    defs = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return sorted(validator.iter_errors(d), key=lambda e: list(map(str, e.path)))


docs = []  # (file, doc)
for f in manifests:
    try:
        with open(f) as fh:
            loaded = [d for d in yaml.safe_load_all(fh) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{f}: not YAML: {e}")
        continue
    if not loaded:
        fail(f"{f}: no document")
    for d in loaded:
        docs.append((f, d))
        name = f"{os.path.basename(f)}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        for v in versions:
            try:
                errors = schema_errors(d, v)
                if not errors:
                    ok(f"{name} valid for {v}")
                for e in errors:
                    path = "/".join(str(p) for p in e.path)
                    fail(f"{name} invalid for {v} at {path or '(top)'}: {e.message}")
            except (kv.SchemaNotFoundError, kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
                fail(f"{name} for {v}: {e.message}")
            except Exception as e:  # noqa: BLE001 - report and go on
                fail(f"{name} for {v}: {type(e).__name__}: {e}")


# ---------------------------------------------------------------- 2. semantics
def of_kind(kind):
    return [d for _, d in docs if d.get("kind") == kind]


def named(kind, name):
    for d in of_kind(kind):
        if d["metadata"]["name"] == name:
            return d
    return None


def selects(selector, labels):
    """A Service's selector (plain map) or a label selector (matchLabels) selects these labels."""
    if selector is None:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        if selector.get("matchExpressions"):
            return False  # not used here; keep the check simple and strict
        selector = selector.get("matchLabels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(w):
    return w["spec"]["template"]["metadata"].get("labels", {})


def containers(w):
    spec = w["spec"]["template"]["spec"]
    return spec.get("containers", []), spec.get("initContainers", [])


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env", []) if "value" in e}


def semantics():
    print("semantics:")
    workloads = [d for _, d in docs if d.get("kind") in ("StatefulSet", "Deployment", "DaemonSet", "Job")]
    voters = named("StatefulSet", "shoal-voter")
    learners = named("StatefulSet", "shoal-learner")
    check(voters is not None, "a StatefulSet shoal-voter exists")
    check(learners is not None, "a StatefulSet shoal-learner exists")

    for w in workloads:
        wn = f"{w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]["template"]["spec"]
        main, init = containers(w)
        for c in main:
            cn = f"{wn} container {c['name']}"
            rp, lp, sp = c.get("readinessProbe"), c.get("livenessProbe"), c.get("startupProbe")
            check(rp is not None and rp.get("httpGet", {}).get("path") == "/api/ready",
                  f"{cn}: readinessProbe GET /api/ready", f"got {rp}")
            check(lp is not None and lp.get("httpGet", {}).get("path") == "/api/health",
                  f"{cn}: livenessProbe GET /api/health", f"got {lp}")
            if sp is not None:
                budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
                check(budget >= 120, f"{cn}: startupProbe allows {budget} s for the model to load (>= 120)")
            else:
                fail(f"{cn}: no startupProbe (model load)")
            res = c.get("resources", {})
            check(all(k in res.get("requests", {}) for k in ("cpu", "memory"))
                  and "memory" in res.get("limits", {}),
                  f"{cn}: cpu/memory requests and a memory limit")
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                  and "ALL" in sc.get("capabilities", {}).get("drop", []),
                  f"{cn}: read-only root, no privilege escalation, no capabilities")
            check(c.get("image") == "shoal:latest" and c.get("imagePullPolicy") == "IfNotPresent",
                  f"{cn}: image shoal:latest, IfNotPresent")
        for c in init:
            # init containers cannot have probes; none is expected here
            fail(f"{wn}: unexpected init container {c['name']} (no probes possible)")
        check(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{wn}: runAsNonRoot")
        check(spec.get("terminationGracePeriodSeconds", 30) >= 30,
              f"{wn}: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds', 30)} >= 30 (leave consensus, drain, dump)")

    services = {d["metadata"]["name"]: d for d in of_kind("Service")}

    def check_headless(sts, svc_name):
        if sts is None:
            return
        svc = services.get(svc_name)
        if not check(svc is not None, f"headless Service {svc_name} exists"):
            return
        s = svc["spec"]
        check(s.get("clusterIP") == "None", f"Service {svc_name} is headless (clusterIP: None)")
        check(s.get("publishNotReadyAddresses") is True,
              f"Service {svc_name} publishes not-ready addresses (peers reach each other before ready)")
        check(selects(s.get("selector"), pod_labels(sts)),
              f"Service {svc_name} selects the pods of StatefulSet {sts['metadata']['name']}")
        check(sts["spec"].get("serviceName") == svc_name,
              f"StatefulSet {sts['metadata']['name']} is governed by {svc_name} (stable pod DNS names)")
        other = learners if sts is voters else voters
        if other is not None:
            check(not selects(s.get("selector"), pod_labels(other)),
                  f"Service {svc_name} does not select the pods of {other['metadata']['name']}")
        main, _ = containers(sts)
        adv = env_of(main[0]).get("SHOAL_CLUSTER__ADVERTISE", "")
        check(adv.startswith(f"http://$(POD_NAME).{svc_name}.$(NAMESPACE).svc."),
              f"{sts['metadata']['name']} advertises http://$(POD_NAME).{svc_name}.$(NAMESPACE).svc...", f"got {adv!r}")

    check_headless(voters, "shoal-voter")
    check_headless(learners, "shoal-learner")

    client = services.get("shoal")
    if check(client is not None, "client Service shoal exists"):
        s = client["spec"]
        check(s.get("clusterIP") != "None" and s.get("type", "ClusterIP") == "ClusterIP",
              "Service shoal is a ClusterIP Service")
        check(not s.get("publishNotReadyAddresses", False), "Service shoal routes to ready pods only")
        for w in (voters, learners):
            if w is not None:
                check(selects(s.get("selector"), pod_labels(w)), f"Service shoal selects the pods of {w['metadata']['name']}")

    if voters is not None:
        n = voters["spec"].get("replicas", 1)
        check(n in (1, 3, 5, 7), f"voters: {n} replicas (an odd count: 1, 3, 5)")
        check(voters["spec"].get("podManagementPolicy") == "Parallel",
              "voters: podManagementPolicy Parallel (a restarted member needs a quorum to become ready)")
        check(voters["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate",
              "voters: RollingUpdate (one pod at a time; partition for a staged upgrade)")
        check(any(t["metadata"]["name"] == "data" for t in voters["spec"].get("volumeClaimTemplates", [])),
              "voters: a volumeClaimTemplate `data` (persistent store)")
        main, _ = containers(voters)
        env = env_of(main[0])
        urls = (env.get("K8S_VOTER_URLS") or "").split()
        want = [f"http://shoal-voter-{i}.shoal-voter.$(NAMESPACE).svc." for i in range(n)]
        check(len(urls) == n and all(u.startswith(w) for u, w in zip(urls, want)),
              f"voters: K8S_VOTER_URLS names voters 0..{n - 1}, one each (voter 0 asks all of them before it makes the cluster)",
              f"got {urls}")
        check(env.get("K8S_JOIN_SEED", "").startswith("http://shoal.$(NAMESPACE).svc."),
              "voters: join seed is the client Service (any ready member)")
        check(main[0].get("args") == ["voter"], "voters: entrypoint role voter")
        mounts = {m["mountPath"]: m["name"] for m in main[0].get("volumeMounts", [])}
        check(mounts.get("/var/lib/shoal") == "data", "voters: the data volume is mounted at storage.data_dir")

        pdbs = [p for p in of_kind("PodDisruptionBudget") if selects(p["spec"].get("selector"), pod_labels(voters))]
        majority = n // 2 + 1
        if check(len(pdbs) == 1, "voters: exactly one PodDisruptionBudget selects them", f"found {len(pdbs)}"):
            ps = pdbs[0]["spec"]

            def count(v):
                if isinstance(v, str) and v.endswith("%"):
                    return None
                return int(v)

            if "minAvailable" in ps:
                m = count(ps["minAvailable"])
                check(m is not None and m >= majority,
                      f"voter PDB minAvailable {ps['minAvailable']} keeps a majority ({majority} of {n})")
            elif "maxUnavailable" in ps:
                m = count(ps["maxUnavailable"])
                check(m is not None and n - m >= majority and m >= 1,
                      f"voter PDB maxUnavailable {ps['maxUnavailable']} keeps a majority ({n} - {ps['maxUnavailable']} >= {majority})")
            else:
                fail("voter PDB sets neither minAvailable nor maxUnavailable")

    if learners is not None:
        check("replicas" not in learners["spec"],
              "learners: no replicas field (the HPA owns it; re-applying does not reset it)")
        main, _ = containers(learners)
        env = env_of(main[0])
        check(main[0].get("args") == ["learner"], "learners: entrypoint role learner (joins without --voter)")
        check(env.get("K8S_JOIN_SEED", "").startswith("http://shoal.$(NAMESPACE).svc."),
              "learners: join seed is the client Service")
        check(any(selects(p["spec"].get("selector"), pod_labels(learners)) for p in of_kind("PodDisruptionBudget")),
              "learners: a PodDisruptionBudget selects them")
        hpas = of_kind("HorizontalPodAutoscaler")
        if check(len(hpas) == 1, "one HorizontalPodAutoscaler", f"found {len(hpas)}"):
            h = hpas[0]
            ref = h["spec"]["scaleTargetRef"]
            check(h["apiVersion"] == "autoscaling/v2", "HPA is autoscaling/v2")
            check(ref.get("kind") == "StatefulSet" and ref.get("name") == "shoal-learner"
                  and ref.get("apiVersion") == "apps/v1",
                  "HPA targets the learner StatefulSet (apps/v1 StatefulSet shoal-learner)", f"got {ref}")
            check(1 <= h["spec"].get("minReplicas", 1) <= h["spec"]["maxReplicas"], "HPA: 1 <= minReplicas <= maxReplicas")
            check(any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in h["spec"].get("metrics", [])),
                  "HPA scales on CPU")

    # no HPA may point at the voters: their count is the Raft configuration, not capacity
    check(not any(h["spec"]["scaleTargetRef"].get("name") == "shoal-voter" for h in of_kind("HorizontalPodAutoscaler")),
          "no HPA scales the voters")

    # ConfigMap: the entrypoint parses, shoal.toml is TOML with the keys the pods rely on
    cms = {d["metadata"]["name"]: d for d in of_kind("ConfigMap")}
    cm = cms.get("shoal-config")
    if check(cm is not None, "ConfigMap shoal-config exists"):
        data = cm.get("data", {})
        script = data.get("entrypoint.sh", "")
        for sh in ("dash", "sh", "bash"):
            if shutil.which(sh):
                r = subprocess.run([sh, "-n"], input=script, text=True, capture_output=True)
                check(r.returncode == 0, f"entrypoint.sh parses ({sh} -n)", r.stderr.strip())
                if sh == "dash":
                    break
        try:
            conf = tomllib.loads(data.get("shoal.toml", ""))
            ok("shoal.toml is TOML")
            check(conf.get("server", {}).get("listen", "").startswith("0.0.0.0:7400"), "shoal.toml: listens on 0.0.0.0:7400")
            check(conf.get("storage", {}).get("data_dir") == "/var/lib/shoal", "shoal.toml: data_dir /var/lib/shoal (the PVC)")
            check(conf.get("model", {}).get("path", "").startswith("/opt/shoal/models/"), "shoal.toml: model.path under /opt/shoal/models (baked into the image)")
            check(conf.get("cluster", {}).get("bootstrap") is False,
                  "shoal.toml: cluster.bootstrap = false (voter 0 makes the cluster through its admin API, once)")
            check(conf.get("storage", {}).get("sync_writes", True) is True, "shoal.toml: sync_writes stays on")
        except tomllib.TOMLDecodeError as e:
            fail(f"shoal.toml: {e}")
            conf = None
        if SHOAL_BIN and conf is not None:
            # The node's own parser: unknown keys and bad values exit 2. Same variables as the pods.
            envs = {}
            for w in (voters, learners):
                if w is not None:
                    for k, v in env_of(containers(w)[0][0]).items():
                        if k.startswith("SHOAL_") and "__" in k and "$(" not in v:
                            envs[k] = v
            envs["SHOAL_CLUSTER__SECRET"] = "check-k8s-secret-0123456789"
            envs["SHOAL_CLUSTER__ADVERTISE"] = "http://shoal-voter-0.shoal-voter.shoal.svc.cluster.local:7400"
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as t:
                t.write(data["shoal.toml"])
                t.flush()
                r = subprocess.run([SHOAL_BIN, "config", "--config", t.name],
                                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **envs},
                                   capture_output=True, text=True)
            check(r.returncode == 0,
                  f"`{SHOAL_BIN} config` accepts shoal.toml with {', '.join(sorted(envs))}",
                  r.stderr.strip())
        else:
            print("  skip  `shoal config` check: no built shoal (cargo build, or SHOAL_BIN=...)")

    # Secret template: a placeholder the entrypoint refuses, long enough for the node's own check
    secrets = of_kind("Secret")
    for s in secrets:
        v = (s.get("stringData") or {}).get("SHOAL_CLUSTER__SECRET", "")
        check(v.startswith("change-me") and len(v) >= 16,
              f"Secret {s['metadata']['name']}: a placeholder (change-me..., refused by entrypoint.sh), never a real value")
    for w in (voters, learners):
        if w is None:
            continue
        c = containers(w)[0][0]
        refs = [e for e in c.get("env", []) if e["name"] == "SHOAL_CLUSTER__SECRET"]
        check(len(refs) == 1 and refs[0].get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "shoal-cluster",
              f"{w['metadata']['name']}: SHOAL_CLUSTER__SECRET from Secret shoal-cluster")


# ---------------------------------------------------------------- 3. kustomization
def kustomization():
    print("kustomization:")
    kpath = os.path.join(DIR, "kustomization.yaml")
    if check(os.path.exists(kpath), "kustomization.yaml exists"):
        with open(kpath) as fh:
            k = yaml.safe_load(fh)
        listed = k.get("resources", [])
        check(k.get("kind") == "Kustomization", "kustomization.yaml is a Kustomization")
        missing = [r for r in listed if not os.path.exists(os.path.join(DIR, r))]
        check(not missing, "every listed resource exists", f"missing {missing}")
        expected = sorted(os.path.basename(f) for f in manifests if not f.endswith(".example.yaml"))
        check(sorted(listed) == expected, "it lists every manifest but the *.example.yaml templates",
              f"listed {sorted(listed)}, files {expected}")
        check(not any(r.endswith(".example.yaml") for r in listed),
              "it lists no *.example.yaml (re-applying never overwrites the real secret nor makes the restore pod)")


for section in (semantics, kustomization):
    try:
        section()
    except Exception as e:  # noqa: BLE001 - a malformed manifest must fail, not crash the report
        fail(f"{section.__name__} checks stopped: {type(e).__name__}: {e}")

print(f"check-k8s: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
