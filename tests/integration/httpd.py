"""A small threaded HTTP/1.1 file server on 127.0.0.1 for the tests: ranges, Last-Modified and
If-Modified-Since, a request log, and faults on demand (error statuses, dropped connections,
stalls, ignored ranges).

    with serve(root) as srv:
        srv.fail("/a", 500)                   # the next GET of /a answers 500
        ... fetch srv.url + "/a" ...
        assert [r.status for r in srv.requests] == [500, 200]

Also runnable for benchmarks: `python3 httpd.py ROOT [--port N]` prints the URL and serves until
killed."""

import collections
import email.utils
import http.server
import pathlib
import re
import select
import socket
import sys
import threading
import time
import urllib.parse

Request = collections.namedtuple("Request", "method path range status sent")

_CHUNK = 1 << 18


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mosaic-test-httpd"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection's thread ends after this

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _send_simple(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        return len(body) if self.command != "HEAD" else 0

    def _serve(self, head):
        srv = self.server
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        rng = self.headers.get("Range")
        status, sent = 500, 0
        srv._enter()
        try:
            status, sent = self._respond(srv, path, rng, head)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            srv._leave(Request(self.command, path, rng, status, sent))

    def _respond(self, srv, path, rng, head):
        fault = None if head else srv._take_fault(path)
        if fault and fault[0] == "fail":
            status = fault[1]
            return status, self._send_simple(status, f"{status} injected by the test\n".encode())

        file = srv._lookup(path)
        if file is None:
            return 404, self._send_simple(404, b"not found\n")
        st = file.stat()
        size = st.st_size
        last_modified = email.utils.formatdate(int(st.st_mtime), usegmt=True)

        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                when = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                when = None
            if when is not None and int(st.st_mtime) <= when:
                return 304, self._send_simple(304, headers=[("Last-Modified", last_modified)])

        start, end, status = 0, size - 1, 200
        if rng and not (fault and fault[0] == "norange"):
            if_range = self.headers.get("If-Range")
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m and (if_range is None or if_range == last_modified):
                start = int(m.group(1))
                if start >= size:
                    return 416, self._send_simple(
                        416, headers=[("Content-Range", f"bytes */{size}")])
                if m.group(2):
                    end = min(int(m.group(2)), size - 1)
                    if end < start:
                        return 416, self._send_simple(
                            416, headers=[("Content-Range", f"bytes */{size}")])
                status = 206
        length = end - start + 1 if size else 0

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Last-Modified", last_modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return status, 0

        limit = length
        if fault and fault[0] == "drop":
            limit = min(fault[1], length)
            self.close_connection = True
        if fault and fault[0] == "stall" and not self._stall(srv, fault[1]):
            self.close_connection = True
            return status, 0
        sent = 0
        with open(file, "rb") as f:
            if limit == length and not fault:
                sent = self.connection.sendfile(f, start, length) if length else 0
            else:
                f.seek(start)
                while sent < limit:
                    chunk = f.read(min(_CHUNK, limit - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
        if fault and fault[0] == "drop":
            # Close at once, mid-body: the client sees a short transfer.
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return status, sent


    def _stall(self, srv, seconds):
        """Waits before the body; False when the client hung up or the server is closing, so
        that the request is logged as soon as the client has given up."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if srv._closing.wait(min(left, 0.05)):
                return False
            if select.select([self.connection], [], [], 0)[0]:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:
                    return False
        return True


class Server(http.server.ThreadingHTTPServer):
    """The test server: url, root, requests (a list of Request, appended as each response ends)
    and fault injection by URL path. Faults apply to GET only."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root, port=0):
        self.root = pathlib.Path(root).resolve()
        self._requests = []
        self.active = 0          # requests being answered now
        self.max_concurrent = 0  # the most answered at once since the last reset()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._faults = {}  # path -> list of [kind, argument, times left]
        self._closing = threading.Event()
        self._connections = set()
        self._thread = None
        super().__init__(("127.0.0.1", port), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def requests(self):
        """The log, once the requests in flight have been answered (for at most 2 s): a client
        can see the end of a response a moment before the handler thread logs it."""
        with self._idle:
            self._idle.wait_for(lambda: self.active == 0, timeout=2)
            return self._requests

    # -- faults ---------------------------------------------------------------------------------

    def _add_fault(self, path, kind, arg, times):
        with self._lock:
            self._faults.setdefault(path, []).append([kind, arg, times])

    def fail(self, path: str, status: int, times: int = 1):
        """The next `times` GETs of path answer `status` with a short body."""
        self._add_fault(path, "fail", status, times)

    def drop(self, path: str, after: int, times: int = 1):
        """The next `times` GETs of path send the headers (full Content-Length) and `after`
        bytes of the body, then close the connection."""
        self._add_fault(path, "drop", after, times)

    def stall(self, path: str, seconds: float, times: int = 1):
        """The next `times` GETs of path send the headers, then wait before the body."""
        self._add_fault(path, "stall", seconds, times)

    def norange(self, path: str, times: int = 1):
        """The next `times` GETs of path ignore any Range header and send the whole file."""
        self._add_fault(path, "norange", None, times)

    def reset(self):
        """Clears the faults, the request log and max_concurrent."""
        with self._lock:
            self._faults.clear()
            self._requests.clear()
            self.max_concurrent = self.active

    def _take_fault(self, path):
        with self._lock:
            faults = self._faults.get(path)
            if not faults:
                return None
            fault = faults[0]
            fault[2] -= 1
            if fault[2] <= 0:
                faults.pop(0)
            return fault[0], fault[1]

    # -- bookkeeping ----------------------------------------------------------------------------

    def _enter(self):
        with self._lock:
            self.active += 1
            self.max_concurrent = max(self.max_concurrent, self.active)

    def _leave(self, request):
        with self._lock:
            self.active -= 1
            self._requests.append(request)
            self._idle.notify_all()

    def _lookup(self, path):
        """The regular file under root that a URL path names, or None."""
        p = (self.root / path.lstrip("/")).resolve()
        if p != self.root and self.root not in p.parents:
            return None
        return p if p.is_file() else None

    def process_request(self, request, client_address):
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, name="httpd", daemon=True)
        self._thread.start()
        return self

    def close(self):
        """Stops serving, wakes stalled responses and closes every open connection."""
        self._closing.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        with self._lock:
            conns = list(self._connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(root, port=0) -> Server:
    """Starts a server for root on an ephemeral port; use as `with serve(root) as srv:` or call
    close()."""
    return Server(root, port).start()


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    srv = Server(args.root, args.port)
    print(srv.url, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, _interrupt)
    main(sys.argv[1:])
