#!/usr/bin/env python3
"""Plugin catalogs, measured side by side on loopback (scripts/bench runs it):

    scripts/catalog_bench.py TARGET_DIR OUT.json [ROUNDS]
    scripts/catalog_bench.py --render OUT.json      (its section of BENCHMARKS.md)

- build: `plughost catalog build` of a folder of the two greeter packages
  (release build), signed; the time per run.
- install: one host (release build, SQLite), the greeter package
  installed by upload and by name from a catalog of that folder served by
  Python's http.server, alternating, ROUNDS times each (default 10): the
  time from sending the request to its 200 (the plugin serving), then an
  uninstall.
- list: GET /admin/v1/sys/plugin-catalog against a signed catalog of 2
  entries and an unsigned one of 500 (generated entries of the same
  shape), alternating, 5 x ROUNDS times each.

Everything runs on 127.0.0.1 and stops by itself (every wait gives up
after 30 s).
"""
import json, os, subprocess, sys, tempfile, time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import call, conn, login, summary  # noqa: E402
from lifecycle_bench import upload  # noqa: E402
from scale_bench import package  # noqa: E402
from services_bench import PASSWORD, PROCS, free_port, measure_into, stop  # noqa: E402

SECRET = "bench-shared-secret-of-at-least-32-chars"


def serve_dir(folder):
    port = free_port()
    proc = subprocess.Popen(["python3", "-m", "http.server", "--bind", "127.0.0.1", str(port),
                             "--directory", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(proc)
    t0 = time.perf_counter()
    while True:
        assert time.perf_counter() - t0 < 30, "the static server did not start"
        try:
            conn(f"http://127.0.0.1:{port}", timeout=1).request("HEAD", "/")
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.05)


def start_host(target, data, catalogs, keys):
    os.makedirs(os.path.join(data, "plugins"), exist_ok=True)
    port = free_port()
    env = dict(os.environ, PLUGHOST_ADMIN_PASSWORD=PASSWORD, PLUGHOST_LOG="warn", PLUGHOST_ACCESS_LOG="false",
               PLUGHOST_JWT_SECRET=SECRET, PLUGHOST_CATALOG=",".join(catalogs), PLUGHOST_TRUSTED_KEYS=keys)
    proc = subprocess.Popen([os.path.join(target, "plughost"), "serve", "--bind", f"127.0.0.1:{port}",
                             "--data-dir", data, "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(data, "host.log"), "w"))
    PROCS.append(proc)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    while True:
        assert time.perf_counter() - t0 < 30, "the host did not start"
        try:
            if call(conn(url, timeout=2), "GET", "/health")[0] == 200:
                return proc, url
        except OSError:
            time.sleep(0.05)


def big_index(folder, entries):
    """An unsigned index of `entries` generated entries (listing cost)."""
    os.makedirs(folder)
    index = {"format": 1, "entries": [
        {"name": f"plugin_{i:04d}", "contract": "1.5.0",
         "plugin": {"summary": f"Generated entry {i}", "version": f"1.{i % 7}.0", "description": "x" * 200,
                    "author": "bench", "tags": ["bench", f"t{i % 10}"], "database": []},
         "package": {"url": f"plugin_{i:04d}.zip", "sha256": "0" * 64, "size": 1000000}}
        for i in range(entries)]}
    with open(os.path.join(folder, "index.json"), "w") as f:
        json.dump(index, f)


def measure(target, rounds):
    work = tempfile.mkdtemp(prefix="plughost-catalog-bench-")
    plughost = os.path.join(target, "plughost")
    key = os.path.join(work, "bench.key")
    subprocess.run([plughost, "plugin", "keygen", "--out", key, "--no-password"], check=True,
                   capture_output=True)
    folder = os.path.join(work, "catalog")
    os.makedirs(folder)
    v1 = package(target, "greeter", "greeter_v1")
    for name, source in (("greeter-1.0.0.zip", "greeter_v1"), ("greeter-2.0.0.zip", "greeter_v2")):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(package(target, "greeter", source))
    builds = []
    for _ in range(max(3, rounds // 2)):
        t0 = time.perf_counter()
        subprocess.run([plughost, "catalog", "build", folder, "--sign", key], check=True, capture_output=True,
                       env=dict(os.environ, PLUGHOST_LOG="warn"))
        builds.append((time.perf_counter() - t0) * 1000)
    big = os.path.join(work, "big")
    big_index(big, 500)
    _, served = serve_dir(folder)
    _, served_big = serve_dir(big)
    host, url = start_host(target, os.path.join(work, "host"), [served], key + ".pub")
    c = conn(url)
    auth = login(c, PASSWORD)
    took = {"upload": [], "catalog": []}
    for _ in range(rounds):
        for way in ("upload", "catalog"):
            t0 = time.perf_counter()
            if way == "upload":
                upload(c, auth, v1, "type=zip")
            else:
                query = urllib.parse.urlencode({"type": "catalog", "name": "greeter", "version": "1.0.0"})
                status, body = call(c, "POST", "/admin/v1/sys/plugins?" + query, headers=auth)
                assert status == 200, body
            took[way].append((time.perf_counter() - t0) * 1000)
            assert call(c, "GET", "/greeter/v1/version")[0] == 200
            status, body = call(c, "DELETE", "/admin/v1/sys/plugins/greeter", headers=auth)
            assert status == 200, body
    stop(host)
    listing = {"small": [], "big": []}
    hosts = {"small": start_host(target, os.path.join(work, "small"), [served], key + ".pub"),
             "big": start_host(target, os.path.join(work, "bighost"), [served_big], key + ".pub")}
    clients = {k: (conn(u), login(conn(u), PASSWORD)) for k, (_, u) in hosts.items()}
    for _ in range(rounds * 5):
        for k, (cc, a) in clients.items():
            t0 = time.perf_counter()
            status, body = call(cc, "GET", "/admin/v1/sys/plugin-catalog", headers=a)
            assert status == 200, body
            listing[k].append((time.perf_counter() - t0) * 1000)
    for proc, _ in hosts.values():
        stop(proc)
    return {"rounds": rounds, "build_ms": summary(builds), "install_upload_ms": summary(took["upload"]),
            "install_catalog_ms": summary(took["catalog"]), "list_2_ms": summary(listing["small"]),
            "list_500_ms": summary(listing["big"]),
            "index_500_bytes": os.path.getsize(os.path.join(big, "index.json"))}


def render(path):
    r = json.load(open(path))
    print("\n## Plugin catalogs\n")
    print("Measured by `scripts/catalog_bench.py` (which `scripts/bench` runs), release build, every process on"
          " loopback: one host (SQLite, one worker) with a catalog served by Python's `http.server`. Install: the"
          " greeter package by upload and by name from the catalog (`type=catalog&name=greeter&version=1.0.0`:"
          " index read and its signature verified, package downloaded, its sha256 compared), alternating,"
          f" {r['rounds']} each, from sending to the 200 (serving), uninstalled between. List: `GET"
          " /admin/v1/sys/plugin-catalog` against a signed catalog of 2 entries and an unsigned one of 500"
          f" ({r['index_500_bytes'] // 1024} KiB), alternating. Build: `plughost catalog build` of the two greeter"
          " packages, signed (each package opened in a probe process, as an install does).\n")
    print("| what | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for key, label in (("install_upload_ms", "install by upload"), ("install_catalog_ms", "install by name from the catalog"),
                       ("list_2_ms", "list a catalog of 2 entries (signed)"),
                       ("list_500_ms", "list a catalog of 500 entries"),
                       ("build_ms", "`catalog build` of 2 packages")):
        print(f"| {label} | **{r[key]['p50']}** | {r[key]['p99']} |")
    ratio = r["install_catalog_ms"]["p50"] / r["install_upload_ms"]["p50"]
    print(f"\nInstall by name from the catalog over install by upload (p50): **{ratio:.2f}x**.")


def main():
    if sys.argv[1] == "--render":
        render(sys.argv[2])
        return
    target, out = sys.argv[1:3]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    measure_into(out, lambda: measure(target, rounds))


if __name__ == "__main__":
    main()
