"""Issue 16's targets as PASS/FAIL lines, and RESULTS.md, from a bench run's summary.

bench/run.py measures and keeps everything in a summary (summary.json); this module only reads it, so
`bench/run.py --report bench/raw/<timestamp>` renders a finished run the same way again. Every target
line is always printed: one whose measurement is missing says MISSING (and does not pass).
"""

import os

SCENARIO_OFF = "small GET in turns, h2load --h1 -c50 -n{n}, access log off"
SCENARIO_ON = "small GET in turns, h2load --h1 -c50 -n{n}, access log on"
SCENARIO_WRK_OFF = "small GET in turns, wrk -c{c}, access log off"
SCENARIO_WRK_ON = "small GET in turns, wrk -c{c}, access log on"
SCENARIO_TLS = "small GET, TLS in turns"


def dirty_banner(source):
    """What a run of anything but a clean commit says, at its start and in its report."""
    return (f"DIRTY: not a commit. The tree measured was {source['commit'][:12]} plus changes "
            f"({source['why']}). These figures belong to no commit anyone can check out: do not cite them.")


def fmt(v, digits=0, unit=""):
    return "–" if v is None else f"{v:,.{digits}f}{unit}"


class Rows:
    """Looks up a run's rows by scenario prefix, proxy and worker count."""

    def __init__(self, rows):
        self.rows = rows

    def get(self, scenario, kind, workers=1):
        for r in self.rows:
            if r["scenario"].startswith(scenario) and r["proxy"] == kind and r["workers"] == workers:
                return r
        return None

    def pair(self, scenario, workers, key):
        """strangler's and nginx's rows for a scenario, or None unless both have `key`."""
        s, n = self.get(scenario, "strangler", workers), self.get(scenario, "nginx", workers)
        if s and n and s.get(key) is not None and n.get(key) is not None:
            return s, n
        return None


def ratio(a, b, key, digits=1, unit=" µs/req"):
    return f"{fmt(a[key], digits)} vs {fmt(b[key], digits)}{unit} (×{a[key] / b[key]:.2f})" if b[key] else "–"


def per_round(pair, key):
    """The rounds' own ratios (strangler's round i over nginx's round i, taken one after the other), when the
    rows kept their rounds: how far the VM's noise moves a ratio within one run."""
    a, b = (r.get(f"{key}_runs") for r in pair)
    if not a or not b:
        return ""
    ratios = [f"{x / y:.2f}" for x, y in zip(a, b) if x and y]
    return f"; rounds ×{', ×'.join(ratios)}" if ratios else ""


def kernel_floor(pair, bound):
    """What the CPU target leaves user space, given the kernel time measured: strangler's kernel time
    alone as a share of nginx's whole CPU, and the user time `bound` × nginx's CPU would allow."""
    s, n = pair
    if s.get("kernel_us_per_req") is None or not n.get("user_us_per_req"):
        return ""
    room = bound * n["cpu_us_per_req"] - s["kernel_us_per_req"]
    return (f"; kernel alone ×{s['kernel_us_per_req'] / n['cpu_us_per_req']:.2f} of nginx's CPU, so passing needs "
            f"user ≤ {room:.2f} µs/req (×{room / n['user_us_per_req']:.2f} of nginx's)")


def targets(summary):
    """[(workers, target, PASS|FAIL|MISSING, figures)] in issue 16's order, 1 and 2 workers."""
    m = summary["method"]
    rows = Rows(summary["rows"])
    out = []

    def add(workers, name, ok, figures):
        out.append((workers, name, "MISSING" if ok is None else ("PASS" if ok else "FAIL"), figures))

    off, on = SCENARIO_OFF.format(n=m["h2load_n"]), SCENARIO_ON.format(n=m["h2load_n"])
    wrk_off, wrk_on = SCENARIO_WRK_OFF.format(c=m["conns"]), SCENARIO_WRK_ON.format(c=m["conns"])
    for w in (1, 2):
        p, q = rows.pair(off, w, "cpu_us_per_req"), rows.pair(wrk_off, w, "cpu_us_per_req")
        also = f"; wrk: {ratio(*q, 'cpu_us_per_req')}" if q else ""
        add(w, "access log off: CPU per small GET ≤ 0.9 × nginx's",
            p and p[0]["cpu_us_per_req"] <= 0.9 * p[1]["cpu_us_per_req"],
            (ratio(*p, "cpu_us_per_req") + per_round(p, "cpu_us_per_req") + kernel_floor(p, 0.9) + also)
            if p else "not measured")
        p, q = rows.pair(off, w, "user_us_per_req"), rows.pair(wrk_off, w, "user_us_per_req")
        also = f"; wrk: {ratio(*q, 'user_us_per_req', 2)}" if q else ""
        add(w, "access log off: user-space CPU ≤ 0.8 × nginx's",
            p and p[0]["user_us_per_req"] <= 0.8 * p[1]["user_us_per_req"],
            (ratio(*p, "user_us_per_req", 2) + f" (kernel {fmt(p[0]['kernel_us_per_req'], 2)} vs "
             f"{fmt(p[1]['kernel_us_per_req'], 2)}; context switches/req {fmt(p[0].get('ctx_per_req'), 2)} vs "
             f"{fmt(p[1].get('ctx_per_req'), 2)})" + per_round(p, "user_us_per_req") + also) if p else "not measured")
        p, q = rows.pair(off, w, "rps"), rows.pair(wrk_off, w, "rps")
        also = f"; wrk: {ratio(*q, 'rps', 0, ' req/s')}" if q else ""
        add(w, "access log off: throughput ≥ nginx's", p and p[0]["rps"] >= p[1]["rps"],
            (ratio(*p, "rps", 0, " req/s") + also) if p else "not measured")
        p, q = rows.pair(on, w, "cpu_us_per_req"), rows.pair(wrk_on, w, "cpu_us_per_req")
        also = f"; wrk: {ratio(*q, 'cpu_us_per_req')}" if q else ""
        add(w, "access log on (both to a file, default formats): CPU per request ≤ nginx's",
            p and p[0]["cpu_us_per_req"] <= p[1]["cpu_us_per_req"],
            (ratio(*p, "cpu_us_per_req") + f", user {fmt(p[0]['user_us_per_req'], 2)} vs "
             f"{fmt(p[1]['user_us_per_req'], 2)}; {ratio(*p, 'rps', 0, ' req/s')}" + also) if p else "not measured")
        p, c = rows.pair(SCENARIO_TLS, w, "rps"), rows.pair(SCENARIO_TLS, w, "cpu_us_per_req")
        add(w, "TLS termination: throughput ≥ nginx's at ≤ its CPU",
            p and c and p[0]["rps"] >= p[1]["rps"] and c[0]["cpu_us_per_req"] <= c[1]["cpu_us_per_req"],
            f"{ratio(*p, 'rps', 0, ' req/s')}; CPU {ratio(*c, 'cpu_us_per_req')}{per_round(c, 'cpu_us_per_req')}"
            if p and c else "not measured")
        p = rows.pair("latency", w, "p99_ms")
        add(w, "p99 at half nginx's peak ≤ nginx's", p and p[0]["p99_ms"] <= p[1]["p99_ms"],
            f"{p[0]['p99_ms']:.2f} vs {p[1]['p99_ms']:.2f} ms at {p[0]['offered_rps']:,} req/s "
            f"(p50 {p[0]['p50_ms']:.2f} vs {p[1]['p50_ms']:.2f})" if p else "not measured")
        p = rows.pair("idle memory", w, "rss_idle_conns_kib")
        n_conns = m["idle_n"]
        add(w, f"RSS with {n_conns:,} idle connections ≤ nginx's",
            p and p[0]["rss_idle_conns_kib"] <= p[1]["rss_idle_conns_kib"] and p[0]["answered"] == n_conns,
            f"{ratio(*p, 'rss_idle_conns_kib', 0, ' KiB')}, {p[0]['answered']:,} of {n_conns:,} answered"
            if p else "not measured")
    a, b = rows.get("small GET, 10 routes", "strangler"), rows.get("small GET, 10000 routes", "strangler")
    ok = a and b and a["cpu_us_per_req"] and b["cpu_us_per_req"]
    # Judged on CPU per request: throughput on a shared 2-core machine moves with the neighbours.
    add(1, "10,000-route table within 10% of 10 routes (CPU/request)",
        ok and b["cpu_us_per_req"] <= 1.1 * a["cpu_us_per_req"],
        f"{fmt(b['cpu_us_per_req'], 1)} vs {fmt(a['cpu_us_per_req'], 1)} µs/req; "
        f"{fmt(b['rps'])} vs {fmt(a['rps'])} req/s" if ok else "not measured")
    off_s, on_s = rows.get("shadow off", "strangler"), rows.get("shadow on", "strangler")
    ok = off_s and on_s and off_s.get("p99_ms") and on_s.get("p99_ms")
    add(1, "slow shadow: primary p99 within 10% of shadowing off", ok and on_s["p99_ms"] <= 1.1 * off_s["p99_ms"],
        f"{on_s['p99_ms']:.2f} vs {off_s['p99_ms']:.2f} ms" if ok else "not measured")
    add(1, "slow shadow: memory bounded", ok and on_s["hwm_kib"] <= 4 * max(off_s["hwm_kib"], 20 * 1024),
        f"peak RSS {on_s['hwm_kib'] / 1024:.1f} vs {off_s['hwm_kib'] / 1024:.1f} MiB without shadow; "
        f"{on_s.get('shadow_metrics', '')}" if ok else "not measured")
    idle = rows.get("idle memory", "strangler")
    add(1, "RSS idle ≤ 20 MiB", idle and idle["idle_rss_kib"] <= 20 * 1024,
        f"{idle['idle_rss_kib'] / 1024:.1f} MiB" if idle else "not measured")
    return out


def source_line(summary):
    src = summary.get("source") or {"commit": "unknown", "clean": False, "why": "the run recorded no commit"}
    if src["clean"]:
        build = {"pgo": ", profile-guided build with BOLT (scripts/pgo.sh)", "release": ", plain release build"}.get(src.get("build"), "")
        return f"commit {src['commit']} (clean tree{build})"
    return dirty_banner(src)


def console_table(summary, lines):
    """The targets as plain text, for the terminal `make bench` ends in."""
    width = max(len(t) for _, t, _, _ in lines)
    passed = sum(r == "PASS" for _, _, r, _ in lines)
    head = [
        "",
        "=" * 100,
        "issue 16 targets" + ("  —  QUICK SMOKE RUN: short loads, figures are not results" if summary["method"]["quick"] else "")
        + (f"  —  PARTIAL RUN (BENCH_ONLY={','.join(summary['method']['only'])})" if summary["method"].get("only") else ""),
        source_line(summary) if (summary.get("source") or {}).get("clean") else f"*** {source_line(summary)} ***",
        f"CPU: {summary.get('cpu', '?')}, {summary.get('cpus', '?')} CPUs; load average at the end "
        f"{' '.join(summary.get('load', ['?']))}; run took {summary.get('elapsed_s', 0) // 60} min "
        f"{summary.get('elapsed_s', 0) % 60} s",
        "=" * 100,
        f"{'result':8} {'w':1}  {'target':{width}}  figures (strangler vs nginx)",
    ]
    body = [f"{r:8} {w}  {t:{width}}  {f}" for w, t, r, f in lines]
    tail = [f"{passed} of {len(lines)} targets pass", ""]
    if not (summary.get("source") or {}).get("clean"):
        tail.insert(0, f"*** {source_line(summary)} ***")
    return "\n".join(head + body + tail)


def measurements_table(summary):
    lines = ["| scenario | proxy | workers | req/s (runs) | p50 / p99 ms | CPU µs/req (user + kernel) | "
             "ctx switches/req | peak RSS MiB | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["scenario"] == "idle memory":
            mem = (f"idle {r['idle_rss_kib'] / 1024:.1f} MiB; {r['idle_conns']:,} conns "
                   f"{r['rss_idle_conns_kib'] / 1024:.1f} MiB ({r['answered']:,} answered)")
            lines.append(f"| idle memory (RSS) | {r['proxy']} | {r['workers']} | – | {mem} | – | – | "
                         f"{r['hwm_kib'] / 1024:.1f} | {r['errors']} |")
            continue
        latency = f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}" if r.get("p99_ms") is not None else "–"
        if r.get("offered_rps"):
            rps = f"{r['offered_rps']:,} offered"
        else:
            rps = f"{fmt(r['rps'])} ({'/'.join(str(x) for x in r.get('runs_rps') or [])})"
        cpu = fmt(r.get("cpu_us_per_req"), 1)
        if r.get("user_us_per_req") is not None:
            cpu += f" ({fmt(r['user_us_per_req'], 2)} + {fmt(r['kernel_us_per_req'], 2)})"
        extra = f"; log lines/served {', '.join(map(str, r['log_lines']))}" if r.get("log_lines") else ""
        lines.append(f"| {r['scenario']}{extra} | {r['proxy']} | {r['workers']} | {rps} | {latency} | {cpu} | "
                     f"{fmt(r.get('ctx_per_req'), 2)} | {r['hwm_kib'] / 1024:.1f} | {r['errors']} |")
    return lines


def method(summary):
    m = summary["method"]
    return (
        f"Loopback; the upstream is `bench/upstream` (hyper, 2 threads, 64-byte JSON answers). The targets' rows"
        f" are measured **in turns**: strangler and nginx alternate, {m.get('turns', m['runs'])} round(s), each start with its own"
        f" warm-up, so that the VM's drift in speed hits both alike ({m.get('p99_turns', m.get('turns', m['runs']))} rounds for"
        f" the p99 rows: half-peak latency and the slow shadow). Small GET: h2load --h1 -c50 -n{m['h2load_n']}"
        f" after a {m['h2load_warm']}-request warm-up, then wrk -t1 -c{m['conns']} for {m['run_s']} s, access log"
        f" off, then on (both to a file in their default formats: strangler's JSON lines with its default"
        f" buffer, nginx's `combined`, unbuffered). TLS: wrk -c{m['conns']} over TLS 1.3 ({m['run_s']} s after"
        f" {m['warm_s']} s). CPU per request = utime + stime of the proxy's processes (/proc/PID/stat) / requests"
        f" served, split into user and kernel time; context switches from /proc/PID/task/*/status. Other rows:"
        f" one proxy after another, the median of {m['runs']} runs of {m['run_s']} s after {m['warm_s']} s;"
        f" latency with h2load --h1 -c{m['conns']} -m1 --rps at half of nginx's wrk peak, percentiles from"
        f" h2load's per-request log; idle memory = RSS with {m['idle_n']:,} keep-alive connections, one request"
        f" each. nginx: `keepalive 256` to the upstream, proxy buffering off; HAProxy: `http-reuse always`."
        f" perf has no hardware counters on this VM: instructions and cache misses per request come from"
        f" `bench/profile.sh` (callgrind with its cache simulator), see bench/NOTES.md. The load generator,"
        f" the upstream and the proxy share the machine's cores: ratios between proxies are what count."
    )


def render(summary, stamp, notes=None):
    """(RESULTS.md text, console text) for a run."""
    lines = targets(summary)
    summary["targets"] = lines
    quick = summary["method"]["quick"]
    timings = ", ".join(f"{name} {s // 60}:{s % 60:02d}" for name, s in summary.get("timings", []))
    versions = "; ".join(f"{k}: {v}" for k, v in (summary.get("versions") or {}).items())
    md = [
        "# strangler benchmark results (latest run)",
        "",
        f"Run `{stamp}` by `make bench` (`scripts/bench.sh` → `bench/run.py`); raw output in the git-ignored"
        f" `bench/raw/{stamp}/` of the machine that ran it.",
        "",
        f"**{source_line(summary)}**",
        "",
        *(["**QUICK SMOKE RUN** (`--quick`): short loads, one round; the figures check the harness and are not"
           " results.", ""] if quick else []),
        f"- CPU: {summary.get('cpu', '?')}, {summary.get('cpus', '?')} CPUs; load average at the end"
        f" {' '.join(summary.get('load', ['?']))}",
        f"- versions: {versions}",
        f"- duration: {summary.get('elapsed_s', 0) // 60} min {summary.get('elapsed_s', 0) % 60} s ({timings})",
        f"- method: {method(summary)}",
        "",
        "## Targets (issue 16)",
        "",
        "| result | workers | target | strangler vs nginx |",
        "|---|---|---|---|",
        *[f"| **{r}** | {w} | {t} | {f} |" for w, t, r, f in lines],
        "",
        f"{sum(r == 'PASS' for _, _, r, _ in lines)} of {len(lines)} targets pass.",
        "",
        "## All measurements",
        "",
        *measurements_table(summary),
        "",
    ]
    if notes and os.path.exists(notes):
        md.append(open(notes).read())
    return "\n".join(md), console_table(summary, lines)
