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
import http.client, json, statistics, sys, time, urllib.parse


def conn(url):
    u = urllib.parse.urlparse(url)
    assert u.hostname in ("127.0.0.1", "::1", "localhost"), "loopback only"
    return http.client.HTTPConnection(u.hostname, u.port, timeout=5)


def call(c, method, path, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    return r.status, r.read()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    a_url, b_url, password = sys.argv[1:4]
    toggles = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    a, b = conn(a_url), conn(b_url)
    status, body = call(a, "POST", "/admin/v1/auth/login",
                        json.dumps({"username": "admin", "password": password}),
                        {"content-type": "application/json"})
    assert status == 200, body
    auth = {"Authorization": "Bearer " + json.loads(body)["data"]["access_token"]}
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
    summary = lambda xs: {"p50": round(statistics.median(xs), 2), "p99": round(pct(xs, 99), 2),
                          "max": round(max(xs), 2)} if xs else {}
    print(json.dumps({"toggles": toggles, "failures": failures,
                      "propagation_ms": summary(propagation), "toggle_response_ms": summary(response)}))


main()
