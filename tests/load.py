"""A bounded HTTP load on loopback with wrk, counting every way a request can fail.

Used by the tests that prove "no request lost": a result's ``failed`` sums
wrk's connect, read, write and timeout errors and its non-2xx/3xx answers.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class LoadResult:
    requests: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx: int
    requests_per_second: float
    output: str

    @property
    def failed(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.non_2xx

    @classmethod
    def parse(cls, output: str) -> LoadResult:
        def number(pattern: str) -> int:
            match = re.search(pattern, output)
            return int(match.group(1)) if match else 0

        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
        connect, read, write, timeout = (int(x) for x in errors.groups()) if errors else (0, 0, 0, 0)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
        requests = number(r"(\d+) requests in ")
        if not requests:
            raise AssertionError(f"wrk printed no request count:\n{output}")
        return cls(requests, connect, read, write, timeout, number(r"Non-2xx or 3xx responses: (\d+)"),
                   float(rps.group(1)) if rps else 0.0, output)

    def __str__(self) -> str:
        return (f"{self.requests} requests ({self.requests_per_second:.0f}/s), failed {self.failed}: "
                f"connect {self.connect_errors}, read {self.read_errors}, write {self.write_errors}, "
                f"timeout {self.timeouts}, non-2xx {self.non_2xx}")


class Load:
    """wrk against 127.0.0.1:PORT for a fixed time, keep-alive connections, in the background.

        with Load(port, seconds=8) as load:
            ...  # restart things
        assert load.result().failed == 0
    """

    def __init__(self, port: int, *, seconds: float = 8, connections: int = 20, path: str = "/",
                 host: str = "127.0.0.1") -> None:
        if shutil.which("wrk") is None:
            raise AssertionError("wrk is not installed: apt-get install wrk (make deps does)")
        self.seconds = seconds
        self.argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
                     f"http://{host}:{port}{path}"]
        self.proc: subprocess.Popen[str] | None = None
        self._result: LoadResult | None = None

    def __enter__(self) -> Load:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.result()
        else:
            self.stop()

    def result(self) -> LoadResult:
        """Wait for wrk to finish its run and parse what it counted."""
        if self._result is None:
            assert self.proc is not None, "use Load as a context manager"
            try:
                output, _ = self.proc.communicate(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError(f"wrk ran {self.seconds + 30:g}s past its {self.seconds:g}s") from None
            self._result = LoadResult.parse(output)
        return self._result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
