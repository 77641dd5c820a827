#!/usr/bin/env python3
"""Soak test of `ceco serve` against a `ceco cloud` (deploy/soak.sh runs it).

Starts one `ceco cloud` and three `ceco serve` against it (policy.mode cloud,
collaborative and exact) on free loopback ports, on the built-in model, and
drives --minutes of mixed traffic through the serves: streamed and
non-streamed chat and text completions at changing concurrency, clients
that hang up mid-stream, mid-request and while a non-streamed completion
runs, malformed bodies (bad JSON, wrong types, deep nesting, oversized),
slow senders, slow readers and stalled senders, and cloud restarts (kill -9
by pid, started again on the same port). It samples the RSS, open fds and
threads of every process from /proc every --sample-s seconds.

What counts as answered (a well-formed completion request):
  * 200 with a complete body: JSON with the text, finish_reason, usage and
    ceco (not streamed), or server-sent events whose last chunk has a
    finish_reason and ceco and which end with `data: [DONE]` (streamed);
  * 429 rate_limit_error (documented: more than --max-concurrent at once);
  * only in cloud mode and only while the cloud is being restarted (from the
    kill until --grace-s after the new cloud printed its port): 503 with an
    OpenAI error object whose code is cloud_unavailable or
    generation_failed, or, mid-stream, a `data: {"error": ...}` event
    followed by [DONE]. collaborative and exact go on on the edge alone, as
    the README documents, so for them a 503 is a failure too.
Anything else is not answered: no response, a reset, a timeout, a truncated
body, another status. A malformed request is answered when it gets its
documented 4xx (or a 429) with an OpenAI error object; an oversized body may
instead see the connection closed after the 413 (counted apart).

Checks (any failure: exit 1): every well-formed request answered; every
malformed one refused as documented; no process died unless killed by the
soak; each serve reports the cloud up again within --reconnect-s of each
restart; after the traffic stops, no completion in flight, no cloud session
open, and open fds back within --fd-slack of where they were before the
traffic; RSS slope at most --rss-slope-mib-min over the last whole load
cycles (each concurrency once) that fit in the second half of the run,
judged when they last 2 minutes or more (the cloud restarts all fall before
them, a cycle ahead, so the last cloud is judged too);
exact-mode text identical to cloud-mode text for the same request whenever
neither degraded; each process exits 0 on SIGTERM at the end.

Exit status: 0 passed, 1 a check failed, 2 setup failed (a process did not
start), 77 no loopback port can be bound here (skipped).
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict

# -- arguments ----------------------------------------------------------------

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--binary", default=None, help="the ceco binary (default: build/bin/ceco)")
ap.add_argument("--minutes", type=float, default=10.0, help="minutes of traffic (default 10)")
ap.add_argument("--max-requests", type=int, default=200000,
                help="stop the traffic after this many requests (default 200000)")
ap.add_argument("--restarts", type=int, default=None,
                help="cloud restarts, evenly spaced (default: one per 2.5 min, at least 2)")
ap.add_argument("--down-s", type=float, default=2.0,
                help="seconds the cloud stays down at each restart (default 2)")
ap.add_argument("--grace-s", type=float, default=10.0,
                help="seconds after a restarted cloud is up during which cloud mode may answer "
                     "503 (default 10)")
ap.add_argument("--reconnect-s", type=float, default=20.0,
                help="each serve must see the cloud up within this many seconds of a restart")
ap.add_argument("--sample-s", type=float, default=2.0, help="sampling period (default 2 s)")
ap.add_argument("--concurrency", default="1,4,8,16",
                help="client concurrencies the traffic cycles through (default 1,4,8,16)")
ap.add_argument("--phase-s", type=float, default=None,
                help="seconds per concurrency phase (default: minutes*60/12, 5 to 30)")
ap.add_argument("--max-concurrent", type=int, default=16, help="each serve's --max-concurrent")
ap.add_argument("--request-timeout-s", type=float, default=60.0,
                help="a request not answered within this many seconds is a failure")
ap.add_argument("--rss-slope-mib-min", type=float, default=1.0,
                help="largest RSS slope over the judged window, MiB per minute (default 1)")
ap.add_argument("--fd-slack", type=int, default=3,
                help="open fds after the traffic may exceed those before by this many")
ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
ap.add_argument("--json", default=None, help="also write the figures to this file as JSON")
ap.add_argument("--keep", action="store_true", help="keep the processes' logs (printed path)")
args = ap.parse_args()

if args.minutes <= 0 or args.minutes > 24 * 60:
    ap.error("--minutes must be in (0, 1440]")
here = os.path.dirname(os.path.abspath(__file__))
binary = args.binary or os.path.join(os.path.dirname(here), "build", "bin", "ceco")
if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
    print(f"soak: no ceco binary at {binary} (--binary)", file=sys.stderr)
    sys.exit(2)
binary = os.path.realpath(binary)
duration = args.minutes * 60.0
n_restarts = args.restarts if args.restarts is not None else max(2, int(args.minutes / 2.5))
concurrencies = [int(x) for x in args.concurrency.split(",") if x.strip()]
phase_s = args.phase_s or min(30.0, max(5.0, duration / 12))
# RSS is judged over whole load cycles (each concurrency once) at the end of
# the run: as many as fit in its second half, if they last 2 minutes or more.
cycle_s = phase_s * len(concurrencies)
window_s = int(duration / 2 / cycle_s) * cycle_s
seed = args.seed if args.seed is not None else int(time.time())
rng_master = random.Random(seed)

# Loopback only. A machine where nothing can be bound skips the soak.
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    s.close()
except OSError as e:
    print(f"skipped: cannot bind a loopback port here: {e}")
    sys.exit(77)

work = os.environ.get("SOAK_WORK") or os.path.join("/tmp", f"ceco-soak-{os.getpid()}")
os.makedirs(work, exist_ok=True)
pidfile = os.environ.get("SOAK_PIDFILE")
T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[{now():7.1f}s] {msg}", flush=True)


# -- processes ----------------------------------------------------------------

procs_lock = threading.Lock()
live = {}  # pid -> Popen, every process this script started and has not reaped


def write_pidfile():
    if pidfile:
        with open(pidfile + ".tmp", "w") as f:
            f.write("".join(f"{p}\n" for p in live))
        os.replace(pidfile + ".tmp", pidfile)


def start(name, argv):
    out = open(os.path.join(work, f"{name}.out"), "ab")
    err = open(os.path.join(work, f"{name}.err"), "ab")
    p = subprocess.Popen([binary] + argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                         close_fds=True)
    out.close()
    err.close()
    with procs_lock:
        live[p.pid] = p
        write_pidfile()
    return p


def reap(p):
    with procs_lock:
        live.pop(p.pid, None)
        write_pidfile()


def first_port(p, name, line_no=0, pattern=None, timeout=60.0):
    """The port after the last ':' of line `line_no` of the process's stdout."""
    path = os.path.join(work, f"{name}.out")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        # Only this run's lines: the file is appended to across restarts.
        lines = [ln for ln in lines[start_lines.get(name, 0):]]
        cand = [ln for ln in lines if pattern is None or pattern in ln]
        if len(cand) > line_no:
            m = re.search(r":(\d+)(?!.*:\d)", cand[line_no])
            if m:
                return int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{name} printed no port: {tail(name)}")


start_lines = {}


def mark_lines(name):
    path = os.path.join(work, f"{name}.out")
    try:
        with open(path, "rb") as f:
            start_lines[name] = len(f.read().splitlines())
    except OSError:
        start_lines[name] = 0


def tail(name, n=6):
    out = []
    for ext in ("out", "err"):
        try:
            with open(os.path.join(work, f"{name}.{ext}"), "rb") as f:
                out += [f"{name}.{ext}: " + ln for ln in
                        f.read().decode(errors="replace").splitlines()[-n:]]
        except OSError:
            pass
    return "\n".join(out)


def stop_all(sig=signal.SIGKILL):
    with procs_lock:
        ps = list(live.values())
    for p in ps:
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
    for p in ps:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        reap(p)


def on_signal(signum, frame):
    log(f"signal {signum}: stopping every process the soak started")
    stop_all()
    sys.exit(1)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

# -- a small HTTP/1.1 client over raw sockets -----------------------------------


class Closed(Exception):
    pass


class Conn:
    def __init__(self, port, timeout, rcvbuf=None):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def fill(self, n=65536):
        d = self.s.recv(n)
        if not d:
            raise Closed("connection closed")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def head(self):
        status_line = self.line().decode(errors="replace")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise Closed(f"bad status line {status_line!r}")
        status = int(parts[1])
        headers = {}
        while True:
            ln = self.line()
            if not ln:
                break
            k, _, v = ln.decode(errors="replace").partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def chunks(self):
        """Yields the chunks of a chunked body; the last (empty) one ends it."""
        while True:
            size = int(self.line().split(b";")[0], 16)
            if size == 0:
                while self.line():  # trailers
                    pass
                return
            data = self.exact(size)
            self.exact(2)
            yield data

    def body(self, headers):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return b"".join(self.chunks())
        if "content-length" in headers:
            return self.exact(int(headers["content-length"]))
        while True:
            try:
                self.fill()
            except Closed:
                return self.buf

    def reset(self):
        """Closes with a RST (SO_LINGER 0): an abrupt hang-up."""
        try:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def request_bytes(method, path, body=b"", extra=None, keep_alive=False):
    h = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if body or method == "POST":
        h += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    h.append("Connection: keep-alive" if keep_alive else "Connection: close")
    h += extra or []
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


def get_json(port, path, timeout=5.0):
    c = Conn(port, timeout)
    try:
        c.send(request_bytes("GET", path))
        status, headers = c.head()
        body = c.body(headers)
        return status, body
    finally:
        c.close()


def is_error_object(body):
    try:
        j = json.loads(body)
        e = j["error"]
        return isinstance(e["message"], str) and e["message"] != "" and "type" in e, e
    except Exception:
        return False, None


# -- traffic ------------------------------------------------------------------

PROMPTS = ["In the beginning", "And God said", "The LORD is my shepherd",
           "And it came to pass", "Blessed are the", "Now the serpent was",
           "And Moses spake unto", "For God so loved", "Let there be",
           "And the earth was without form"]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_kind = defaultdict(lambda: defaultdict(int))  # kind -> outcome -> count
        self.failures = []  # (t, kind, why)
        self.latency = defaultdict(list)  # kind -> seconds (200s)
        self.degraded = defaultdict(int)  # mode -> degraded tokens
        self.tokens = defaultdict(int)  # mode -> completion tokens
        self.texts = {}  # (mode, key) -> text of an undegraded response
        self.mismatches = []
        self.requests = 0

    def count(self, kind, outcome):
        with self.lock:
            self.by_kind[kind][outcome] += 1

    def fail(self, kind, why, quiet=False):
        with self.lock:
            self.by_kind[kind]["FAILED"] += 1
            self.failures.append((now(), kind, why))
        if not quiet:
            log(f"FAILURE {kind}: {why}")


stats = Stats()
restart_windows = []  # [kill_t, up_t + grace] (up_t None while down)
windows_lock = threading.Lock()


def in_restart_window(t0, t1):
    with windows_lock:
        for a, b in restart_windows:
            if t1 >= a and (b is None or t0 <= b):
                return True
    return False


serves = {}  # mode -> {"port", "proc"}
model_id = "kjv"
stop_traffic = threading.Event()


def completion_body(rng, chat, stream, prompt, max_tokens):
    b = {"model": model_id, "max_tokens": max_tokens, "stream": stream}
    if chat:
        b["messages"] = [{"role": "user", "content": prompt}]
    else:
        b["prompt"] = prompt
    if stream and rng.random() < 0.3:
        b["stream_options"] = {"include_usage": True}
    if rng.random() < 0.2:
        b["temperature"] = 0.7
        b["seed"] = rng.choice([1, 2, 3])  # a seed reproduces a response in every mode
    return json.dumps(b).encode()


def well_formed(rng, slow_send=False, slow_read=False):
    mode = rng.choice(list(serves))
    chat = rng.random() < 0.5
    stream = slow_read or rng.random() < 0.5
    prompt = rng.choice(PROMPTS)
    max_tokens = rng.choice([8, 16, 32, 64])
    kind = f"{mode} {'chat' if chat else 'text'} {'stream' if stream else 'json'}"
    if slow_send:
        kind = f"slow-send ({mode})"
    if slow_read:
        kind = f"slow-read ({mode})"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    req = request_bytes("POST", path, completion_body(rng, chat, stream, prompt, max_tokens))
    t0 = now()
    outcome, why, result = "?", "", None
    c = None
    try:
        c = Conn(serves[mode]["port"], args.request_timeout_s, rcvbuf=4096 if slow_read else None)
        if slow_send:
            # The request in pieces, 0.1 to 0.4 s apart: well inside the
            # header (10 s) and body (30 s) deadlines.
            i = 0
            while i < len(req):
                n = rng.randint(8, 40)
                c.send(req[i:i + n])
                i += n
                time.sleep(rng.uniform(0.1, 0.4))
        else:
            c.send(req)
        status, headers = c.head()
        if status == 200 and stream:
            outcome, why, result = read_stream(c, chat, slow_read, rng, mode, t0)
        elif status == 200:
            body = c.body(headers)
            try:
                j = json.loads(body)
                ch = j["choices"][0]
                text = ch["message"]["content"] if chat else ch["text"]
                assert ch["finish_reason"] in ("stop", "length"), ch["finish_reason"]
                assert "usage" in j and "ceco" in j
                result = (text, j["ceco"], j["usage"]["completion_tokens"])
                outcome = "200"
            except Exception as e:
                outcome, why = "bad-200", f"incomplete 200 body ({e!r}): {body[:200]!r}"
        else:
            body = c.body(headers)
            ok, err = is_error_object(body)
            outcome = str(status)
            if not ok:
                outcome, why = f"{status}-no-error-object", f"{status} without an error object: {body[:200]!r}"
            elif status == 429:
                outcome = "429"
            elif status == 503 and mode == "cloud" and err.get("code") in (
                    "cloud_unavailable", "generation_failed") and in_restart_window(t0, now()):
                outcome = "503-restart"
            else:
                why = f"{status} {err.get('code')}: {err.get('message')}"
                outcome = f"{status}-unexpected"
    except (OSError, Closed, ValueError) as e:
        outcome, why = "no-answer", f"{type(e).__name__}: {e}"
    finally:
        if c:
            c.close()
    t1 = now()
    stats.count(kind, outcome)
    if outcome not in ("200", "429", "503-restart", "stream-error-restart"):
        stats.fail(kind, f"{why} (sent at {t0:.1f}s, {t1 - t0:.2f}s)")
        return
    if outcome == "200" and result is not None:
        text, ceco, n_tokens = result
        with stats.lock:
            stats.latency[kind].append(t1 - t0)
            stats.degraded[mode] += int(ceco.get("degraded_tokens", 0))
            stats.tokens[mode] += int(n_tokens)
            if int(ceco.get("degraded_tokens", 0)) == 0 and int(ceco.get("unverified_tokens", 0)) == 0:
                sampling = ceco.get("sampling", "greedy")
                key = (chat, prompt, max_tokens, json.dumps(sampling, sort_keys=True))
                first = stats.texts.setdefault((mode, key), text)
                if sampling != "greedy":
                    # Sampled: exact is the cloud's in distribution, not token
                    # for token; one mode and seed gives one text every time.
                    if first != text:
                        stats.mismatches.append((key, first, text))
                elif mode in ("cloud", "exact"):
                    other = stats.texts.get(("exact" if mode == "cloud" else "cloud", key))
                    if other is not None and other != text:
                        stats.mismatches.append((key, text if mode == "cloud" else other,
                                                 other if mode == "cloud" else text))


def read_stream(c, chat, slow, rng, mode, t0):
    """Reads server-sent events to [DONE]: (outcome, why, (text, ceco, tokens))."""
    data = b""
    text, last, done, error = [], None, False, None
    for chunk in c.chunks():
        data += chunk
        while b"\n\n" in data:
            event, data = data.split(b"\n\n", 1)
            ev = event.decode(errors="replace")
            if not ev.startswith("data: "):
                if ev.startswith(":"):
                    continue  # an SSE comment (keep-alive)
                return "bad-stream", f"not an event: {ev[:120]!r}", None
            payload = ev[6:]
            if payload == "[DONE]":
                done = True
                continue
            j = json.loads(payload)
            if "error" in j:
                error = j["error"]
                continue
            if j.get("choices"):
                ch = j["choices"][0]
                piece = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                if piece:
                    text.append(piece)
                if ch.get("finish_reason"):
                    last = j
        if slow:
            time.sleep(rng.uniform(0.02, 0.08))
    if not done:
        return "bad-stream", "stream ended without [DONE]", None
    if error is not None:
        if mode == "cloud" and in_restart_window(t0, now()):
            return "stream-error-restart", "", None
        return "stream-error", f"error event: {error}", None
    if last is None or "ceco" not in last:
        return "bad-stream", "no final chunk with finish_reason and ceco", None
    usage = last.get("usage") or {}
    return "200", "", ("".join(text), last["ceco"], usage.get("completion_tokens", 0))


def hang_up(rng):
    mode = rng.choice(list(serves))
    port = serves[mode]["port"]
    how = rng.choice(["mid-stream", "mid-stream", "mid-body", "mid-head", "before-answer"])
    kind = f"hang-up {how}"
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    c = None
    try:
        c = Conn(port, args.request_timeout_s)
        if how == "mid-stream":
            c.send(request_bytes("POST", path, completion_body(rng, chat, True, rng.choice(PROMPTS), 200)))
            status, headers = c.head()
            if status == 200:
                want = rng.randint(1, 6)
                got = 0
                for chunk in c.chunks():
                    got += chunk.count(b"data: ")
                    if got >= want:
                        break
        elif how == "mid-body":
            req = request_bytes("POST", path, completion_body(rng, chat, False, rng.choice(PROMPTS), 32))
            c.send(req[:rng.randint(len(req) - 40, len(req) - 1)])
            time.sleep(rng.uniform(0, 0.3))
        elif how == "mid-head":
            req = request_bytes("POST", path, completion_body(rng, chat, False, rng.choice(PROMPTS), 32))
            c.send(req[:rng.randint(1, 40)])
            time.sleep(rng.uniform(0, 0.3))
        else:  # a non-streamed completion, given up before its answer
            c.send(request_bytes("POST", path, completion_body(rng, chat, False, rng.choice(PROMPTS), 200)))
            time.sleep(rng.uniform(0.02, 0.3))
        stats.count(kind, "hung-up")
    except (OSError, Closed, ValueError) as e:
        stats.count(kind, f"hung-up ({type(e).__name__})")
    finally:
        if c:
            (c.reset if rng.random() < 0.5 else c.close)()


def deep(n):
    return ("{\"model\": \"%s\", \"prompt\": " % model_id + "[" * n + "]" * n + "}").encode()


MALFORMED = {
    # name: (body builder, endpoint, expected statuses)
    "bad JSON": (lambda: b'{"model": "kjv", "messages": [{"role": "user", "content": "x"', "chat", {400}),
    "not JSON": (lambda: b"hello there", "text", {400}),
    "empty body": (lambda: b"", "text", {400}),
    "messages a string": (lambda: json.dumps({"model": model_id, "messages": "hi"}).encode(), "chat", {400}),
    "max_tokens a string": (lambda: json.dumps({"model": model_id, "prompt": "x", "max_tokens": "ten"}).encode(), "text", {400}),
    "max_tokens negative": (lambda: json.dumps({"model": model_id, "prompt": "x", "max_tokens": -5}).encode(), "text", {400}),
    "max_tokens 2^70": (lambda: b'{"model": "kjv", "prompt": "x", "max_tokens": 1180591620717411303424}', "text", {400}),
    "stream a string": (lambda: json.dumps({"model": model_id, "prompt": "x", "stream": "yes"}).encode(), "text", {400}),
    "temperature a string": (lambda: json.dumps({"model": model_id, "prompt": "x", "temperature": "hot"}).encode(), "text", {400}),
    "token id past vocab": (lambda: json.dumps({"model": model_id, "prompt": [1, 99999999]}).encode(), "text", {400}),
    "role unknown": (lambda: json.dumps({"model": model_id, "messages": [{"role": "wizard", "content": "x"}]}).encode(), "chat", {400}),
    "unknown model": (lambda: json.dumps({"model": "no-such-model", "prompt": "x"}).encode(), "text", {404}),
    "past the context": (lambda: json.dumps({"model": model_id, "prompt": "x", "max_tokens": 100000}).encode(), "text", {400}),
    "deep nesting 40": (lambda: deep(40), "text", {400}),
    "deep nesting 100000": (lambda: deep(100000), "text", {400}),
    "1 MB prompt": (lambda: json.dumps({"model": model_id, "prompt": "And God said " * 80000}).encode(), "text", {400}),
    "oversized 9 MiB": (lambda: b'{"model": "kjv", "prompt": "' + b"a" * (9 << 20) + b'"}', "text", {413}),
}
RARE = {"oversized 9 MiB": 0.05, "1 MB prompt": 0.2, "deep nesting 100000": 0.3}


def malformed(rng):
    name = rng.choice(list(MALFORMED))
    while name in RARE and rng.random() > RARE[name]:
        name = rng.choice(list(MALFORMED))
    build, ep, expected = MALFORMED[name]
    mode = rng.choice(list(serves))
    path = "/v1/chat/completions" if ep == "chat" else "/v1/completions"
    kind = f"malformed: {name}"
    c = None
    sent_all = False
    t0 = now()
    try:
        c = Conn(serves[mode]["port"], args.request_timeout_s)
        try:
            c.send(request_bytes("POST", path, build()))
            sent_all = True
        except OSError:
            pass  # refused before the whole body: the answer may still be there
        status, headers = c.head()
        body = c.body(headers)
        ok, err = is_error_object(body)
        if status in expected and ok:
            stats.count(kind, str(status))
        elif status == 429 and ok:
            stats.count(kind, "429")
        elif (status == 503 and ok and mode == "cloud" and err.get("code") == "cloud_unavailable"
              and in_restart_window(t0, now())):
            # A body that parses is checked against the cloud before the
            # tokenizer (cheap checks first): cloud mode refuses it while down.
            stats.count(kind, "503-restart")
        else:
            stats.count(kind, f"{status}")
            stats.fail(kind, f"expected {sorted(expected)} with an error object, got {status}: {body[:200]!r}")
    except (OSError, Closed, ValueError) as e:
        if 413 in expected:
            # The server answers 413 after the head and closes without reading
            # the body: the kernel may reset before the answer is read.
            stats.count(kind, "closed (reset)")
        else:
            stats.count(kind, "no-answer")
            stats.fail(kind, f"{type(e).__name__}: {e} (body sent whole: {sent_all})")
    finally:
        if c:
            c.close()


def stalled(rng):
    """Sends the request line, then a byte every 2 s: closed at the header deadline."""
    mode = rng.choice(list(serves))
    kind = "stalled sender"
    c = None
    t0 = time.monotonic()
    try:
        c = Conn(serves[mode]["port"], 30)
        c.send(b"POST /v1/completions HTTP/1.1\r\n")
        while time.monotonic() - t0 < 25:
            time.sleep(2)
            c.send(b"X")
        stats.count(kind, "never closed")
        stats.fail(kind, "still open after 25 s (header deadline 10 s)")
    except (OSError, Closed):
        took = time.monotonic() - t0
        if took > 16:
            stats.count(kind, "closed late")
            stats.fail(kind, f"closed after {took:.1f} s (header deadline 10 s)")
        else:
            stats.count(kind, "closed")
        with stats.lock:
            stats.latency[kind].append(took)
    finally:
        if c:
            c.close()


def worker(i, active):
    rng = random.Random(rng_master.random())
    while not stop_traffic.is_set():
        if i >= active[0]:
            time.sleep(0.1)
            continue
        with stats.lock:
            if stats.requests >= args.max_requests:
                stop_traffic.set()
                break
            stats.requests += 1
        r = rng.random()
        try:
            if r < 0.70:
                well_formed(rng)
            elif r < 0.80:
                hang_up(rng)
            elif r < 0.93:
                malformed(rng)
            elif r < 0.965:
                well_formed(rng, slow_send=True)
            else:
                well_formed(rng, slow_read=True)
        except Exception as e:  # a bug of the soak itself: loud, and a failure
            stats.fail("soak", f"worker {i}: {type(e).__name__}: {e}")


def stalled_loop():
    rng = random.Random(rng_master.random())
    while not stop_traffic.wait(rng.uniform(5, 15)):
        with stats.lock:
            stats.requests += 1
        stalled(rng)


# -- sampling -----------------------------------------------------------------

samples = defaultdict(list)  # name -> [(t, rss_kib, fds, threads)]
cloud_instances = []  # names of the cloud's instances: cloud#1, cloud#2, ...
deaths = []


def sample_proc(name, pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            st = f.read()
        rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1))
        thr = int(re.search(r"Threads:\s+(\d+)", st).group(1))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        samples[name].append((now(), rss, fds, thr))
    except (OSError, AttributeError):
        pass


cloud = {"proc": None, "name": None, "port": 0, "metrics": 0, "killed": set()}
cloud_lock = threading.Lock()


def sampler():
    while not sampler_stop.is_set():
        for mode, sv in serves.items():
            if sv["proc"].poll() is not None and not sv.get("dead"):
                sv["dead"] = True
                deaths.append(f"serve ({mode}) exited with {sv['proc'].returncode}")
                stats.fail("process", f"serve ({mode}) died: status {sv['proc'].returncode}\n{tail('serve-' + mode)}")
            else:
                sample_proc(f"serve ({mode})", sv["proc"].pid)
        with cloud_lock:
            p, name = cloud["proc"], cloud["name"]
            if p is not None:
                if p.poll() is not None and p.pid not in cloud["killed"]:
                    cloud["killed"].add(p.pid)
                    deaths.append(f"{name} exited with {p.returncode}")
                    stats.fail("process", f"{name} died unasked: status {p.returncode}\n{tail('cloud')}")
                elif p.poll() is None:
                    sample_proc(name, p.pid)
        sampler_stop.wait(args.sample_s)


sampler_stop = threading.Event()

# -- the cloud and its restarts -------------------------------------------------

secret = os.urandom(16).hex()
restarts = []  # dicts: kill_t, up_t, reconnect_s per mode


def start_cloud(port, metrics_port):
    mark_lines("cloud")
    n = len(cloud_instances) + 1
    p = start("cloud", ["cloud", "--set", f"cloud.port={port}", "--set", f"cloud.secret={secret}",
                        "--metrics-port", str(metrics_port)])
    got = first_port(p, "cloud", pattern="serving")
    mport = first_port(p, "cloud", pattern="metrics on")
    name = f"cloud#{n}"
    cloud_instances.append(name)
    with cloud_lock:
        cloud.update(proc=p, name=name, port=got, metrics=mport)
    return got, mport


def health(port):
    try:
        status, body = get_json(port, "/health", 3)
        return json.loads(body)
    except Exception:
        return {}


def restart_cloud():
    with cloud_lock:
        p, port, mport = cloud["proc"], cloud["port"], cloud["metrics"]
        cloud["killed"].add(p.pid)
    kill_t = now()
    with windows_lock:
        restart_windows.append([kill_t, None])
    log(f"restart: kill -9 {p.pid} ({cloud['name']})")
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        # Gone already (someone else killed it): the process check reports
        # that; the restart goes on.
        log(f"restart: {p.pid} had already exited")
    p.wait()
    reap(p)
    time.sleep(args.down_s)
    for attempt in range(10):
        try:
            start_cloud(port, mport)
            break
        except RuntimeError as e:
            log(f"restart: the cloud did not come back on {port} (try {attempt + 1}): {e}")
            with cloud_lock:
                q = cloud["proc"]
            time.sleep(0.5)
    else:
        stats.fail("restart", f"the cloud could not be started again on port {port}")
        return
    up_t = now()
    with windows_lock:
        restart_windows[-1][1] = up_t + args.grace_s
    r = {"kill_t": kill_t, "up_t": up_t, "reconnect_s": {}}
    deadline = time.monotonic() + args.reconnect_s
    pending = set(serves)
    while pending and time.monotonic() < deadline:
        for mode in list(pending):
            if health(serves[mode]["port"]).get("cloud") == "up":
                r["reconnect_s"][mode] = now() - up_t
                pending.discard(mode)
        time.sleep(0.1)
    for mode in pending:
        stats.fail("restart", f"serve ({mode}) did not see the cloud up within {args.reconnect_s} s")
    restarts.append(r)
    log(f"restart: {cloud['name']} up after {up_t - kill_t:.1f} s; serves reconnected in "
        + ", ".join(f"{m} {s:.2f}s" for m, s in r["reconnect_s"].items()))


def metric(port, name, labels=None):
    """The sum of a Prometheus metric's samples (optionally of one label set)."""
    try:
        status, body = get_json(port, "/metrics", 5)
    except Exception:
        return None
    total, seen = 0.0, False
    for ln in body.decode(errors="replace").splitlines():
        if ln.startswith(name + " ") or ln.startswith(name + "{"):
            if labels and labels not in ln:
                continue
            total += float(ln.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


# -- the run --------------------------------------------------------------------

def slope_mib_per_min(points):
    """Least-squares slope of (t seconds, rss KiB) in MiB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / den * 60 / 1024


def main():
    global model_id
    log(f"soak: {args.minutes} min, {n_restarts} cloud restarts, concurrency {concurrencies} "
        f"({phase_s:.0f} s each), seed {seed}, logs in {work}")
    try:
        cport, _ = start_cloud(0, 0)
        for mode in ("cloud", "collaborative", "exact"):
            name = f"serve-{mode}"
            mark_lines(name)
            p = start(name, ["serve", "--port", "0", "--max-concurrent", str(args.max_concurrent),
                             "--set", f"policy.mode={mode}", "--set", f"cloud.port={cport}",
                             "--set", f"cloud.secret={secret}", "--set", "link.latency_ms=0"])
            serves[mode] = {"proc": p, "port": first_port(p, name)}
        deadline = time.monotonic() + 60
        while any(health(sv["port"]).get("cloud") != "up" for sv in serves.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the serves did not see the cloud up within 60 s")
            time.sleep(0.2)
        status, body = get_json(serves["cloud"]["port"], "/v1/models")
        model_id = json.loads(body)["data"][0]["id"]
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        log(f"setup failed: {e}")
        for n in ["cloud"] + [f"serve-{m}" for m in serves]:
            print(tail(n), file=sys.stderr)
        stop_all()
        return 2
    log(f"cloud on {cport}, serves on " + ", ".join(f"{m} {sv['port']}" for m, sv in serves.items())
        + f", model '{model_id}'")

    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    time.sleep(args.sample_s * 1.5)  # a baseline before the traffic
    baseline = {name: pts[-1] for name, pts in samples.items()}
    t_start = now()

    active = [concurrencies[0]]
    workers = [threading.Thread(target=worker, args=(i, active), daemon=True)
               for i in range(max(concurrencies))]
    for w in workers:
        w.start()
    slow = threading.Thread(target=stalled_loop, daemon=True)
    slow.start()
    # The restarts fall before the judged window and one load cycle ahead of
    # it, so that the last cloud is judged as long-lived as the serves.
    last_restart = max(duration / 2, duration - window_s - cycle_s)
    restart_at = [t_start + last_restart * (k + 1) / (n_restarts + 1) for k in range(n_restarts)]
    phase = 0
    next_phase = t_start + phase_s
    last_report = t_start
    while now() < t_start + duration and not stop_traffic.is_set():
        time.sleep(0.2)
        if now() >= next_phase:
            phase += 1
            active[0] = concurrencies[phase % len(concurrencies)]
            next_phase += phase_s
        if restart_at and now() >= restart_at[0]:
            restart_at.pop(0)
            restart_cloud()
        if now() - last_report >= 60:
            last_report = now()
            with stats.lock:
                n, f = stats.requests, len(stats.failures)
            log(f"{n} requests, {f} failures, concurrency {active[0]}")
        if any(sv.get("dead") for sv in serves.values()):
            break
    t_end = now()
    stop_traffic.set()
    log("traffic stopped; draining")
    for w in workers:
        w.join(timeout=args.request_timeout_s + 5)
    slow.join(timeout=30)
    if any(w.is_alive() for w in workers):
        stats.fail("soak", "a client thread did not finish within its request timeout")

    # Drained: nothing in flight, no cloud session, idle connections closed.
    drain = {}
    deadline = time.monotonic() + 20
    while True:
        drain = {m: health(sv["port"]).get("in_flight") for m, sv in serves.items()}
        sessions = metric(cloud["metrics"], "ceco_cloud_sessions_open")
        drain["cloud sessions"] = sessions
        if all(v == 0 for v in drain.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(6.5)  # past the 5 s keep-alive idle close
    for mode, sv in serves.items():
        sample_proc(f"serve ({mode})", sv["proc"].pid)
    sample_proc(cloud["name"], cloud["proc"].pid)
    after = {name: pts[-1] for name, pts in samples.items() if pts}
    cancelled = {m: metric(sv["port"], "ceco_cancelled_requests_total", 'reason="disconnect"')
                 for m, sv in serves.items()}
    sampler_stop.set()
    sampler_thread.join(timeout=10)

    # Stop: SIGTERM, each must exit 0.
    exits = {}
    for mode, sv in serves.items():
        exits[f"serve ({mode})"] = terminate(sv["proc"])
    exits[cloud["name"]] = terminate(cloud["proc"])
    for name, rc in exits.items():
        if rc != 0:
            stats.fail("process", f"{name} exited with {rc} on SIGTERM")

    return report(baseline, after, drain, cancelled, exits, t_start, t_end)


def terminate(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
    try:
        rc = p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        rc = "hung on SIGTERM (killed)"
    reap(p)
    return rc


def mib(kib):
    return f"{kib / 1024:.1f}"


def report(baseline, after, drain, cancelled, exits, t_start, t_end):
    ok = True
    out = {"seed": seed, "minutes": args.minutes, "traffic_s": t_end - t_start}
    print()
    print(f"== ceco soak: {t_end - t_start:.0f} s of traffic, {stats.requests} requests, "
          f"{len(restarts)} cloud restarts, seed {seed} ==")
    print()
    # Requests by kind and outcome.
    outcomes = sorted({o for k in stats.by_kind.values() for o in k},
                      key=lambda o: (o != "200", o))
    w = max(len(k) for k in stats.by_kind) if stats.by_kind else 10
    print(f"{'requests':<{w}}  {'total':>6}  " + "  ".join(f"{o:>{max(5, len(o))}}" for o in outcomes))
    totals = defaultdict(int)
    for kind in sorted(stats.by_kind):
        row = stats.by_kind[kind]
        print(f"{kind:<{w}}  {sum(row.values()):>6}  "
              + "  ".join(f"{row.get(o, 0) or '':>{max(5, len(o))}}" for o in outcomes))
        for o, n in row.items():
            totals[o] += n
    print(f"{'all':<{w}}  {sum(totals.values()):>6}  "
          + "  ".join(f"{totals.get(o, 0):>{max(5, len(o))}}" for o in outcomes))
    out["requests"] = {k: dict(v) for k, v in stats.by_kind.items()}
    print()
    # Latency of answered completions.
    lat = defaultdict(list)
    for k, v in stats.latency.items():
        lat[k.split(" ")[0] if not k.startswith(("slow", "stalled")) else k.split(" (")[0]] += v
    for k in sorted(lat):
        v = sorted(lat[k])
        print(f"latency {k}: {len(v)} answered, median {v[len(v) // 2]:.2f} s, "
              f"p95 {v[int(len(v) * 0.95)]:.2f} s, max {v[-1]:.2f} s")
    for m in serves:
        print(f"tokens {m}: {stats.tokens[m]} completion tokens, {stats.degraded[m]} degraded")
    out["tokens"] = dict(stats.tokens)
    out["degraded_tokens"] = dict(stats.degraded)
    print()
    # Processes.
    print(f"{'process':<22} {'samples':>7} {'RSS MiB first':>13} {'last':>6} {'max':>6} "
          f"{'slope MiB/min':>13} {'fds first':>9} {'last':>5} {'max':>5} {'threads max':>11}")
    out["processes"] = {}
    out["samples"] = {name: [[round(t - t_start, 1), r, f, th] for t, r, f, th in pts]
                      for name, pts in samples.items()}
    half = t_end - window_s if window_s > 0 else t_start + (t_end - t_start) / 2
    judge_slope = window_s >= 120
    out["judged_window_s"] = window_s if judge_slope else None
    for name in [f"serve ({m})" for m in serves] + cloud_instances:
        pts = samples.get(name, [])
        if not pts:
            continue
        second = [(t, r) for t, r, _, _ in pts if half <= t <= t_end]
        # Only a process alive over the whole window is judged.
        sl = slope_mib_per_min(second) if len(second) >= 10 and pts[0][0] <= half + args.sample_s * 2 else None
        fst, lst = pts[0], pts[-1]
        row = {"samples": len(pts), "rss_mib": [fst[1] / 1024, lst[1] / 1024, max(p[1] for p in pts) / 1024],
               "slope_mib_per_min": sl, "fds": [fst[2], lst[2], max(p[2] for p in pts)],
               "threads_max": max(p[3] for p in pts)}
        out["processes"][name] = row
        print(f"{name:<22} {len(pts):>7} {mib(fst[1]):>13} {mib(lst[1]):>6} {mib(max(p[1] for p in pts)):>6} "
              f"{(f'{sl:+.2f}' if sl is not None else 'n/a'):>13} {fst[2]:>9} {lst[2]:>5} "
              f"{max(p[2] for p in pts):>5} {row['threads_max']:>11}")
        if sl is not None and judge_slope and sl > args.rss_slope_mib_min:
            stats.fail("memory", f"{name}: RSS grows {sl:.2f} MiB/min over the last "
                                 f"{window_s:.0f} s (limit {args.rss_slope_mib_min})", quiet=True)
    if not judge_slope:
        print(f"(RSS slope reported, not judged: the second half holds no 2 minutes of whole load cycles)")
    else:
        print(f"(RSS slope: least squares over the last {window_s:.0f} s, {window_s / cycle_s:.0f} whole load "
              f"cycles; only processes alive over all of it)")
    # fds back to the baseline: serves against their own, the last cloud
    # against the first one's (the same three links).
    for name, b in baseline.items():
        target = after.get(name) if not name.startswith("cloud") else after.get(cloud_instances[-1])
        if target and target[2] > b[2] + args.fd_slack:
            stats.fail("fds", f"{name}: {b[2]} fds before the traffic, {target[2]} after it drained", quiet=True)
    print(f"fds before the traffic / after it drained: "
          + ", ".join(f"{n} {b[2]}/{(after.get(n) if not n.startswith('cloud') else after.get(cloud_instances[-1]) or (0, 0, '?'))[2]}"
                      for n, b in baseline.items()))
    print()
    for i, r in enumerate(restarts):
        print(f"restart {i + 1}: killed at {r['kill_t'] - t_start:.1f} s, up {r['up_t'] - r['kill_t']:.2f} s "
              f"later; serves saw it in " + ", ".join(f"{m} {s:.2f} s" for m, s in r["reconnect_s"].items()))
    out["restarts"] = restarts
    if len(restarts) < n_restarts:
        stats.fail("restart", f"{len(restarts)} of {n_restarts} restarts done", quiet=True)
    print(f"after draining: in flight {drain}; cancelled on disconnect (serve metrics) {cancelled}")
    out["drain"] = drain
    out["cancelled_on_disconnect"] = cancelled
    for k, v in drain.items():
        if v != 0:
            stats.fail("drain", f"{k}: {v} still open after the traffic drained", quiet=True)
    print(f"exit statuses on SIGTERM: {exits}")
    out["exits"] = {k: str(v) for k, v in exits.items()}
    checked = sum(1 for (m, key) in stats.texts if m == "exact" and ("cloud", key) in stats.texts)
    print(f"exact vs cloud: {checked} request shapes answered undegraded by both, "
          f"{len(stats.mismatches)} texts differ (or a seeded response did not repeat)")
    for key, a, b in stats.mismatches[:5]:
        stats.fail("exact", f"{key}: {a!r} vs {b!r} (greedy: cloud vs exact; sampled: "
                   f"one mode and seed twice)", quiet=True)
    out["exact_checked"] = checked
    out["exact_mismatches"] = len(stats.mismatches)
    print()
    out["failures"] = [f"{t:.1f}s {k}: {w}" for t, k, w in stats.failures]
    if stats.failures:
        print(f"FAILED: {len(stats.failures)} failure(s):")
        for t, k, why in stats.failures[:30]:
            print(f"  {t:7.1f}s {k}: {why}")
        if len(stats.failures) > 30:
            print(f"  ... and {len(stats.failures) - 30} more")
        ok = False
    else:
        print("PASSED: every well-formed request answered, every malformed one refused, "
              "no crash, fds back, RSS flat")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    rc = 1
    try:
        rc = main()
    finally:
        stop_all()
        if rc in (0, 77) and not args.keep:
            if not os.environ.get("SOAK_WORK"):
                import shutil
                shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs: {work}")
    sys.exit(rc)
