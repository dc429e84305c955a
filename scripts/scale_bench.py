#!/usr/bin/env python3
"""The cluster at scale, on loopback (scripts/bench runs it):

    scripts/scale_bench.py TARGET_DIR POSTGRES_SERVER_URL REDIS_URL OUT.json [ROUNDS] [SIZES]
    scripts/scale_bench.py --render OUT.json      (its section of BENCHMARKS.md)

For each N in SIZES (default 2,8,16): N hosts (release build, one worker
each, each its own empty plugin dir) on one fresh PostgreSQL database and
one Redis, reconcile an hour (only announcements carry changes). ROUNDS
times (default 10): install the greeter package on the first, and time
from sending it to the moment every other host's log says the new
routes went live (its own timestamp; a GET /greeter/v1/version then
confirms 200 on each), so that no polling takes the shared cores from
the followers being timed; toggle it off, then on, timing to the first 503, then 200, on
every other; uninstall it, timing to the first 404 on every other. The
rows the hosts read from the package store's chunk table during the
installs are read off PostgreSQL's statistics (pg_stat_user_tables), per
install, against one read of each chunk per follower.

Then the lifecycle lock: three hosts on PostgreSQL with Redis, the first
killed (SIGKILL) while its install holds the lock in a start hook that
never returns; the time from the kill until an install on the second goes
through, ROUNDS times; the same without Redis (the database's lock).

Everything runs on 127.0.0.1 and stops by itself (every wait gives up
after 30 s).
"""
import datetime, io, json, os, signal, subprocess, sys, tempfile, time, zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import call, conn, login, summary  # noqa: E402
from lifecycle_bench import multipart, upload  # noqa: E402
from services_bench import PASSWORD, PROCS, ROOT, free_port, measure_into, more_files, stop  # noqa: E402

SECRET = "bench-shared-secret-of-at-least-32-chars"


def package(target, name, source):
    out = io.BytesIO()
    src = os.path.join(ROOT, "tests/fixtures/plugins", source)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(os.path.join(src, "plugin.toml"), f"{name}/plugin.toml")
        z.writestr(f"{name}/README.md", f"# {name}\n")
        z.write(os.path.join(target, f"lib{source}.so"), f"{name}/lib{name}.so")
    return out.getvalue()


def psql(server, db, sql):
    return subprocess.run(["psql", f"{server}/{db}", "-qtAc", sql], check=True,
                          capture_output=True, text=True).stdout.strip()


def fresh_database(server, name):
    psql(server, "postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(server, "postgres", f"CREATE DATABASE {name}")
    return f"{server}/{name}"


def start(target, env, debug_lock=False):
    data = tempfile.mkdtemp(prefix="plughost-scale-")
    os.makedirs(os.path.join(data, "plugins"))
    port = free_port()
    log = open(os.path.join(data, "host.log"), "w")
    # The line a follower writes when a new package's routes went live.
    level = "warn,host::plugin::lifecycle=info"
    if debug_lock:
        level += ",host::plugin::lifecycle::lock=debug"
    level = os.environ.get("SCALE_LOG", level)
    full = dict(os.environ, PLUGHOST_ADMIN_PASSWORD=PASSWORD, PLUGHOST_LOG=level,
                PLUGHOST_ACCESS_LOG="false", PLUGHOST_JWT_SECRET=SECRET,
                PLUGHOST_FLAG_RECONCILE="3600", **env)
    proc = subprocess.Popen([os.path.join(target, "plughost"), "serve", "--bind", f"127.0.0.1:{port}",
                             "--data-dir", data, "--workers", "1"],
                            env=full, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=more_files)
    PROCS.append(proc)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    while True:
        assert time.perf_counter() - t0 < 30, open(log.name).read()
        try:
            if call(conn(url, timeout=2), "GET", "/health")[0] == 200:
                return proc, url, log.name
        except OSError:
            time.sleep(0.05)


def until_each(followers, status, t0, path="/greeter/v1/version"):
    """Milliseconds from t0 to each follower's first `status` on `path`."""
    took = [None] * len(followers)
    while any(t is None for t in took):
        assert time.perf_counter() - t0 < 30, f"not every follower answered {status}"
        for i, c in enumerate(followers):
            if took[i] is None and call(c, "GET", path)[0] == status:
                took[i] = (time.perf_counter() - t0) * 1000
        # A pause between passes: polling 15 hosts flat out would take the
        # cores the followers need (and count in what is measured).
        time.sleep(0.003)
    return took


SERVING = "plugin installed; its routes are live plugin=\"greeter\""


def served_at(logs, seen, t0):
    """Milliseconds from t0 (wall clock) to the time each host's log gives
    its next line SERVING (after the `seen` it had), read off its log file
    rather than by polling: requests to 15 hosts every few ms would take
    the cores the followers need. The caller confirms each then serves."""
    took = [None] * len(logs)
    while any(t is None for t in took):
        assert time.time() - t0 < 30, "not every follower served the install"
        for i, path in enumerate(logs):
            if took[i] is None:
                lines = [line for line in open(path) if SERVING in line]
                if len(lines) > seen[i]:
                    stamp = lines[seen[i]].split()[0]
                    at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                    took[i] = (at - t0) * 1000
        time.sleep(0.005)
    for i in range(len(seen)):
        seen[i] += 1
    return took


def cpu_ms(pid):
    """CPU time of every thread of process `pid` so far, ms (schedstat, ns)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e6


def chunk_reads(server, db):
    row = psql(server, db, "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0) "
                           "FROM pg_stat_user_tables WHERE relname = 'sys_package_chunk'")
    return int(row or 0)


def bench_size(target, server, redis_url, n, rounds, archive):
    name = f"plughost_bench_scale_{n}"
    url = fresh_database(server, name)
    hosts = [start(target, {"DATABASE_URL": url, "REDIS_URL": redis_url, "PLUGIN_REDIS_PREFIX": f"scale_{n}",
                            "PLUGHOST_INSTANCE_ID": f"i{i}"}) for i in range(n)]
    a = conn(hosts[0][1])
    auth = login(a, PASSWORD)
    followers = [conn(h[1]) for h in hosts[1:]]
    chunks = None
    result = {"install": [], "off": [], "on": [], "uninstall": [], "reads": [], "follower_cpu": []}
    pids = [h[0].pid for h in hosts[1:]]
    logs = [h[2] for h in hosts[1:]]
    seen = [0] * len(logs)
    for _ in range(rounds):
        psql(server, name, "SELECT pg_stat_clear_snapshot()")
        before = chunk_reads(server, name)
        cpu_before = sum(cpu_ms(p) for p in pids)
        t0 = time.time()
        upload(a, auth, archive, "type=zip")
        result["install"].append(max(served_at(logs, seen, t0)))
        for c in followers:
            assert call(c, "GET", "/greeter/v1/version")[0] == 200
        time.sleep(0.2)  # what each does after its routes are live (its lock, its report)
        result["follower_cpu"].append(sum(cpu_ms(p) for p in pids) - cpu_before)
        if chunks is None:
            chunks = int(psql(server, name, "SELECT chunks FROM sys_package"))
        for state, expect in (("off", 503), ("on", 200)):
            t0 = time.perf_counter()
            # Each PUT toggles the flag.
            status, body = call(a, "PUT", "/admin/v1/sys/plugins/greeter/status", headers=auth)
            assert status == 200, body
            result[state].append(max(until_each(followers, expect, t0)))
        t0 = time.perf_counter()
        status, body = call(a, "DELETE", "/admin/v1/sys/plugins/greeter", headers=auth)
        assert status == 200, body
        result["uninstall"].append(max(until_each(followers, 404, t0)))
        # Statistics reach the view within its flush interval (a second).
        time.sleep(1.2)
        psql(server, name, "SELECT pg_stat_clear_snapshot()")
        result["reads"].append(chunk_reads(server, name) - before)
    for proc, _, _ in hosts:
        stop(proc)
    return {"n": n, "chunks": chunks,
            **{k: summary(v) for k, v in result.items() if k not in ("reads", "follower_cpu")},
            "follower_cpu_ms": round(sorted(result["follower_cpu"])[len(result["follower_cpu"]) // 2], 1),
            "reads_per_install": sorted(result["reads"])[len(result["reads"]) // 2]}


def bench_dead_holder(target, server, redis_url, rounds):
    out = {}
    ticker = package(target, "ticker", "ticker")
    greeter = package(target, "greeter", "greeter_v1")
    for variant in ("redis", "database"):
        took = []
        for r in range(rounds):
            url = fresh_database(server, "plughost_bench_dead_holder")
            env = {"DATABASE_URL": url, "PLUGHOST_HOOK_TIMEOUT": "120"}
            if variant == "redis":
                env["REDIS_URL"] = redis_url
                # Each round its own lock key: a dead holder's lease from
                # the round before must not count.
                env["PLUGIN_REDIS_PREFIX"] = f"bench_dead_{r}"
            holder, holder_url, holder_log = start(target, dict(env, TICKER_START="hang"), debug_lock=True)
            b = start(target, env)
            c = start(target, env)
            h = conn(holder_url)
            auth_h = login(h, PASSWORD)
            bc = conn(b[1])
            auth_b = login(bc, PASSWORD)
            body, kind = multipart(ticker)
            # Sent, never answered: the holder dies first.
            h.request("POST", "/admin/v1/sys/plugins?type=zip", body=body,
                      headers=dict(auth_h, **{"content-type": kind}))
            t0 = time.perf_counter()
            while 'lifecycle lock taken operation="install"' not in open(holder_log).read():
                assert time.perf_counter() - t0 < 30, "the install never took the lock"
                time.sleep(0.02)
            time.sleep(0.5)
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            killed = time.perf_counter()
            upload(bc, auth_b, greeter, "type=zip")
            took.append((time.perf_counter() - killed) * 1000)
            for proc in (b[0], c[0]):
                stop(proc)
        out[variant] = summary(took)
    return out


def render(path):
    r = json.load(open(path))
    print("\n## The cluster at scale\n")
    print("Measured by `scripts/scale_bench.py` (which `scripts/bench` runs): N hosts (release build, one worker each, each"
          " its own empty plugin dir) on one PostgreSQL database and one Redis, every host and the load on the same"
          f" 2 cores, reconcile an hour (only the announcement carries a change); {r['rounds']} rounds per N. Each"
          " time is from sending the operation to the first host until the last other host shows it: for an install,"
          " the timestamp of the line each host logs when the new routes went live (a GET then confirms 200 on each;"
          " polling 15 hosts every few ms would take the cores the followers need); for the others, the first answer"
          " polled (503 after a toggle off, 200 after on, 404 after an uninstall). Package reads: the"
          " rows of the package store's chunk table PostgreSQL counts as read in a round (its statistics), against one"
          " read of each chunk by each of the N-1 followers plus the uninstall's collection of the package. Followers'"
          " CPU: the CPU time of the N-1 follower processes (every thread, from /proc schedstat) from sending the"
          " install until 200 ms after the last served, summed (median round); followers of the same build open the"
          " library without a probe process (the installing host's probe is recorded in the database). Over 2 cores"
          " it is the least time the followers' work can take on this machine.\n")
    print("| N | install: p50 / max ms | followers' CPU per install, ms (over 2 cores) | toggle off | toggle on"
          " | uninstall | package chunk rows read per round |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for s in r["sizes"]:
        print(f"| {s['n']} | **{s['install']['p50']}** / {s['install']['max']}"
              f" | {s['follower_cpu_ms']} ({s['follower_cpu_ms'] / 2:.0f}) | {s['off']['p50']} / {s['off']['max']}"
              f" | {s['on']['p50']} / {s['on']['max']} | {s['uninstall']['p50']} / {s['uninstall']['max']}"
              f" | {s['reads_per_install']} (one read each: {s['chunks'] * s['n']}) |")
    by = {s["n"]: s for s in r["sizes"]}
    if 2 in by and 16 in by:
        ratio = by[16]["install"]["p50"] / by[2]["install"]["p50"]
        print(f"\nInstall to served on the last follower, N = 16 over N = 2 (p50): **{ratio:.2f}x** (target <= 2x,"
              f" and <= 250 ms at 16: {by[16]['install']['p50']} ms).")
    d = r["dead_holder"]
    print(f"\nA lock holder killed (SIGKILL) mid-install, three hosts on PostgreSQL: from the kill to the next install"
          f" on another host going through, p50 / max, {r['rounds']} rounds: with Redis (a 5 s lease renewed every"
          f" second) **{d['redis']['p50']} / {d['redis']['max']} ms**; without Redis (the database's lock, dropped with"
          f" the holder's connection) **{d['database']['p50']} / {d['database']['max']} ms**.")


def main():
    if sys.argv[1] == "--render":
        render(sys.argv[2])
        return
    target, server, redis_url, out = sys.argv[1:5]
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    sizes = [int(n) for n in (sys.argv[6] if len(sys.argv) > 6 else "2,8,16").split(",")]
    archive = package(target, "greeter", "greeter_v1")
    measure_into(out, lambda: {
        "rounds": rounds,
        "sizes": [bench_size(target, server, redis_url, n, rounds, archive) for n in sizes],
        "dead_holder": bench_dead_holder(target, server, redis_url, max(3, rounds // 3))})

if __name__ == "__main__":
    main()
