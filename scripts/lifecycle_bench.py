#!/usr/bin/env python3
"""Lifecycle timings against a running host on loopback.

    scripts/lifecycle_bench.py install URL PASSWORD PKG_V1 [ROUNDS]
        Installs PKG_V1 (the greeter plugin), measures the time from sending
        the install request to the first 200 from GET /greeter/v1/version,
        uninstalls it again; ROUNDS times (default 20). Prints JSON.
    scripts/lifecycle_bench.py upgrades URL PASSWORD PKG_V1 PKG_V2 SECONDS [MAX]
        Upgrades greeter back and forth (v2, then v1 with force) for SECONDS
        (at most MAX times), for a load generator running meanwhile. Prints
        JSON (count, times).

Loopback only; stops by itself.
"""
import json, sys, time

from benchlib import call, conn, login, summary


def multipart(archive):
    """The body and content type of an upload of `archive`."""
    boundary = "plughost-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + archive + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def upload(c, auth, archive, query):
    body, kind = multipart(archive)
    headers = dict(auth, **{"content-type": kind})
    status, reply = call(c, "POST", "/admin/v1/sys/plugins?" + query, body, headers)
    assert status == 200, reply
    return reply


def install(url, password, pkg, rounds=20):
    c, probe = conn(url), conn(url)
    auth = login(c, password)
    archive = open(pkg, "rb").read()
    first = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        upload(c, auth, archive, "type=zip")
        while call(probe, "GET", "/greeter/v1/version")[0] != 200:
            assert time.perf_counter() - t0 < 30, "never served"
        first.append((time.perf_counter() - t0) * 1000)
        status, body = call(c, "DELETE", "/admin/v1/sys/plugins/greeter", headers=auth)
        assert status == 200, body
    print(json.dumps({"rounds": rounds, "install_to_first_served_ms": summary(first)}))


def upgrades(url, password, v1, v2, seconds, most=None):
    c = conn(url)
    auth = login(c, password)
    archives = [open(v2, "rb").read(), open(v1, "rb").read()]
    took, n, end = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < end and (most is None or n < most):
        t0 = time.perf_counter()
        upload(c, auth, archives[n % 2], "type=zip&upgrade=true&force=true")
        took.append((time.perf_counter() - t0) * 1000)
        n += 1
        time.sleep(0.2)
    print(json.dumps({"upgrades": n, "upgrade_ms": summary(took)}))


mode = sys.argv[1] if __name__ == "__main__" else ""
if mode == "install":
    install(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 20)
elif mode == "upgrades":
    upgrades(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]),
             int(sys.argv[7]) if len(sys.argv) > 7 else None)
elif __name__ == "__main__":
    sys.exit(__doc__)
