#!/usr/bin/env python3
"""Propagation latency of plugin flags between two running hosts.

    scripts/propagation.py URL_A URL_B PASSWORD [TOGGLES]

Toggles the hello plugin on host A (as admin) TOGGLES times (default 200)
and, after each, polls host B's hello route over one keep-alive connection
until B enforces the new state (503 when disabled, 200 when enabled).
Prints one JSON object: p50/p99/max of toggle-to-enforcement on B and of
A's own toggle response time, in milliseconds. Loopback only; stops by
itself (each wait gives up after 5 s and counts as a failure).
"""
import json, sys, time

from benchlib import call, conn, login, summary


def main():
    a_url, b_url, password = sys.argv[1:4]
    toggles = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    a, b = conn(a_url, timeout=5), conn(b_url, timeout=5)
    auth = login(a, password)
    propagation, response, failures = [], [], 0
    for _ in range(toggles):
        t0 = time.perf_counter()
        status, body = call(a, "PUT", "/admin/v1/sys/plugins/hello/status", headers=auth)
        t1 = time.perf_counter()
        assert status == 200, body
        want = 200 if json.loads(body)["data"]["enable"] == "1" else 503
        while True:
            if call(b, "GET", "/hello/v1/greet")[0] == want:
                t2 = time.perf_counter()
                break
            if time.perf_counter() - t0 > 5:
                failures += 1
                t2 = None
                break
        response.append((t1 - t0) * 1000)
        if t2 is not None:
            propagation.append((t2 - t0) * 1000)
    print(json.dumps({"toggles": toggles, "failures": failures,
                      "propagation_ms": summary(propagation, 2),
                      "toggle_response_ms": summary(response, 2)}))


main()
