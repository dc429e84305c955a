#!/usr/bin/env python3
"""Start-up and install time against the number of plugins.

usage: many_plugins.py HOST_BINARY TEMPLATE_DIR WORK_DIR OUT_TSV [COUNTS...]

TEMPLATE_DIR is a built plugin directory named manyplug_000000 (plugin.toml,
README.md, libmanyplug_000000.so). Plugin i is that directory with every
occurrence of the name, in the manifest and in the library's bytes,
replaced by manyplug_<i> (same length: the library stays a valid ELF, its
routes move to /manyplug_<i>/v1/hit). For each count a host starts on a
plugin dir holding that many, on SQLite, once cold (no library copies yet)
and then warm (restarted) five times, alternating with the other counts,
each time once with every CPU of the machine (kind "warm") and once held
to one CPU by taskset (kind "warm1", when taskset and two CPUs are there);
each start is timed from launch to /health answering (the host binds only
after every plugin is loaded) and its RSS read then. Then, on a running
host (on one CPU) with 1 and with the largest count, one more plugin is
installed through the HTTP API (a ZIP upload) and timed, five times
each, alternating. Between the two, the floor: the host's copies of the
libraries opened by dlopen alone in a fresh process on one CPU, three
times per count.

OUT_TSV gets lines: kind count ms [rss_kb].
"""
import io, os, pathlib, shutil, socket, subprocess, sys, time, zipfile

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import call, conn, login  # noqa: E402

TEMPLATE = "manyplug_000000"
# One CPU for the host (and the dlopen floor), when the machine can spare it.
ONE_CPU = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []
PASSWORD = "bench-admin-password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_plugin(template, out_dir, i):
    name = f"manyplug_{i:06d}"
    assert len(name) == len(TEMPLATE)
    target = out_dir / name
    target.mkdir(parents=True)
    for f in template.iterdir():
        data = f.read_bytes().replace(TEMPLATE.encode(), name.encode())
        (target / f.name.replace(TEMPLATE, name)).write_bytes(data)
    return target


def start(binary, data_dir, port, pin=()):
    env = dict(os.environ, PLUGHOST_ADMIN_PASSWORD=PASSWORD, PLUGHOST_LOG="warn")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*pin, binary, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(data_dir / "host.log", "ab"))
    url = f"http://127.0.0.1:{port}"
    while True:
        assert proc.poll() is None, f"host exited: see {data_dir / 'host.log'}"
        assert time.perf_counter() - t0 < 120, "host never answered /health"
        try:
            c = conn(url, timeout=5)
            if call(c, "GET", "/health")[0] == 200:
                c.close()
                break
        except OSError:
            pass
        time.sleep(0.002)
    ms = (time.perf_counter() - t0) * 1000
    rss = next(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status")
               if line.startswith("VmRSS:"))
    return proc, url, ms, rss


def check_served(url, n):
    """Every generated plugin of the first n answers its route."""
    c = conn(url)
    for i in range(1, n + 1):
        status, body = call(c, "GET", f"/manyplug_{i:06d}/v1/hit")
        assert status == 200 and f"manyplug_{i:06d}".encode() in body, (i, status, body)


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


def package(plugin_dir):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in plugin_dir.iterdir():
            z.write(f, f"{plugin_dir.name}/{f.name}")
    return out.getvalue()


def upload(url, headers, body, name):
    boundary = "manypluginsbench"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    c = conn(url, timeout=120)
    t0 = time.perf_counter()
    status, answer = call(c, "POST", "/admin/v1/sys/plugins?type=zip", form,
                          dict(headers, **{"content-type": f"multipart/form-data; boundary={boundary}"}))
    ms = (time.perf_counter() - t0) * 1000
    assert status == 200, answer
    served = call(c, "GET", f"/{name}/v1/hit")
    assert served[0] == 200, served
    return ms


DLOPEN = """
import ctypes, os, pathlib, sys, time
libs = sorted(pathlib.Path(sys.argv[1]).glob("*.so"))
t0 = time.perf_counter()
for lib in libs:
    ctypes.CDLL(str(lib), mode=os.RTLD_NOW | os.RTLD_LOCAL)
print((time.perf_counter() - t0) * 1000)
"""


def dlopen_alone(libs_dir):
    """Milliseconds to dlopen every library copy in libs_dir, in a fresh process."""
    out = subprocess.run([*ONE_CPU, sys.executable, "-c", DLOPEN, str(libs_dir)], check=True,
                         capture_output=True, text=True).stdout
    return float(out)


def main():
    binary, template, work, out_path = sys.argv[1:5]
    counts = [int(n) for n in sys.argv[5:]] or [1, 100, 300, 500]
    template, work = pathlib.Path(template), pathlib.Path(work)
    shutil.rmtree(work, ignore_errors=True)
    pool = work / "pool"
    biggest = max(counts)
    plugins = [make_plugin(template, pool, i) for i in range(1, biggest + 1)]
    extra = [make_plugin(template, pool, biggest + i) for i in range(1, 6)]
    out = open(out_path, "w")
    dirs = {}
    for n in counts:
        d = dirs[n] = work / f"data-{n}"
        (d / "plugins").mkdir(parents=True)
        for p in plugins[:n]:
            shutil.copytree(p, d / "plugins" / p.name)
    for n in counts:
        proc, url, ms, rss = start(binary, dirs[n], free_port())
        check_served(url, n)
        stop(proc)
        print(f"cold\t{n}\t{ms:.1f}\t{rss}", file=out, flush=True)
    variants = [("warm", ())] + ([("warm1", ONE_CPU)] if ONE_CPU else [])
    for _ in range(5):
        for n in counts:
            for kind, pin in variants:
                proc, _, ms, rss = start(binary, dirs[n], free_port(), pin)
                stop(proc)
                print(f"{kind}\t{n}\t{ms:.1f}\t{rss}", file=out, flush=True)
    # The floor: the same libraries opened by dlopen alone, in a process
    # that does nothing else (the host's copies, each with its checks).
    for _ in range(3):
        for n in counts:
            print(f"dlopen\t{n}\t{dlopen_alone(dirs[n] / 'libs'):.1f}", file=out, flush=True)
    hosts = {}
    for n in (min(counts), biggest):
        proc, url, _, _ = start(binary, dirs[n], free_port(), ONE_CPU)
        hosts[n] = (proc, url, login(conn(url), PASSWORD))
    for i, plugin in enumerate(extra):
        for n, (proc, url, headers) in hosts.items():
            # The same plugin goes to both hosts, so each upload is a first install.
            ms = upload(url, headers, package(plugin), plugin.name)
            print(f"install\t{n}\t{ms:.1f}", file=out, flush=True)
    for proc, _, _ in hosts.values():
        stop(proc)


if __name__ == "__main__":
    main()
