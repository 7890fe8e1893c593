"""wrk, the load generator: one way to start it on loopback and one parser of what it reports.

The tests use it to prove "no request lost" (:attr:`Wrk.failed` sums wrk's connect,
read, write and timeout errors and its non-2xx/3xx answers); the bench reads its
requests per second and latency percentiles (``latency=True``). Every run is bounded
by ``-d`` and started and stopped by PID (:class:`harness.procs.Launched`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from types import TracebackType

from harness import procs
from harness.net import HOST

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk printed a latency the harness cannot read: {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True)
class Wrk:
    """What wrk (4.1) reported for one run; the percentiles only with ``--latency`` (else NaN)."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx: int
    raw: str

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    @classmethod
    def parse(cls, out: str) -> Wrk:
        """Read wrk's report; ValueError if it has no summary line (wrk failed to run)."""
        done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        if not done:
            raise ValueError(f"wrk printed no summary:\n{out}")
        seconds = float(done.group(2)) * (60.0 if done.group(3) == "m" else 1.0)
        if done.group(3) == "ms":
            seconds /= 1000
        pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))  # NOTE: "1.26s " ends in a space
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        connect, read, write, timeout = (int(x) for x in errors.groups()) if errors else (0, 0, 0, 0)
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        return cls(
            requests=int(done.group(1)),
            seconds=seconds,
            rps=float(rps.group(1)) if rps else 0.0,
            p50_ms=_ms(pct["50"]) if "50" in pct else float("nan"),
            p99_ms=_ms(pct["99"]) if "99" in pct else float("nan"),
            connect_errors=connect,
            read_errors=read,
            write_errors=write,
            timeouts=timeout,
            non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
            raw=out,
        )

    def __str__(self) -> str:
        return (f"{self.requests} requests ({self.rps:.0f}/s), failed {self.failed}: "
                f"connect {self.connect_errors}, read {self.read_errors}, write {self.write_errors}, "
                f"timeout {self.timeouts}, non-2xx {self.non_2xx}")  # fmt: skip


class Load:
    """wrk against 127.0.0.1:PORT for a fixed time, keep-alive connections, in the background.

        with Load(port, seconds=8) as load:
            ...  # restart things
        assert load.result().failed == 0

    ``timeout`` is wrk's per-request limit (a request past it counts as a timeout).
    """

    def __init__(self, port: int, *, seconds: float = 8, connections: int = 20, path: str = "/",
                 threads: int = 1, timeout: str = "5s", latency: bool = False) -> None:  # fmt: skip
        if shutil.which("wrk") is None:
            # NOTE: an OSError, as starting a missing program is: the bench notes it and goes on.
            raise FileNotFoundError("wrk is not installed: apt-get install wrk (make deps does)")
        self.seconds = seconds
        self.argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout}",
                     *(["--latency"] if latency else []), f"http://{HOST}:{port}{path}"]  # fmt: skip
        self.launched: procs.Launched | None = None
        self._result: Wrk | None = None

    def start(self) -> Load:
        self.launched = procs.Launched(self.argv, capture=True)
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if kind is None:
            self.result()
        else:
            self.stop()

    def result(self) -> Wrk:
        """Wait for wrk to finish its run and parse what it counted."""
        if self._result is None:
            assert self.launched is not None, "start the Load first (or use it as a context manager)"
            try:
                output = self.launched.output(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"wrk ran 30s past its {self.seconds:g}s") from None
            finally:
                self.stop()
            self._result = Wrk.parse(output)
        return self._result

    def stop(self) -> None:
        """Stop wrk by PID if it still runs (after :meth:`result`, it has ended)."""
        if self.launched is not None:
            self.launched.stop()


