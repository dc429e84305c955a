#!/usr/bin/env python3
"""What plugins do beyond requests, measured side by side (contract 1.4):

    scripts/services_bench.py TARGET_DIR POSTGRES_SERVER_URL OUT_JSON [ROUNDS] [SECONDS]
    scripts/services_bench.py --render OUT_JSON     (its section of BENCHMARKS.md)

- policy: an admin route for a caller who is not a superuser on a host
  with the casbin_rbac plugin (the authorizer asked on every request)
  against one without, wrk in paired slices; the ratio of throughputs.
- http: a plugin route that fetches a small answer from another local host
  through the host's HTTP service (the `ticker` fixture's /fetch) against
  the same fetch in a native route on reqwest (/native/fetch), wrk in
  alternating rounds; the ratio of median throughputs.
- sse: 1,000 subscribers of the `notice` plugin's live feed on one host, 5
  notices created: delivery time from the create to each subscriber's
  event (p50/p99/max), and the host's RSS per subscriber.
- smtp: the p99 of another route (`hello`) while 20 captcha sends of the
  `email` plugin wait on an SMTP server that takes 0.5 s per message,
  against the same route idle, in alternating slices.
- jobs: a `once` job every 200 ms on three hosts sharing PostgreSQL: runs
  per tick (1.00 when each tick ran on exactly one instance).

Every host and server runs on 127.0.0.1; everything stops by itself.
Writes one JSON object to OUT_JSON.
"""
import asyncio, json, os, re, resource, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import call, conn, login, pct, summary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-admin-password"
PROCS = []
# Hosts on CPU 0, the load on CPU 1, when there are two (as scripts/bench).
PIN_HOST, PIN_LOAD = ([], [])
if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
    PIN_HOST, PIN_LOAD = ["taskset", "-c", "0"], ["taskset", "-c", "1"]


def measure_into(out, measure):
    """Runs `measure` (which starts hosts into PROCS), kills whatever it left
    running, and writes what it returned to `out` as JSON (and stdout)."""
    more_files()
    try:
        result = measure()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def more_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def install(plugins, name, source, libs):
    dest = os.path.join(plugins, name)
    os.makedirs(dest)
    shutil.copy(os.path.join(source, "plugin.toml"), dest)
    readme = os.path.join(source, "README.md")
    if os.path.exists(readme):
        shutil.copy(readme, dest)
    else:  # a plugin directory holds one
        with open(os.path.join(dest, "README.md"), "w") as f:
            f.write(f"# {name}\n")
    shutil.copy(os.path.join(libs, f"lib{name}.so"), dest)
    if os.path.isdir(os.path.join(source, "sql")):
        shutil.copytree(os.path.join(source, "sql"), os.path.join(dest, "sql"))


def plugin_source(name):
    for base in ("plugins", "tests/fixtures/plugins"):
        path = os.path.join(ROOT, base, name)
        if os.path.isdir(path):
            return path
    raise SystemExit(f"no plugin {name}")


def start_host(target, plugins, env=None, workers=1):
    data = tempfile.mkdtemp(prefix="plughost-bench-")
    plugin_dir = os.path.join(data, "plugins")
    os.makedirs(plugin_dir)
    for name in plugins:
        install(plugin_dir, name, plugin_source(name), target)
    port = free_port()
    log = open(os.path.join(data, "host.log"), "w")
    full = dict(os.environ, PLUGHOST_ADMIN_PASSWORD=PASSWORD, PLUGHOST_LOG="warn",
                PLUGHOST_ACCESS_LOG="false", **(env or {}))
    proc = subprocess.Popen(
        PIN_HOST + [os.path.join(target, "plughost"), "serve", "--bind", f"127.0.0.1:{port}",
         "--data-dir", data, "--workers", str(workers), "--bench-baseline"],
        env=full, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=more_files)
    PROCS.append(proc)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            c = conn(url, timeout=2)
            if call(c, "GET", "/health")[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"host did not start: {open(log.name).read()}")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wrk(url, seconds, headers=None):
    extra = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    out = subprocess.run(PIN_LOAD + ["wrk", "-t1", "-c16", f"-d{seconds}s"] + extra + [url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw errors at {url}:\n{out}")
    return float(m.group(1))


def bench_http(target, rounds, seconds):
    backend, backend_url = start_host(target, [])
    host, url = start_host(target, ["ticker"])
    upstream = urllib.parse.quote(f"{backend_url}/health", safe="")
    variants = {"plugin": f"{url}/ticker/v1/fetch?url={upstream}",
                "native": f"{url}/native/fetch?url={upstream}"}
    for path in variants.values():  # warm the pools
        wrk(path, 1)
    # Paired 1 s slices, in alternating order: each pair sees the same
    # machine, so its ratio is steadier than that of runs seconds apart.
    runs = {k: [] for k in variants}
    for r in range(rounds * seconds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            runs[name].append(wrk(variants[name], 1))
    stop(host)
    stop(backend)
    ratio = statistics.median(runs["plugin"]) / statistics.median(runs["native"])
    per_round = statistics.median(p / n for p, n in zip(runs["plugin"], runs["native"]))
    return {"runs": runs, "ratio": round(ratio, 3), "per_round": round(per_round, 3)}


def bench_policy(target, rounds, seconds, policies=20):
    """An admin route (the dict list) for a caller who is not a superuser,
    on a host with the casbin_rbac plugin holding `policies` policies (one
    allows the route) against a host without it, in paired slices."""
    hosts = {"policy": start_host(target, ["dict", "casbin_rbac"]),
             "none": start_host(target, ["dict"])}
    tokens = {}
    for name, (_, url) in hosts.items():
        c = conn(url)
        admin = login(c, PASSWORD)
        json_headers = dict(admin, **{"content-type": "application/json"})
        for path, body in (("/admin/v1/sys/roles", {"name": "reader"}),
                           ("/admin/v1/sys/users", {"username": "bench", "password": "bench-password",
                                                    "roles": ["reader"]})):
            status, out = call(c, "POST", path, json.dumps(body), json_headers)
            assert status == 200, out
        if name == "policy":
            for i in range(policies):
                policy = {"sub": "reader" if i == 0 else f"role{i}",
                          "path": "/admin/v1/sys/dict-*" if i == 0 else f"/admin/v1/sys/other{i}/*",
                          "method": "GET", "effect": "allow"}
                status, out = call(c, "POST", "/admin/v1/sys/casbin/policies", json.dumps(policy), json_headers)
                assert status == 200, out
        status, out = call(c, "POST", "/admin/v1/auth/login",
                           json.dumps({"username": "bench", "password": "bench-password"}),
                           {"content-type": "application/json"})
        assert status == 200, out
        tokens[name] = "Bearer " + json.loads(out)["data"]["access_token"]
    route = "/admin/v1/sys/dict-types?page=1&size=20"
    for name, (_, url) in hosts.items():  # warm up
        wrk(url + route, 1, {"Authorization": tokens[name]})
    runs = {k: [] for k in hosts}
    for r in range(rounds * seconds):
        order = list(hosts) if r % 2 == 0 else list(reversed(hosts))
        for name in order:
            runs[name].append(wrk(hosts[name][1] + route, 1, {"Authorization": tokens[name]}))
    for proc, _ in hosts.values():
        stop(proc)
    ratio = statistics.median(runs["policy"]) / statistics.median(runs["none"])
    per_round = statistics.median(p / n for p, n in zip(runs["policy"], runs["none"]))
    return {"runs": runs, "policies": policies, "ratio": round(ratio, 3), "per_round": round(per_round, 3)}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_sse(target, subscribers=1000, events=5):
    host, url = start_host(target, ["notice"], workers=2)
    c = conn(url)
    auth = login(c, PASSWORD)
    port = int(url.rsplit(":", 1)[1])
    arrivals = {}

    async def subscriber(ready, lock):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(("GET /admin/v1/sys/notices/stream HTTP/1.1\r\nHost: bench\r\n"
                      f"Authorization: {auth['Authorization']}\r\n\r\n").encode())
        await writer.drain()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        ready.release()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                m = re.search(rb'"title":"bench (\d+)"', line)
                if m:
                    arrivals.setdefault(int(m.group(1)), []).append(time.perf_counter())
        except asyncio.CancelledError:
            writer.close()

    async def run():
        ready = asyncio.Semaphore(0)
        lock = asyncio.Lock()
        base = rss_kib(host.pid)
        tasks = [asyncio.create_task(subscriber(ready, lock)) for _ in range(subscribers)]
        for _ in range(subscribers):
            await asyncio.wait_for(ready.acquire(), 60)
        await asyncio.sleep(1)
        loaded = rss_kib(host.pid)
        created = {}
        loop = asyncio.get_running_loop()
        for n in range(events):
            body = json.dumps({"title": f"bench {n}", "type": 0, "status": 1, "content": "x"})
            created[n] = time.perf_counter()
            status, answer = await loop.run_in_executor(None, lambda: call(
                c, "POST", "/admin/v1/sys/notices", body,
                dict(auth, **{"content-type": "application/json"})))
            assert status == 200, answer
            for _ in range(100):
                if len(arrivals.get(n, [])) >= subscribers:
                    break
                await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return base, loaded, created

    base, loaded, created = asyncio.run(run())
    stop(host)
    delays = [(t - created[n]) * 1000 for n, ts in arrivals.items() for t in ts]
    return {"subscribers": subscribers, "events": events,
            "delivered": len(delays), "expected": subscribers * events,
            "delivery_ms": summary(delays, 1),
            "rss_kib_before": base, "rss_kib_after": loaded,
            "rss_kib_per_subscriber": round((loaded - base) / subscribers, 1)}


def bench_smtp(target, rounds, seconds, in_flight=20):
    mail = tempfile.mkdtemp(prefix="plughost-bench-mail-")
    smtp_port = free_port()
    smtp = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/smtp/server.py"),
                             "--port", str(smtp_port), "--user", "bench@example.com",
                             "--password", "pw", "--dir", mail, "--delay", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    PROCS.append(smtp)
    assert smtp.stdout.readline().strip() == b"ready"
    host, url = start_host(target, ["email", "hello"], workers=2, env={
        "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp_port),
        "EMAIL_USERNAME": "bench@example.com", "EMAIL_PASSWORD": "pw"})
    auth = login(conn(url), PASSWORD)
    busy = threading.Event()
    done = threading.Event()
    sent = [0]

    def sender(i):
        c = conn(url, timeout=30)
        while not done.is_set():
            if not busy.is_set():
                time.sleep(0.01)
                continue
            body = json.dumps({"recipients": f"user{i}@example.com"})
            try:
                status, answer = call(c, "POST", "/email/v1/captcha", body,
                                      dict(auth, **{"content-type": "application/json"}))
            except OSError:
                # The host closed an idle keep-alive connection: a new one.
                c = conn(url, timeout=30)
                continue
            assert status == 200, answer
            sent[0] += 1

    threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(in_flight)]
    for t in threads:
        t.start()
    probe = conn(url)
    idle, loaded = [], []
    for r in range(rounds):
        for phase in (("idle", "busy") if r % 2 == 0 else ("busy", "idle")):
            if phase == "busy":
                busy.set()
                time.sleep(0.6)  # every sender is waiting on the server
            else:
                busy.clear()
                time.sleep(1.2)  # the last sends finish
            samples = loaded if phase == "busy" else idle
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                status, _ = call(probe, "GET", "/hello/v1/greet?name=Ada")
                assert status == 200
                samples.append((time.perf_counter() - t0) * 1000)
    done.set()
    busy.clear()
    for t in threads:
        t.join(10)
    stop(host)
    stop(smtp)
    return {"in_flight": in_flight, "sends": sent[0],
            "idle_ms": summary(idle, 3), "busy_ms": summary(loaded, 3),
            "p99_ratio": round(pct(loaded, 99) / pct(idle, 99), 2)}


def bench_jobs(target, pg_server, seconds=6):
    name = f"plughost_bench_jobs_{os.getpid()}"
    subprocess.run(["psql", f"{pg_server}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
    try:
        hosts = [start_host(target, ["ticker"], env={
            "DATABASE_URL": f"{pg_server}/{name}", "TICKER_JOB_MS": "200",
            "PLUGHOST_JWT_SECRET": "a-shared-token-secret-of-at-least-32-chars",
            "PLUGHOST_INSTANCE_ID": f"bench-{i}"}) for i in range(3)]
        time.sleep(seconds)
        ticks = []
        for _, url in hosts:
            status, body = call(conn(url), "GET", "/ticker/v1/jobs")
            assert status == 200, body
            ticks.extend(json.loads(body)["data"]["ticks"])
        for proc, _ in hosts:
            stop(proc)
    finally:
        subprocess.run(["psql", f"{pg_server}/postgres", "-qc", f"DROP DATABASE IF EXISTS {name}"])
    distinct = len(set(ticks))
    return {"instances": 3, "interval_ms": 200, "runs": len(ticks), "ticks": distinct,
            "runs_per_tick": round(len(ticks) / distinct, 2) if distinct else None}


def render(path):
    r = json.load(open(path))
    http, sse, smtp, jobs = r["http"], r["sse"], r["smtp"], r["jobs"]
    print("\n## What plugins do beyond requests (contracts 1.4 and 1.5)\n")
    print("Measured by `scripts/services_bench.py` (which `scripts/bench` runs), release build, every host and server"
          " on 127.0.0.1, variants side by side in one run.\n")
    print("| measure | result | target |")
    print("|---|---:|---:|")
    print(f"| outbound HTTP: plugin route through the host's client / native route on reqwest (throughput, median of paired 1 s slices) "
          f"| **{http['per_round']:.3f}** (ratio of medians {http['ratio']:.3f}) | >= 0.9 |")
    d = sse["delivery_ms"]
    print(f"| SSE fan-out: {sse['subscribers']:,} subscribers of the notice feed, {sse['events']} notices, delivery p99 "
          f"| **{d['p99']} ms** (p50 {d['p50']}, max {d['max']}; {sse['delivered']:,} of {sse['expected']:,} delivered) | <= 100 ms |")
    print(f"| SSE memory: host RSS per subscriber | **{sse['rss_kib_per_subscriber']} KiB** "
          f"({sse['rss_kib_before'] / 1024:.0f} MiB before, {sse['rss_kib_after'] / 1024:.0f} MiB with all) | stated |")
    print(f"| {smtp['in_flight']} SMTP sends in flight (0.5 s each): another route's p99 busy / idle "
          f"| **{smtp['p99_ratio']:.2f}x** (p99 {smtp['busy_ms']['p99']} ms vs {smtp['idle_ms']['p99']} ms; {smtp['sends']} sends) | <= 2x |")
    print(f"| a `once` job every {jobs['interval_ms']} ms on {jobs['instances']} instances sharing PostgreSQL: runs per tick "
          f"| **{jobs['runs_per_tick']:.2f}** ({jobs['runs']} runs, {jobs['ticks']} ticks) | 1.00 |")
    policy = r.get("policy")
    if policy:
        print(f"| an admin route with a policy plugin (`casbin_rbac`, {policy['policies']} policies) / without (throughput, median of paired 1 s slices) "
              f"| **{policy['per_round']:.3f}** (ratio of medians {policy['ratio']:.3f}) | >= 0.9 |")
    print()
    print("- *outbound HTTP*: `GET /ticker/v1/fetch?url=…` (the `ticker` test plugin: `host().http(\"GET\", url)`, body read chunk"
          " by chunk through the host) against `GET /native/fetch?url=…` (the same on a reqwest client in the host), both"
          " fetching `/health` of a second host; wrk -t1 -c16 in paired 1 s slices, one worker per host, hosts on CPU 0 and wrk"
          " on CPU 1. Slices (req/s): plugin "
          + ", ".join(f"{x:,.0f}" for x in http["runs"]["plugin"]) + "; native "
          + ", ".join(f"{x:,.0f}" for x in http["runs"]["native"]) + ".")
    if policy:
        print("- *policy*: `GET /admin/v1/sys/dict-types?page=1&size=20` (the `dict` plugin, SQLite) with the token of a user who"
              " is not a superuser (its role allows the route in one of the policies), on a host with `casbin_rbac` (asked on"
              " every admin request through the authorizer hook) against one without; wrk -t1 -c16 in paired 1 s slices,"
              " one worker per host. Slices (req/s): policy "
              + ", ".join(f"{x:,.0f}" for x in policy["runs"]["policy"]) + "; none "
              + ", ".join(f"{x:,.0f}" for x in policy["runs"]["none"]) + ".")
    print("- *SSE fan-out*: time from sending the `POST /admin/v1/sys/notices` to each subscriber reading the event"
          " (the create, the publish on `notice.created` and 1,000 stream writes), two host workers, the subscribers"
          " in one asyncio process.")
    print("- *SMTP*: 20 client threads each keep one captcha send in flight against an aiosmtpd server that holds every"
          " message 0.5 s (the `email` plugin's lettre client on the host's blocking threads, at most"
          " `PLUGHOST_PLUGIN_BLOCKING` = 8 at once); `GET /hello/v1/greet` sampled sequentially in alternating idle and"
          " busy slices, two host workers.")


def main():
    if sys.argv[1] == "--render":
        render(sys.argv[2])
        return
    target, pg_server, out = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    seconds = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    measure_into(out, lambda: {"http": bench_http(target, rounds, seconds),
                               "policy": bench_policy(target, rounds, seconds),
                               "sse": bench_sse(target),
                               "smtp": bench_smtp(target, rounds, seconds),
                               "jobs": bench_jobs(target, pg_server)})


if __name__ == "__main__":
    main()
