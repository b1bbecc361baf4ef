#!/usr/bin/env python3
"""strangler vs nginx (and HAProxy, and the upstream alone) on loopback: issue 16's targets.

Run through `scripts/bench.sh` (`make bench`), which installs the tools and builds the binaries.
`--train`: the load scripts/pgo.sh trains the profile-guided build on (STRANGLER_BIN: its instrumented binary).
BENCH_ONLY=word,word: only the steps whose names hold one of the words (a partial run).
`--quick` (or BENCH_QUICK=1): a smoke run of every step with short loads (~3 minutes), to check the
harness; its figures are not results and it never writes bench/RESULTS.md.

Every proxy gets the same upstream (bench/upstream, a minimal hyper server), the same keep-alive pool to
it and the same number of workers; no access log except in the access-log rows (both to a file, in their
default formats). The targets are measured **in turns**: strangler and nginx alternate, TURNS rounds, each
start with its own warm-up, because this VM's speed drifts by 10-20% over minutes and a proxy-after-proxy
order turns drift into a verdict. CPU is utime + stime of the proxy's processes (/proc/PID/stat), split
into user and kernel time; context switches from /proc/PID/task/*/status. perf has no hardware counters
on this VM: instructions and cache misses come from bench/profile.sh (callgrind).

Everything a run makes (tool output, configs, logs, RESULTS.md, summary.json) goes to the git-ignored
bench/raw/<timestamp>/. A full run also writes bench/RESULTS.md (the latest run), headed by the exact
commit it measured, or by a loud DIRTY banner when the working tree was not that commit.
`bench/run.py --report bench/raw/<timestamp>` renders a finished run's summary.json again.
"""

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

import verdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = os.path.join(ROOT, "bench/raw")  # git-ignored: all a run writes
QUICK = os.environ.get("BENCH_QUICK") == "1" or "--quick" in sys.argv[1:]
# BENCH_ONLY=idle,shadow: only the steps whose names contain one of these words (for A/B work on one
# target); such a partial run, like a quick one, never writes bench/RESULTS.md.
ONLY = [w for w in os.environ.get("BENCH_ONLY", "").split(",") if w]
RUN_S = int(os.environ.get("BENCH_SECONDS", "1" if QUICK else "5"))
RUNS = 1 if QUICK else 3
# The rounds of the steps measured in turns (every target's step): a median of three moved by ~5% from
# run to run on this VM, as far as several lines sit from their targets; five steady it.
TURNS = 1 if QUICK else 5
# The p99 steps' rounds (half-peak latency, slow shadow): a p99 moved by ±15–20% from start to start on
# this VM (run 20261206-160756: nginx's five at 2 workers spread 1.28–1.96 ms), more than the margins the
# targets allow (0, 10%); a median of nine is steadier than one of five at +2 min a run.
P99_TURNS = 1 if QUICK else 9
WARM_S = 1 if QUICK else 2
CONNS = 32
# Issue 16's method: h2load --h1 -c50 after a 20k warm-up; 1M requests rather than its 200k, because
# the kernel splits a process's CPU time into user and system by sampling at each scheduler tick
# (CONFIG_TICK_CPU_ACCOUNTING, HZ=250 here: one sample per 4 ms; the total itself is exact). 200k GETs
# at ~15 µs are ~750 ticks, ~135 of them in user space: ±8% (one σ) on each user-time figure, ±11% on
# a ratio of two, and the 1-worker rounds of the user-CPU line spread from ×0.67 to ×1.30 (run
# 20261206-132453). 1M gives ±3.5% a figure.
H2LOAD_N, H2LOAD_WARM = (20000, 2000) if QUICK else (1000000, 20000)
# The PGO training's h2load runs (`--train`): the profile wants the path taken, not a precise figure.
TRAIN_N = 5000 if QUICK else 50000
IDLE_N = 1000 if QUICK else 10000
# Loopback ports from BENCH_PORT_BASE (28000): scripts/pgo.sh trains on its own range, so that a training
# never meets a benchmark run.
BASE = int(os.environ.get("BENCH_PORT_BASE", "28000"))
UP_PORT, SLOW_PORT = BASE, BASE + 1
P_H1, P_H2, P_TLS, P_ADMIN = BASE + 80, BASE + 82, BASE + 443, BASE + 81
STAMP = time.strftime("%Y%m%d-%H%M%S")
OUT = os.path.join(RAW, STAMP)
STRANGLER = UPSTREAM = None  # the binaries, set by binaries() before a run
PROCS = []  # processes this script started (killed by pid at the end)
SUMMARY = {
    "rows": [], "targets": [], "timings": [],
    "method": {"quick": QUICK, "only": ONLY, "runs": RUNS, "turns": TURNS, "p99_turns": P99_TURNS, "run_s": RUN_S, "warm_s": WARM_S, "conns": CONNS,
               "h2load_n": H2LOAD_N, "h2load_warm": H2LOAD_WARM, "idle_n": IDLE_N},
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def target_dir(crate_dir):
    """Where `cargo build` run in `crate_dir` puts its output, as scripts/bench.sh builds there:
    CARGO_TARGET_DIR and Cargo's config included, so that a shared target directory is found too."""
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=crate_dir,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["target_directory"]


# Which build of this tree is measured: `pgo` (scripts/pgo.sh, what `make bench` builds and the image
# ships) or `release` (plain `cargo build --release`, with STRANGLER_BUILD=release).
BUILD = os.environ.get("STRANGLER_BUILD", "pgo")


def binaries():
    """strangler (STRANGLER_BIN, or the BUILD build of this tree) and the bench upstream."""
    strangler = os.environ.get("STRANGLER_BIN") or os.path.join(target_dir(ROOT), BUILD, "strangler")
    upstream = os.path.join(target_dir(os.path.join(ROOT, "bench/upstream")), "release", "bench-upstream")
    return strangler, upstream


def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True).stdout.strip()


def source():
    """The commit the binaries were built from (scripts/bench.sh builds just before), and whether the
    working tree is exactly that commit: no change, staged or not, and no untracked file. Anything else
    is "dirty": its figures name code nobody can check out again, and the report says so loudly."""
    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=normal")
    if changes:
        n = len(changes.splitlines())
        return {"commit": commit, "clean": False, "why": f"the working tree has {n} uncommitted change(s)"}
    if os.environ.get("STRANGLER_BIN"):
        return {"commit": commit, "clean": False, "why": "strangler is STRANGLER_BIN, not a build of this tree"}
    return {"commit": commit, "clean": True, "build": BUILD}


@contextlib.contextmanager
def section(name):
    """Times one step of the run (kept in summary.json: a full run must fit in ~25 minutes)."""
    log(f"== {name}")
    started = time.monotonic()
    try:
        yield
    finally:
        SUMMARY["timings"].append([name, round(time.monotonic() - started)])


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(cmd, name, port=None):
    f = open(os.path.join(OUT, f"{name}.log"), "a")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    PROCS.append(p)
    if port:
        wait_port(port)
    return p


def stop(p, grace=5):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)  # its own session: the proxy and its workers only
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    time.sleep(0.3)


def pids_of(p):
    """The process and its children (nginx workers)."""
    out = [p.pid]
    kids = sh(f"pgrep -P {p.pid}").stdout.split()
    return out + [int(k) for k in kids]


def cpu_split(pids):
    """(user, kernel) CPU seconds of the processes so far: utime and stime from /proc/PID/stat."""
    user = kernel = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            kernel += int(fields[12])
        except OSError:
            pass
    hz = os.sysconf("SC_CLK_TCK")
    return user / hz, kernel / hz


def ctx_switches(pids):
    """Voluntary + involuntary context switches of every thread of the processes so far."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                for line in open(f"/proc/{pid}/task/{tid}/status"):
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


def cpu_ticks(pids):
    return sum(cpu_split(pids))


def status_kib(pids, key):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith(key):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# ------------------------------------------------------------------ configs

def strangler_config(routes=1, shadow=False, tls=None, access_log=None):
    """`access_log`: a file for the access log in its default format (JSON lines); None: off."""
    lines = [
        f"access_log: {{path: {access_log}}}" if access_log else "access_log: off",
        f'listen: "127.0.0.1:{P_TLS if tls else P_H1}"',
        f'admin: "127.0.0.1:{P_ADMIN}"',
        'upstream_header: ""',
    ]
    if tls:
        lines += ["tls:", f"  cert: {tls[0]}", f"  key: {tls[1]}"]
    if shadow:
        # SHADOW_CAP: the shadow's in-flight cap (default 256), to see how the slow-shadow cost scales with it.
        lines += ["shadow:", f"  log: {OUT}/shadow-diffs.jsonl", "  max_inflight: " + os.environ.get("SHADOW_CAP", "256")]
    lines += ["upstreams:", "  up:", f'    targets: ["http://127.0.0.1:{UP_PORT}"]', "    timeout: 30s"]
    if shadow:
        lines += ["  slow:", f'    targets: ["http://127.0.0.1:{SLOW_PORT}"]', "    timeout: 30s"]
    lines.append("routes:")
    for i in range(routes - 1):
        lines.append(f"  - {{name: r{i}, prefix: /svc{i}/api, upstream: up}}")
    route = "  - {name: all, prefix: /, upstream: up"
    if shadow:
        route += ", shadow: {upstream: slow, sample: 1.0, timeout: 3s}"
    lines.append(route + "}")
    return "\n".join(lines) + "\n"


def nginx_config(workers, cert=None, access_log=None):
    """`access_log`: a file for the access log in nginx's default format (`combined`, unbuffered)."""
    d = os.path.join(OUT, "nginx")
    os.makedirs(d, exist_ok=True)
    tls = ""
    if cert:
        tls = f"""
  server {{
    listen 127.0.0.1:{P_TLS} ssl;
    ssl_certificate {cert[0]};
    ssl_certificate_key {cert[1]};
    location / {{ proxy_pass http://up; }}
  }}"""
    return f"""
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
  {f"access_log {access_log};" if access_log else "access_log off;"}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_max_body_size 0;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $http_host;
  proxy_set_header X-Forwarded-For $remote_addr;
  proxy_buffering off;
  proxy_request_buffering off;
  proxy_buffer_size 64k;
  proxy_buffers 8 64k;
  proxy_busy_buffers_size 128k;
  upstream up {{ server 127.0.0.1:{UP_PORT}; keepalive 256; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{P_H1};
    location / {{ proxy_pass http://up; }}
  }}
  server {{
    listen 127.0.0.1:{P_H2} http2;
    location / {{ proxy_pass http://up; }}
  }}{tls}
}}
"""


def haproxy_config(threads, cert=None):
    tls = f"\n  bind 127.0.0.1:{P_TLS} ssl crt {cert[2]}" if cert else ""
    return f"""
global
  nbthread {threads}
  fd-hard-limit 20000
  tune.bufsize 65536
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:{P_H1}
  bind 127.0.0.1:{P_H2} proto h2{tls}
  option forwardfor
  default_backend be
backend be
  server up 127.0.0.1:{UP_PORT} maxconn 1000
"""


def start_proxy(kind, workers, routes=1, shadow=False, cert=None, access_log=None):
    tag = f"{kind}-w{workers}{'-log' if access_log else ''}"
    if kind.startswith("strangler"):
        # "strangler-ws": the work-stealing scheduler instead of per-core runtimes.
        scheduler = "work-stealing" if kind == "strangler-ws" else "per-core"
        # Its own directory: strangler watches the config's directory, and the
        # load generators write their logs into OUT while it serves.
        conf = os.path.join(OUT, "conf")
        os.makedirs(conf, exist_ok=True)
        path = os.path.join(conf, f"{tag}-r{routes}{'-shadow' if shadow else ''}{'-tls' if cert else ''}.yaml")
        open(path, "w").write(strangler_config(routes, shadow, cert, access_log))
        return start([STRANGLER, "serve", "--config", path, "--threads", str(workers), "--scheduler", scheduler,
                      "--log-level", "warn"], tag, P_TLS if cert else P_H1)
    if kind == "nginx":
        path = os.path.join(OUT, f"{tag}.conf")
        open(path, "w").write(nginx_config(workers, cert, access_log))
        return start(["nginx", "-c", path], tag, P_H1)
    if kind == "haproxy":
        path = os.path.join(OUT, f"{tag}.cfg")
        open(path, "w").write(haproxy_config(workers, cert))
        return start(["haproxy", "-db", "-f", path], tag, P_H1)
    raise ValueError(kind)


# -------------------------------------------------------------- load tools

def port_of(kind, proto):
    if kind == "direct":
        return UP_PORT
    if kind.startswith("strangler") and proto == "h2":
        return P_H1  # HTTP/1.1 and h2c prior knowledge on the same listener
    return {"h1": P_H1, "h2": P_H2, "tls": P_TLS}[proto]


def wrk(port, path, seconds, conns=CONNS, script=None, name="wrk", scheme="http"):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append(f"{scheme}://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    open(os.path.join(OUT, f"{name}.txt"), "a").write(" ".join(cmd) + "\n" + out + "\n")
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    reqs = int(m.group(1)) if m else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) if "Requests/sec" in out else 0.0
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return {"requests": reqs, "rps": rps, "errors": errors}


def h2load(port, path, n=None, seconds=None, conns=CONNS, streams=10, h1=False, rps=None, logfile=None,
           name="h2load", scheme="http"):
    cmd = ["h2load", f"-c{conns}", f"-m{streams}", "-t1"]
    if h1:
        cmd.append("--h1")
    if n:
        cmd.append(f"-n{n}")
    if seconds:
        cmd += ["-D", str(seconds)]
    if rps:
        cmd.append(f"--rps={rps}")
    if logfile:
        cmd.append(f"--log-file={logfile}")
    cmd.append(f"{scheme}://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    open(os.path.join(OUT, f"{name}.txt"), "a").write(" ".join(cmd) + "\n" + out + "\n")
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    rps_done = float(m.group(3)) if m else 0.0
    s = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    done = int(s.group(2)) if s else 0
    errors = (int(s.group(3)) + int(s.group(4))) if s else -1
    return {"requests": done, "rps": rps_done, "errors": errors}


def percentiles(logfile):
    lat = []
    for line in open(logfile):
        parts = line.split()
        if len(parts) >= 3 and parts[1].startswith("2"):
            lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    # The per-request log is large (~1 MB per second of load): keep only its summary.
    os.remove(logfile)
    with open(logfile.replace(".tsv", ".percentiles.txt"), "w") as f:
        for q in (0.5, 0.9, 0.99, 0.999, 1.0):
            f.write(f"p{q * 100:g} {lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 'n/a'} ms\n")
    if not lat:
        return None, None
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def measure(proc_pids, fn):
    """Warm-up, then the median of RUNS runs; CPU seconds of the proxy per request."""
    fn(WARM_S)
    results = []
    for _ in range(RUNS):
        before = cpu_ticks(proc_pids)
        r = fn(RUN_S)
        r["cpu_s"] = cpu_ticks(proc_pids) - before
        r["cpu_us_per_req"] = r["cpu_s"] / r["requests"] * 1e6 if r["requests"] else None
        results.append(r)
    return median_run(results)


def median_run(results):
    """The run with the median rate, with every run's rate, the errors summed and the median CPU."""
    results = sorted(results, key=lambda r: r["rps"])
    med = dict(results[len(results) // 2])
    med["runs_rps"] = [round(r["rps"]) for r in results]
    med["errors"] = sum(r["errors"] for r in results)
    cpus = sorted(r["cpu_us_per_req"] for r in results if r["cpu_us_per_req"])
    med["cpu_us_per_req"] = cpus[len(cpus) // 2] if cpus else None
    return med


def row(scenario, kind, workers, r, pids, hwm_kib=None, **extra):
    """Records a measurement; peak RSS is read from `pids` now unless given (runs made in turns)."""
    entry = {"scenario": scenario, "proxy": kind, "workers": workers, "rps": r.get("rps"),
             "runs_rps": r.get("runs_rps"), "errors": r.get("errors"),
             "cpu_us_per_req": r.get("cpu_us_per_req"),
             "hwm_kib": status_kib(pids, "VmHWM:") if hwm_kib is None else hwm_kib,
             "rss_kib": status_kib(pids, "VmRSS:")}
    entry.update(extra)
    SUMMARY["rows"].append(entry)
    shown = ", ".join(f"{k} {round(v, 2) if isinstance(v, float) else v}" for k, v in extra.items())
    log(f"  {scenario:28} {kind:9} w{workers}: {entry['rps'] or 0:>9.0f} req/s  "
        f"cpu {entry['cpu_us_per_req'] or 0:6.1f} us/req  hwm {entry['hwm_kib'] / 1024:6.1f} MiB  "
        f"err {entry['errors']}  {shown}")
    return entry


# ------------------------------------------------------------------ setup

def make_cert():
    d = os.path.join(OUT, "tls")
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    sh(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost "
       f"-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout {key} -out {cert}")
    combined = os.path.join(d, "combined.pem")
    open(combined, "w").write(open(cert).read() + open(key).read())
    return cert, key, combined


def upload_script():
    path = os.path.join(OUT, "upload.lua")
    open(path, "w").write('wrk.method = "POST"\nwrk.body = string.rep("a", 1048576)\n'
                          'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    return path


IDLE_CLIENT = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks, ok = [], 0
req = b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n"
# One request per connection, one connection at a time (so the proxy's pool to
# the upstream stays small), then every connection is kept open, idle.
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.sendall(req)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    ok += data.startswith(b"HTTP/1.1 200")
    socks.append(s)
print(ok, flush=True)
sys.stdin.readline()
"""


def idle_connections(port, n):
    """Opens n keep-alive connections (one request each), returns (client, answered)."""
    path = os.path.join(OUT, "idle_client.py")
    open(path, "w").write(IDLE_CLIENT)
    p = subprocess.Popen([sys.executable, path, str(port), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    PROCS.append(p)
    answered = int(p.stdout.readline().strip() or 0)
    return p, answered


def cpu_run(pids, fn):
    """One run of `fn` with the proxy's user and kernel CPU and context switches per request."""
    user0, kernel0 = cpu_split(pids)
    ctx0 = ctx_switches(pids)
    r = fn()
    user1, kernel1 = cpu_split(pids)
    ctx1 = ctx_switches(pids)
    n = r["requests"]
    r["user_us_per_req"] = (user1 - user0) / n * 1e6 if n else None
    r["kernel_us_per_req"] = (kernel1 - kernel0) / n * 1e6 if n else None
    r["cpu_us_per_req"] = (user1 - user0 + kernel1 - kernel0) / n * 1e6 if n else None
    r["ctx_per_req"] = (ctx1 - ctx0) / n if n else None
    return r


def median_of(results, key):
    values = sorted(r[key] for r in results if r.get(key) is not None)
    return values[len(values) // 2] if values else None


SPLIT = ("user_us_per_req", "kernel_us_per_req", "ctx_per_req")


def turns_row(scenario, kind, workers, runs, **extra):
    """The median of runs made in turns, with the user/kernel split and context switches per request."""
    med = median_run(runs)
    extra.update({key: median_of(runs, key) for key in SPLIT})
    # Every round's CPU and user time, in round order: the verdict shows the rounds' own ratios.
    extra.update({f"{key}_runs": [None if r.get(key) is None else round(r[key], 3) for r in runs]
                  for key in ("cpu_us_per_req", "user_us_per_req")})
    return row(scenario, kind, workers, med, [], hwm_kib=max(r.get("hwm_kib", 0) for r in runs), **extra)


def take_turns(rounds, sides, start_side, measure):
    """The method of every comparison here: `rounds` rounds in which each side gets a fresh start (by
    `start_side(side)`) and is measured (by `measure(side, process, round)`), the sides alternating, so the
    VM's drift over minutes falls on all of them alike. Returns each side's results in round order."""
    results = {side: [] for side in sides}
    for i in range(rounds):
        for side in sides:
            p = start_side(side)
            results[side].append(measure(side, p, i))
            stop(p)
    return results


def in_turns(workers, kinds=("strangler", "nginx")):
    """The headline small GET, the proxies taking turns (strangler, nginx, strangler, ...), with the
    access log off and on (both to a file, in their default formats). Each start: an h2load warm-up,
    then h2load --h1 -c50 -n H2LOAD_N (issue 16's method, with more requests: see H2LOAD_N) and wrk -c32
    for RUN_S seconds."""
    logs = os.path.join(OUT, "access-logs")
    os.makedirs(logs, exist_ok=True)
    results = {(kind, log): {"h2load": [], "wrk": []} for kind in kinds for log in (False, True)}
    for _ in range(TURNS):
        for log_on in (False, True):
            for kind in kinds:
                log_file = os.path.join(logs, f"{kind}-w{workers}.log") if log_on else None
                p = start_proxy(kind, workers, access_log=log_file)
                pids = pids_of(p)
                name = f"turns-{kind}-w{workers}{'-log' if log_on else ''}"
                h2load(P_H1, "/small", n=H2LOAD_WARM, conns=50, streams=1, h1=True, name=name)
                r = cpu_run(pids, lambda: h2load(P_H1, "/small", n=H2LOAD_N, conns=50, streams=1, h1=True,
                                                 name=name))
                r["hwm_kib"] = status_kib(pids, "VmHWM:")
                results[(kind, log_on)]["h2load"].append(r)
                r = cpu_run(pids, lambda: wrk(P_H1, "/small", RUN_S, name=name))
                r["hwm_kib"] = status_kib(pids, "VmHWM:")
                results[(kind, log_on)]["wrk"].append(r)
                stop(p)
                if log_file:
                    # What the access log holds once the proxy has stopped (strangler flushes on SIGTERM):
                    # every request of the start, warm-up included, if no line was lost.
                    with open(log_file, "rb") as f:
                        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
                    served = H2LOAD_WARM + sum(results[(kind, log_on)][t][-1]["requests"] for t in ("h2load", "wrk"))
                    results[(kind, log_on)]["h2load"][-1]["log_lines"] = f"{lines}/{served}"
                    os.remove(log_file)  # ~0.3 GB a start
    for (kind, log_on), by_tool in results.items():
        for tool, runs in by_tool.items():
            load = f"h2load --h1 -c50 -n{H2LOAD_N}" if tool == "h2load" else f"wrk -c{CONNS}"
            extra = {"log_lines": [r.get("log_lines") for r in runs]} if tool == "h2load" and log_on else {}
            turns_row(f"small GET in turns, {load}, access log {'on (file)' if log_on else 'off'}",
                      kind, workers, runs, **extra)


def tls_in_turns(workers, cert, kinds=("strangler", "nginx")):
    """TLS termination (HTTP/1.1 keep-alive over TLS 1.3, wrk -c32), strangler and nginx in turns."""
    def start_side(kind):
        p = start_proxy(kind, workers, cert=cert)
        wait_port(P_TLS)
        return p

    def measure(kind, p, _):
        pids, name = pids_of(p), f"tls-{kind}-w{workers}"
        wrk(P_TLS, "/small", WARM_S, scheme="https", name=name)
        r = cpu_run(pids, lambda: wrk(P_TLS, "/small", RUN_S, scheme="https", name=name))
        r["hwm_kib"] = status_kib(pids, "VmHWM:")
        return r

    results = take_turns(TURNS, kinds, start_side, measure)
    for kind, runs in results.items():
        turns_row(f"small GET, TLS in turns, wrk -c{CONNS}", kind, workers, runs)


# ------------------------------------------------------------------- main

def throughput_rows(upstream, cert, peak):
    """Small GETs over HTTP/1.1 (1 and 2 workers; the latency runs' rate is half nginx's peak here) and,
    with 1 worker, HTTP/2 and 1 MiB bodies both ways: every proxy, one after another."""
    kinds = ["direct", "strangler", "nginx", "haproxy"]
    for workers in (1, 2):
        # With 2 workers, strangler's work-stealing scheduler too (per-core is the default).
        for kind in kinds + (["strangler-ws"] if workers == 2 else []):
            # strangler serves h2c on its plain listener; the others get a TLS listener for h2.
            p = upstream if kind == "direct" else start_proxy(
                kind, workers, cert=None if kind.startswith("strangler") else cert)
            pids = pids_of(p)
            port = port_of(kind, "h1")
            log(f"{kind} with {workers} worker(s)")
            r = measure(pids, lambda s: wrk(port, "/small", s, name=f"small-h1-{kind}-w{workers}"))
            row("small GET, HTTP/1.1", kind, workers, r, pids)
            peak[(kind, workers)] = r["rps"]
            if workers == 1:
                r = measure(pids, lambda s: h2load(port_of(kind, "h2"), "/small", seconds=s,
                                                    name=f"small-h2-{kind}-w{workers}"))
                row("small GET, HTTP/2 (h2c)", kind, workers, r, pids)
                r = measure(pids, lambda s: wrk(port, "/1m", s, conns=8, name=f"download-{kind}"))
                row("1 MiB download", kind, workers, r, pids)
                script = upload_script()
                r = measure(pids, lambda s: wrk(port, "/up", s, conns=8, script=script, name=f"upload-{kind}"))
                row("1 MiB upload", kind, workers, r, pids)
            if kind != "direct":
                stop(p)


def at_fixed_rate(port, rate, name, i, pids=()):
    """One latency measurement: a warm-up, then RUN_S seconds at `rate` req/s offered (h2load --h1, one
    request at a time per connection); p50/p99 from h2load's per-request log, the peak RSS of `pids`."""
    per_client = max(1, rate // CONNS)
    h2load(port, "/small", seconds=WARM_S, h1=True, streams=1, rps=per_client, name=name)
    lf = os.path.join(OUT, f"{name}-{i}.tsv")
    r = h2load(port, "/small", seconds=RUN_S, h1=True, streams=1, rps=per_client, logfile=lf, name=name)
    r["p50"], r["p99"] = percentiles(lf)
    r["hwm_kib"] = status_kib(pids, "VmHWM:")
    return r


def latency_row(scenario, kind, workers, rate, runs, **extra):
    """The row of a fixed-rate step: the medians of its runs' p50 and p99, every run's p99 kept."""
    return row(scenario, kind, workers, {"rps": rate, "errors": sum(r["errors"] for r in runs)}, [],
               hwm_kib=max(r["hwm_kib"] for r in runs), p50_ms=median_or_none([r["p50"] for r in runs]),
               p99_ms=median_or_none([r["p99"] for r in runs]), p99_runs_ms=[r["p99"] for r in runs],
               offered_rps=rate, **extra)


def latency_rows(upstream, peak):
    """p50/p99 at a fixed offered rate, half of nginx's peak with the same worker count: the upstream
    alone, then strangler and nginx in turns (P99_TURNS rounds, each start with its own warm-up). Measured
    one after the other, the VM's drift between the two decided the verdict: nginx's own p99 moved by
    15% from run to run."""
    for workers in (1, 2):
        rate = max(1000, int(peak.get(("nginx", workers)) or 10000) // 2)
        scenario = f"latency @ {rate} req/s (HTTP/1.1)"
        direct = [at_fixed_rate(UP_PORT, rate, f"latency-direct-w{workers}", i, pids_of(upstream))
                  for i in range(RUNS)]
        latency_row(scenario, "direct", workers, rate, direct)
        runs = take_turns(P99_TURNS, ("strangler", "nginx"), lambda kind: start_proxy(kind, workers),
                          lambda kind, p, i: at_fixed_rate(port_of(kind, "h1"), rate, f"latency-{kind}-w{workers}",
                                                           i, pids_of(p)))
        for kind, kind_runs in runs.items():
            latency_row(scenario, kind, workers, rate, kind_runs)


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def route_rows():
    """10,000 routes vs 10 routes (strangler only; nginx has no equivalent prefix table here), in turns
    (10, 10,000, 10, ...; each start with its own warm-up): measured one after the other, the VM's drift
    decided the verdict."""
    def measure_routes(routes, p, _):
        pids, path, name = pids_of(p), f"/svc{routes // 2}/api/users/7", f"routes-{routes}"
        wrk(P_H1, path, WARM_S, name=name)
        r = cpu_run(pids, lambda: wrk(P_H1, path, RUN_S, name=name))
        r["hwm_kib"] = status_kib(pids, "VmHWM:")
        return r

    results = take_turns(TURNS, (10, 10000), lambda routes: start_proxy("strangler", 1, routes=routes),
                         measure_routes)
    for routes, runs in results.items():
        turns_row(f"small GET, {routes} routes", "strangler", 1, runs)


def shadow_rows():
    """A slow shadow (2 s) vs no shadow: the primary's latency at a fixed rate, in turns (off, on, off, on...,
    each start with its own warm-up): measured one after the other, the VM's drift decided the verdict."""
    rate = 2000

    def measure(shadow, p, i):
        r = at_fixed_rate(P_H1, rate, f"shadow-{shadow}", i, pids_of(p))
        if shadow:
            m = sh(f"curl -s http://127.0.0.1:{P_ADMIN}/metrics").stdout
            r["shadow_metrics"] = " ".join(
                l for l in m.splitlines() if l.startswith("strangler_shadow") and "dropped" in l)
        return r

    runs = take_turns(P99_TURNS, (False, True), lambda shadow: start_proxy("strangler", 1, shadow=shadow), measure)
    for shadow, shadow_runs in runs.items():
        latency_row(f"shadow {'on (2 s shadow)' if shadow else 'off'} @ {rate} req/s", "strangler", 1, rate,
                    shadow_runs, shadow_metrics=shadow_runs[-1].get("shadow_metrics", ""))


def idle_rows():
    """Idle memory, then IDLE_N idle keep-alive connections (one request each), 1 and 2 workers."""
    for workers, kinds in ((1, ["strangler", "nginx", "haproxy"]), (2, ["strangler", "nginx"])):
        for kind in kinds:
            p = start_proxy(kind, workers)
            pids = pids_of(p)
            wrk(P_H1, "/small", 1, name=f"idle-warm-{kind}-w{workers}")
            time.sleep(0.5)  # settle after the warm-up; RSS is read once, not polled for a condition
            idle_rss = status_kib(pids, "VmRSS:")
            client, answered = idle_connections(P_H1, IDLE_N)
            time.sleep(1)
            loaded_rss = status_kib(pids, "VmRSS:")
            fds = sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids if os.path.exists(f"/proc/{pid}/fd"))
            stop(client)
            row("idle memory", kind, workers, {"rps": None, "errors": IDLE_N - answered}, pids,
                idle_rss_kib=idle_rss, rss_idle_conns_kib=loaded_rss, idle_conns=IDLE_N, answered=answered,
                fds=fds)
            stop(p)


def start_upstreams():
    """The bench upstream (2 threads) and the slow one the shadow rows mirror to; returns the first."""
    # The slow one stands for a shadow service on another machine: in the SCHED_IDLE class, it runs only on
    # CPU time nothing else on this 2-core box wants, so its bursts of 2-second answers do not take the
    # proxy's or the client's. At nice 10 (before), a burst under EEVDF could finish its slice first.
    start(["chrt", "--idle", "0", UPSTREAM, f"127.0.0.1:{SLOW_PORT}", "1", "slow"], "upstream-slow", SLOW_PORT)
    return start([UPSTREAM, f"127.0.0.1:{UP_PORT}", "2"], "upstream", UP_PORT)


def main():
    upstream = start_upstreams()
    cert = make_cert()
    peak = {}
    steps = [(f"small GET in turns, access log off/on, {w} worker(s)", lambda w=w: in_turns(w)) for w in (1, 2)]
    steps += [(f"TLS in turns, {w} worker(s)", lambda w=w: tls_in_turns(w, cert)) for w in (1, 2)]
    steps += [
        ("throughput, every proxy", lambda: throughput_rows(upstream, cert, peak)),
        ("latency at half nginx's peak", lambda: latency_rows(upstream, peak)),
        ("route table size", route_rows),
        ("slow shadow", shadow_rows),
        ("idle connections", idle_rows),
    ]
    for name, step in steps:
        if ONLY and not any(word in name for word in ONLY):
            continue
        with section(name):
            step()


def train():
    """`--train` (scripts/pgo.sh): the load a profile-guided build learns from. strangler only, a few
    seconds of every kind of traffic the benchmark measures (plain and TLS, access log off and on, 1 and
    2 workers, HTTP/2, large bodies, a big route table, a slow shadow), so that the profile marks hot what
    requests run and nothing is laid out as cold only because the training skipped it. Each proxy must
    exit on its own after SIGTERM: the instrumented binary writes its profile at exit."""
    start_upstreams()
    cert = make_cert()
    seconds = 2

    def run(load, **proxy):
        p = start_proxy("strangler", proxy.pop("workers", 1), **proxy)
        if proxy.get("cert"):
            wait_port(P_TLS)
        load()
        stop(p, grace=60)  # a drain waits for the slow shadow's copies in flight
        if p.returncode != 0:
            raise SystemExit(f"training: strangler exited with {p.returncode}; its profile is incomplete")

    small = lambda: (h2load(P_H1, "/small", n=TRAIN_N, conns=50, streams=1, h1=True, name="train"),
                     wrk(P_H1, "/small", seconds, name="train"))
    for workers in (1, 2):
        run(small, workers=workers)
        run(small, workers=workers, access_log=os.path.join(OUT, "train-access.log"))
        run(lambda: wrk(P_TLS, "/small", seconds, scheme="https", name="train"), workers=workers, cert=cert)
    script = upload_script()
    run(lambda: (h2load(P_H1, "/small", seconds=seconds, name="train"),
                 wrk(P_H1, "/1m", seconds, conns=8, name="train"),
                 wrk(P_H1, "/up", seconds, conns=8, script=script, name="train")))
    run(lambda: wrk(P_H1, f"/svc5000/api/users/7", seconds, name="train"), routes=10000)
    run(lambda: h2load(P_H1, "/small", seconds=seconds * 2, h1=True, streams=1, rps=2000 // CONNS, name="train"),
        shadow=True)


def cpu_model():
    """The CPU as the VM shows it: model name, family/model/stepping and cache sizes (lscpu)."""
    info = {}
    for line in sh("lscpu").stdout.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    name = info.get("Model name") or next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    parts = [f"family {info.get('CPU family', '?')} model {info.get('Model', '?')} stepping {info.get('Stepping', '?')}"]
    caches = [f"{k.split()[0]} {info[k]}" for k in ("L1d cache", "L1i cache", "L2 cache", "L3 cache") if k in info]
    return f"{name} ({'; '.join(parts + caches)})"


def versions():
    first = lambda cmd: (sh(cmd).stdout.strip().splitlines() or ["?"])[0]
    return {
        "nginx": first("nginx -v 2>&1"),
        "haproxy": first("haproxy -v"),
        "wrk": first("wrk -v 2>&1"),
        "h2load": first("h2load --version"),
        "rustc": first("rustc --version"),
        "kernel": os.uname().release,
    }


def finish(started):
    """Records what the run measured on, then writes and prints the report."""
    SUMMARY["elapsed_s"] = round(time.monotonic() - started)
    SUMMARY["load"] = open("/proc/loadavg").read().split()[:3]
    SUMMARY["cpu"] = cpu_model()
    SUMMARY["cpus"] = os.cpu_count()
    SUMMARY["versions"] = versions()
    write_report(OUT, STAMP)


def write_report(out, stamp):
    """RESULTS.md and summary.json into the run's raw directory; bench/RESULTS.md too unless quick."""
    text, console = verdict.render(SUMMARY, stamp, notes=os.path.join(ROOT, "bench/NOTES.md"))
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "RESULTS.md"), "w").write(text)
    json.dump(SUMMARY, open(os.path.join(out, "summary.json"), "w"), indent=1)
    written = [os.path.relpath(os.path.join(out, "RESULTS.md"), ROOT)]
    if not (SUMMARY["method"]["quick"] or SUMMARY["method"].get("only")):
        open(os.path.join(ROOT, "bench/RESULTS.md"), "w").write(text)
        written.append("bench/RESULTS.md")
    print(console)
    log(f"wrote {' and '.join(written)}" + ("" if written[1:] else " (a quick or partial run: bench/RESULTS.md untouched)"))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--report":
    # Re-renders a finished run (bench/raw/<timestamp>) from its summary.json.
    out = os.path.abspath(sys.argv[2])
    SUMMARY.clear()
    SUMMARY.update(json.load(open(os.path.join(out, "summary.json"))))
    write_report(out, os.path.basename(out))
    sys.exit(0)

if __name__ == "__main__" and sys.argv[1:] == ["--train"]:
    os.makedirs(OUT, exist_ok=True)
    STRANGLER, UPSTREAM = binaries()
    try:
        train()
    finally:
        for p in reversed(PROCS):
            stop(p)
    sys.exit(0)

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    STRANGLER, UPSTREAM = binaries()
    SUMMARY["source"] = before = source()
    if not before["clean"]:
        log(f"*** {verdict.dirty_banner(before)} ***")
    begun = time.monotonic()
    try:
        main()
    finally:
        for p in reversed(PROCS):
            try:
                stop(p)
            except Exception:
                pass
        if before["clean"] and source() != before:
            SUMMARY["source"] = {"commit": before["commit"], "clean": False,
                                 "why": "the working tree changed during the run"}
        finish(begun)
