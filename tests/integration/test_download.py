"""providers/download.c through tests/download-tool against the test HTTP server (httpd.py):
parallel fetches, the cache, checksum and size checks, retries, resuming, timeouts, conditional
requests and file:// URLs. Every test checks the bytes on disk and what the server saw."""

import errno
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import MOSAIC, run_on_terminal
from httpd import serve

TOOL = Path(MOSAIC).parent.parent / "tests" / "download-tool"

pytestmark = pytest.mark.skipif(
    not TOOL.exists(), reason=f"{TOOL} is not built (ninja -C <build> tests/download-tool)")


def sha(data):
    return hashlib.sha256(data).hexdigest()


def fetch(*args, expect_ok=True):
    p = subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), f"download-tool exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    out = json.loads(p.stdout)
    assert (p.returncode == 0) == expect_ok, p.stdout + p.stderr
    assert out["open_fds"] == 0, "download_run left descriptors open"
    out["stderr"] = p.stderr
    return out


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "root"
    d.mkdir()
    return d


@pytest.fixture
def srv(root):
    with serve(root) as s:
        yield s


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def put(root, name, size, seed=0):
    """A file of `size` deterministic but incompressible-looking bytes; returns its content."""
    data = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(size // 32 + 1))
    data = data[:size]
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return data


def gets(srv, path=None):
    return [r for r in srv.requests if r.method == "GET" and (path is None or r.path == path)]


def test_parallel_fetch(srv, root, out):
    files = {f"/pool/f{i:02d}.deb": put(root, f"pool/f{i:02d}.deb", 20000 + 7919 * i, seed=i)
             for i in range(20)}
    args = []
    for path, data in files.items():
        # Holding each response back a little makes the transfers overlap visibly.
        srv.stall(path, 0.3)
        args += [srv.url + path, out / Path(path).name, sha(data), len(data)]
    res = fetch("--parallel", 4, *args)
    assert all(it["result"] == 0 and it["attempts"] == 1 for it in res["items"])
    for path, data in files.items():
        assert sha((out / Path(path).name).read_bytes()) == sha(data)
    assert not list(out.glob("*.part"))
    assert sorted(r.path for r in gets(srv)) == sorted(files)
    assert all(r.status == 200 for r in gets(srv))
    # Four at once, never more.
    assert srv.max_concurrent == 4
    st = res["stats"]
    assert st["fetched"] == 20 and st["cached"] == 0 and st["failed"] == 0
    assert st["bytes"] == sum(len(d) for d in files.values())
    assert "20 fetched, 0 cached" in res["stderr"]


def test_cached_file_needs_no_request(srv, root, out):
    data = put(root, "a.deb", 50000)
    (out / "a.deb").write_bytes(data)
    (out / "b.deb").write_bytes(b"whatever is there")
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data),
                srv.url + "/b.deb", out / "b.deb")
    assert [it["cached"] for it in res["items"]] == [True, True]
    assert res["stats"]["cached"] == 2 and res["stats"]["fetched"] == 0
    assert srv.requests == []


def test_wrong_cached_file_is_fetched_again(srv, root, out):
    data = put(root, "a.deb", 50000)
    (out / "a.deb").write_bytes(b"x" * 50000)
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data))
    assert not res["items"][0]["cached"]
    assert (out / "a.deb").read_bytes() == data
    assert len(gets(srv)) == 1


def test_sha256_mismatch(srv, root, out):
    good = put(root, "a.deb", 70000)
    tampered = bytearray(good)
    tampered[1234] ^= 0xFF
    (root / "a.deb").write_bytes(tampered)
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(good), len(good), expect_ok=False)
    it = res["items"][0]
    assert it["result"] == -errno.EBADMSG
    assert it["error"] == (f"{srv.url}/a.deb: sha256 mismatch: expected {sha(good)}, "
                           f"got {sha(bytes(tampered))}")
    assert res["error"] == it["error"]
    assert it["attempts"] == 1 and len(gets(srv)) == 1
    assert not (out / "a.deb").exists() and not (out / "a.deb.part").exists()


def test_size_mismatch(srv, root, out):
    data = put(root, "a.deb", 70000)
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data) + 10, expect_ok=False)
    it = res["items"][0]
    assert it["result"] == -errno.EBADMSG
    assert "size mismatch: expected 70010 bytes, got 70000" in it["error"]
    assert not (out / "a.deb").exists() and not (out / "a.deb.part").exists()

    # More bytes than announced stop the transfer early.
    res = fetch(srv.url + "/a.deb", out / "a.deb", "-", 1000, expect_ok=False)
    assert "size mismatch: expected 1000 bytes, got more" in res["items"][0]["error"]
    assert not (out / "a.deb").exists() and not (out / "a.deb.part").exists()


def test_404_fails_at_once(srv, root, out):
    res = fetch("--retries", 3, srv.url + "/missing.deb", out / "m.deb", expect_ok=False)
    it = res["items"][0]
    assert it["result"] == -errno.ENOENT
    assert it["error"].startswith(f"{srv.url}/missing.deb: HTTP 404")
    assert it["attempts"] == 1
    assert [r.status for r in srv.requests] == [404]
    assert not (out / "m.deb").exists() and not (out / "m.deb.part").exists()


def test_403_fails_at_once(srv, root, out):
    put(root, "a.deb", 100)
    srv.fail("/a.deb", 403)
    res = fetch(srv.url + "/a.deb", out / "a.deb", expect_ok=False)
    assert res["items"][0]["result"] == -errno.EACCES
    assert "HTTP 403 Forbidden" in res["items"][0]["error"]
    assert len(srv.requests) == 1


def test_500_once_is_retried(srv, root, out):
    data = put(root, "a.deb", 90000)
    srv.fail("/a.deb", 500)
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data))
    it = res["items"][0]
    assert it["result"] == 0 and it["attempts"] == 2 and not it["resumed"]
    assert [r.status for r in gets(srv)] == [500, 200]
    assert res["stats"]["retries"] == 1
    assert (out / "a.deb").read_bytes() == data


def test_5xx_gives_up_after_retries(srv, root, out):
    put(root, "a.deb", 1000)
    srv.fail("/a.deb", 503, times=10)
    t = time.monotonic()
    res = fetch("--retries", 2, srv.url + "/a.deb", out / "a.deb", expect_ok=False)
    it = res["items"][0]
    assert it["attempts"] == 3 and len(gets(srv)) == 3
    assert "HTTP 503 Service Unavailable (gave up after 3 attempts)" in it["error"]
    # Backoff 0.5 s, then 1 s.
    assert time.monotonic() - t >= 1.4


def test_dropped_connection_resumes(srv, root, out):
    data = put(root, "big.deb", 1_000_000)
    srv.drop("/big.deb", after=300_000)
    res = fetch(srv.url + "/big.deb", out / "big.deb", sha(data), len(data))
    it = res["items"][0]
    assert it["result"] == 0 and it["resumed"] and it["attempts"] == 2
    reqs = gets(srv)
    assert [(r.status, r.range, r.sent) for r in reqs] == [
        (200, None, 300_000), (206, "bytes=300000-", 700_000)]
    assert it["bytes"] == 1_000_000
    assert sha((out / "big.deb").read_bytes()) == sha(data)
    assert not (out / "big.deb.part").exists()
    assert res["stats"]["resumed"] == 1 and res["stats"]["retries"] == 1


def test_dropped_connection_without_digest_resumes(srv, root, out):
    data = put(root, "InRelease", 200_000)
    srv.drop("/InRelease", after=50_000)
    res = fetch(srv.url + "/InRelease", out / "InRelease")
    assert res["items"][0]["resumed"]
    assert [r.range for r in gets(srv)] == [None, "bytes=50000-"]
    assert (out / "InRelease").read_bytes() == data


def test_part_from_earlier_run_is_resumed(srv, root, out):
    data = put(root, "a.deb", 600_000)
    (out / "a.deb.part").write_bytes(data[:400_000])
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data))
    it = res["items"][0]
    assert it["resumed"] and it["attempts"] == 1 and it["bytes"] == 200_000
    assert [(r.status, r.range) for r in gets(srv)] == [(206, "bytes=400000-")]
    assert (out / "a.deb").read_bytes() == data
    assert not (out / "a.deb.part").exists()


def test_part_without_digest_is_not_trusted(srv, root, out):
    data = put(root, "a.deb", 100_000)
    (out / "a.deb.part").write_bytes(b"stale" * 1000)
    res = fetch(srv.url + "/a.deb", out / "a.deb")
    assert not res["items"][0]["resumed"]
    assert [(r.status, r.range) for r in gets(srv)] == [(200, None)]
    assert (out / "a.deb").read_bytes() == data


def test_stale_part_starts_over_once(srv, root, out):
    data = put(root, "a.deb", 300_000)
    (out / "a.deb.part").write_bytes(b"\0" * 100_000)
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data))
    it = res["items"][0]
    assert it["result"] == 0 and it["attempts"] == 2
    assert [(r.status, r.range) for r in gets(srv)] == [(206, "bytes=100000-"), (200, None)]
    assert (out / "a.deb").read_bytes() == data


def test_complete_part_needs_no_request(srv, root, out):
    data = put(root, "a.deb", 30_000)
    (out / "a.deb.part").write_bytes(data)
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data))
    assert res["items"][0]["result"] == 0 and res["items"][0]["attempts"] == 0
    assert srv.requests == []
    assert (out / "a.deb").read_bytes() == data and not (out / "a.deb.part").exists()


def test_part_past_the_end_416_starts_over(srv, root, out):
    data = put(root, "a.deb", 30_000)
    (out / "a.deb.part").write_bytes(b"y" * 40_000)  # size unknown: cannot tell beforehand
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data))
    assert res["items"][0]["result"] == 0
    assert [(r.status, r.range) for r in gets(srv)] == [(416, "bytes=40000-"), (200, None)]
    assert (out / "a.deb").read_bytes() == data


def test_server_ignoring_range(srv, root, out):
    data = put(root, "a.deb", 500_000)
    (out / "a.deb.part").write_bytes(data[:200_000])
    srv.norange("/a.deb")
    res = fetch(srv.url + "/a.deb", out / "a.deb", sha(data), len(data))
    it = res["items"][0]
    assert it["result"] == 0 and not it["resumed"] and it["attempts"] == 1
    # One request: the whole file that came back replaced the partial one.
    assert [(r.status, r.range) for r in gets(srv)] == [(200, "bytes=200000-")]
    assert it["bytes"] == 500_000
    assert (out / "a.deb").read_bytes() == data


def test_stall_times_out(srv, root, out):
    put(root, "slow.deb", 10_000)
    srv.stall("/slow.deb", 60, times=5)
    t = time.monotonic()
    res = fetch("--low-speed-time", 2, "--retries", 1, srv.url + "/slow.deb", out / "slow.deb",
                expect_ok=False)
    elapsed = time.monotonic() - t
    it = res["items"][0]
    assert it["result"] == -errno.ETIMEDOUT
    assert "too slow" in it["error"] and "gave up after 2 attempts" in it["error"]
    assert it["attempts"] == 2 and len(gets(srv)) == 2
    assert 4 <= elapsed < 15
    assert not (out / "slow.deb").exists()


def test_connection_refused_is_retried(out):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    res = fetch("--retries", 1, f"http://127.0.0.1:{port}/a", out / "a", expect_ok=False)
    it = res["items"][0]
    assert it["result"] == -errno.ECONNREFUSED and it["attempts"] == 2
    assert "gave up after 2 attempts" in it["error"]


def test_conditional(srv, root, out):
    put(root, "InRelease", 5000, seed=1)
    old = time.time() - 3600
    os.utime(root / "InRelease", (old, old))
    url, dest = srv.url + "/InRelease", out / "InRelease"

    res = fetch("--conditional", url, dest)
    assert not res["items"][0]["not_modified"]
    assert dest.read_bytes() == (root / "InRelease").read_bytes()
    # dest carries the server's Last-Modified, for the next request.
    assert int(dest.stat().st_mtime) == int(old)

    srv.reset()
    res = fetch("--conditional", url, dest)
    it = res["items"][0]
    assert it["result"] == 0 and it["not_modified"] and it["bytes"] == 0
    assert [r.status for r in gets(srv)] == [304]
    assert res["stats"]["cached"] == 1
    assert dest.read_bytes() == (root / "InRelease").read_bytes()

    # A newer file on the server replaces it.
    new = put(root, "InRelease", 6000, seed=2)
    srv.reset()
    res = fetch("--conditional", url, dest)
    assert not res["items"][0]["not_modified"]
    assert [r.status for r in gets(srv)] == [200]
    assert dest.read_bytes() == new

    # Without --conditional an existing file is simply taken.
    srv.reset()
    res = fetch(url, dest)
    assert res["items"][0]["cached"] and srv.requests == []


def test_file_url(root, out):
    data = put(root, "pool/a.rpm", 123_456)
    res = fetch(f"file://{root}/pool/a.rpm", out / "sub" / "a.rpm", sha(data), len(data))
    assert res["items"][0]["result"] == 0
    assert (out / "sub" / "a.rpm").read_bytes() == data

    res = fetch(f"file://{root}/pool/missing.rpm", out / "m.rpm", expect_ok=False)
    assert res["items"][0]["result"] == -errno.ENOENT
    assert not (out / "m.rpm").exists() and not (out / "m.rpm.part").exists()


def test_file_url_resumes_part(root, out):
    data = put(root, "a.rpm", 100_000)
    (out / "a.rpm.part").write_bytes(data[:60_000])
    res = fetch(f"file://{root}/a.rpm", out / "a.rpm", sha(data), len(data))
    it = res["items"][0]
    assert it["result"] == 0 and it["resumed"] and it["bytes"] == 40_000
    assert (out / "a.rpm").read_bytes() == data


def test_failures_are_listed_and_others_complete(srv, root, out):
    good = put(root, "good.deb", 10_000)
    args = [srv.url + "/good.deb", out / "good.deb", sha(good), len(good)]
    for i in range(5):
        args += [srv.url + f"/missing{i}.deb", out / f"m{i}.deb"]
    res = fetch(*args, expect_ok=False)
    assert res["items"][0]["result"] == 0 and (out / "good.deb").read_bytes() == good
    assert res["result"] == -errno.ENOENT
    assert res["error"].startswith("5 of 6 downloads failed: ")
    assert "/missing0.deb: HTTP 404" in res["error"] and res["error"].endswith("and 2 more")
    assert res["stats"]["failed"] == 5 and res["stats"]["fetched"] == 1


def test_progress_line_on_a_terminal(srv, root, out):
    data = put(root, "a.deb", 200_000)
    srv.stall("/a.deb", 0.6)
    args = ["--progress", srv.url + "/a.deb", out / "a.deb", sha(data), len(data)]
    rc, _, text = run_on_terminal([TOOL, *args], timeout=30)
    assert rc == 0
    assert "\r\x1b[Kdownload: 0/1 files, " in text and "/200.0 kB, " in text
    # The line is cleared before the summary.
    assert "\r\x1b[Kdownload: 200.0 kB in " in text
    assert (out / "a.deb").read_bytes() == data

    # Not a terminal: no progress line at all.
    res = fetch("--progress", srv.url + "/a.deb", out / "b.deb", sha(data), len(data))
    assert "\x1b" not in res["stderr"] and "files," not in res["stderr"]


def test_httpd_itself(srv, root):
    """The server the provider tests build on: HEAD, ranges, 416, If-Modified-Since, 404."""
    data = put(root, "dists/stable/InRelease", 1000)
    url = srv.url + "/dists/stable/InRelease"

    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        assert r.status == 200 and r.headers["Content-Length"] == "1000" and r.read() == b""
        last_modified = r.headers["Last-Modified"]
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-19"})) as r:
        assert r.status == 206 and r.read() == data[10:20]
        assert r.headers["Content-Range"] == "bytes 10-19/1000"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=990-"})) as r:
        assert r.status == 206 and r.read() == data[990:]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=1000-"}))
    assert e.value.code == 416 and e.value.headers["Content-Range"] == "bytes */1000"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
            urllib.request.Request(url, headers={"If-Modified-Since": last_modified}))
    assert e.value.code == 304
    for missing in ("/dists/stable/Release", "/dists/", "/../../etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.url + missing)
        assert e.value.code == 404

    srv.fail("/dists/stable/InRelease", 502, times=2)
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url)
        assert e.value.code == 502
    with urllib.request.urlopen(url) as r:
        assert r.read() == data
    log = srv.requests
    assert [(r.method, r.status) for r in log] == [
        ("HEAD", 200), ("GET", 206), ("GET", 206), ("GET", 416), ("GET", 304),
        ("GET", 404), ("GET", 404), ("GET", 404), ("GET", 502), ("GET", 502), ("GET", 200)]
    assert log[1].range == "bytes=10-19" and log[1].sent == 10 and log[-1].sent == 1000
    srv.reset()
    assert srv.requests == []
