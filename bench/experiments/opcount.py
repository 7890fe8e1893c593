"""Count the Python bytecodes a worker executes per request, per function: a cost that does not vary.

    /usr/bin/python3 -m bench.experiments.opcount                      # this tree
    FLEET_TREE=<other tree> /usr/bin/python3 -m bench.experiments.opcount --tree
    /usr/bin/python3 -m bench.experiments.opcount --pool --app sleep2  # a waiting app, as served

Sampling profilers disagree from run to run by more than the few percent two
versions differ by; this counts instead. A worker runs under ``sys.settrace``
with opcode events, a client sends N requests one after another on one
keep-alive connection, and the worker writes its counts when it stops. Two runs
(N and 2N requests) are differenced, so start-up and shutdown cancel out.
Tracing makes the worker ~50 times slower: the relief thread's looks, timed in
wall time, are left out of the per-request figure (only the loop thread's counts).
With ``--pool`` requests are served on the pool, as a waiting app's are, and the
pool threads' bytecodes are counted too: what a thread holds the GIL for on each
request besides the app (granian and uWSGI run only the app in Python).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from harness import procs  # noqa: E402
from harness.http import get  # noqa: E402
from harness.net import HOST, listen  # noqa: E402
from harness.worker import fd3_launch  # noqa: E402

OUT_ENV = "OPCOUNT_OUT"


def traced_main() -> int:
    """In the worker: count opcodes of the main (loop) thread per function; write them at exit."""
    tree = os.environ.get("FLEET_TREE")
    if tree:
        sys.path.insert(0, tree)
        for name in [m for m in sys.modules if m == "fleet" or m.startswith("fleet.")]:
            del sys.modules[name]
    loop: Counter[str] = Counter()  # the main thread's
    pool: Counter[str] = Counter()  # the pool threads': one at a time, as requests come one at a time

    def tracer(counts: Counter[str]) -> Any:
        def trace(frame: Any, event: str, arg: Any) -> Any:
            if event == "call":
                frame.f_trace_opcodes = True
            elif event == "opcode":
                code = frame.f_code
                counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
            return trace
        return trace

    from fleet.worker import main

    sys.settrace(tracer(loop))
    if os.environ.get("FLEET_INLINE_MAX") == "0":
        threading.settrace(tracer(pool))  # NOTE: the relief thread is not started with this dispatch
    try:
        return main([])
    finally:
        sys.settrace(None)
        Path(os.environ[OUT_ENV]).write_text(json.dumps({"loop": loop, "pool": pool}))


def run(requests: int, tree: str | None, env_extra: dict[str, str]) -> dict[str, Counter[str]]:
    """Start a traced worker, send ``requests`` requests on one connection, stop it; its counts by thread."""
    sock = listen()
    port = sock.getsockname()[1]
    out = Path(tempfile.mkdtemp(prefix="opcount-")) / "counts.json"
    launch = fd3_launch([sock.fileno()], sys.executable, "bench.experiments.opcount")
    env = {**os.environ, "LISTEN_FDS": "1", OUT_ENV: str(out), "PYTHONPATH": str(REPO),
           "FLEET_CPU_AFFINITY": "none", "OPCOUNT_WORKER": "1", **env_extra}  # fmt: skip
    if tree:
        env["FLEET_TREE"] = tree
    else:
        env.pop("FLEET_TREE", None)
    worker = procs.Launched(launch.argv, env=env, log=out.with_suffix(".log"), pass_fds=launch.pass_fds,
                            preexec_fn=launch.preexec_fn, cwd=REPO)  # fmt: skip
    try:
        conn = _connect(port)
        for _ in range(requests):
            # NOTE: http.client connects again after a Connection: close (FLEET_KEEPALIVE_MAX_AGE)
            get(port, "/", conn=conn)
        conn.close()
        os.kill(worker.pid, signal.SIGTERM)
        worker.popen.wait(60)
    finally:
        worker.stop()
        sock.close()
    return {thread: Counter(counts) for thread, counts in json.loads(out.read_text()).items()}


def _connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection, once the traced worker answers (it starts slowly)."""
    for _ in range(600):
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            get(port, "/", conn=conn)
            return conn
        except (OSError, http.client.HTTPException):
            conn.close()
            threading.Event().wait(0.1)
    raise RuntimeError("the traced worker never answered")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.experiments.opcount")
    p.add_argument("--requests", type=int, default=500, help="N: runs of N and 2N requests are differenced")
    p.add_argument("--tree", action="store_true", help="count FLEET_TREE's worker instead of this tree's")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--app", help="count serving this bench/apps.py callable (default: fleet's Hello World)")
    p.add_argument("--pool", action="store_true",
                   help="serve on the pool (FLEET_INLINE_MAX=0), as waiting apps are; count its threads too")
    args = p.parse_args(argv)
    tree = os.environ["FLEET_TREE"] if args.tree else None
    env = {"FLEET_APP": f"bench.apps:{args.app}"} if args.app else {}
    if args.pool:
        env["FLEET_INLINE_MAX"] = "0"
    procs.stop_on_signals()
    one, two = run(args.requests, tree, env), run(2 * args.requests, tree, env)
    for thread in ("loop", "pool") if args.pool else ("loop",):
        before, after = one[thread], two[thread]
        per = {k: (after[k] - before[k]) / args.requests for k in set(before) | set(after)}
        print(f"{sum(per.values()):,.0f} bytecodes a request on the {thread} thread ({tree or 'this tree'})")
        for name, n in sorted(per.items(), key=lambda kv: -kv[1])[: args.top]:
            if n >= 0.5:
                print(f"{n:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(traced_main() if os.environ.get("OPCOUNT_WORKER") else main())
