#!/usr/bin/env python3
"""Cluster timings against running hosts on loopback.

    scripts/cluster_bench.py follow PASSWORD PKG ROUNDS URL_A URL_B [URL_C ...]
        Installs PKG (the greeter plugin) on A and measures, for every other
        host, the time from sending the install request to A to that host's
        first 200 from GET /greeter/v1/version; then uninstalls it on A and
        waits until every other host answers 404. ROUNDS times. Prints JSON.
    scripts/cluster_bench.py serving URL NAMES_FILE
        Waits until URL serves every plugin named in NAMES_FILE (one per
        line) at /NAME/v1/hit; prints nothing. Used to time start-ups.

Loopback only; stops by itself (every wait gives up after 30 s).
"""
import json, sys, time

from benchlib import call, conn, login, summary
from lifecycle_bench import upload


def follow(password, pkg, rounds, urls):
    a = conn(urls[0])
    followers = [conn(u) for u in urls[1:]]
    auth = login(a, password)
    archive = open(pkg, "rb").read()
    times = [[] for _ in followers]
    for _ in range(rounds):
        t0 = time.perf_counter()
        upload(a, auth, archive, "type=zip")
        waiting = set(range(len(followers)))
        while waiting:
            assert time.perf_counter() - t0 < 30, "never served by every follower"
            for i in sorted(waiting):
                if call(followers[i], "GET", "/greeter/v1/version")[0] == 200:
                    times[i].append((time.perf_counter() - t0) * 1000)
                    waiting.discard(i)
        status, body = call(a, "DELETE", "/admin/v1/sys/plugins/greeter", headers=auth)
        assert status == 200, body
        t1 = time.perf_counter()
        while any(call(f, "GET", "/greeter/v1/version")[0] != 404 for f in followers):
            assert time.perf_counter() - t1 < 30, "never uninstalled on every follower"
            time.sleep(0.01)
    print(json.dumps({"rounds": rounds, "followers": [summary(t) for t in times]}))


def serving(url, names_file):
    names = [n.strip() for n in open(names_file) if n.strip()]
    t0 = time.perf_counter()
    c = conn(url)
    for name in names:
        while True:
            assert time.perf_counter() - t0 < 30, f"{name} never served"
            try:
                if call(c, "GET", f"/{name}/v1/hit")[0] == 200:
                    break
            except OSError:  # not listening yet
                c.close()
                c = conn(url)
            time.sleep(0.005)


mode = sys.argv[1] if len(sys.argv) > 1 else ""
if mode == "follow":
    follow(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
elif mode == "serving":
    serving(sys.argv[2], sys.argv[3])
else:
    sys.exit(__doc__)
