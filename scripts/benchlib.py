"""Helpers shared by the benchmark drivers: loopback HTTP connections,
requests, admin login and percentiles."""
import http.client, json, statistics, urllib.parse


def conn(url, timeout=30):
    u = urllib.parse.urlparse(url)
    assert u.hostname in ("127.0.0.1", "::1", "localhost"), "loopback only"
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def call(c, method, path, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    return r.status, r.read()


def login(c, password):
    status, body = call(c, "POST", "/admin/v1/auth/login",
                        json.dumps({"username": "admin", "password": password}),
                        {"content-type": "application/json"})
    assert status == 200, body
    return {"Authorization": "Bearer " + json.loads(body)["data"]["access_token"]}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs, digits=1):
    if not xs:
        return {}
    return {"p50": round(statistics.median(xs), digits), "p99": round(pct(xs, 99), digits),
            "max": round(max(xs), digits)}
