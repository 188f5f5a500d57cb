"""Running wrk (a C load generator) with a Lua script, and reading its results."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile

# Printed by wrk's done() hook: one JSON line, so nothing is scraped from the text report.
_DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    '\\nWRK_RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,'
    .. '"mean_us":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency.mean, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclasses.dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: int
    mean_ms: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """Successful (2xx) requests per second: errors never count as throughput."""
        return (self.requests - self.non_2xx) / self.duration_s


def ensure_installed() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(
            "make bench needs wrk, the C load generator: install it with `apt-get install wrk` "
            "(Debian/Ubuntu) or `brew install wrk` (macOS)"
        )
    return path


# What a browser's beacon carries besides the body: the server reads both headers.
BROWSER_HEADERS = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Origin": "https://site-1.example",
}


def lua_script(
    *,
    method: str = "GET",
    body: bytes | None = None,
    delay_ms: float | None = None,
    bodies: list[bytes] | None = None,
) -> str:
    """`bodies`: sent in turn, one per request, each connection from the first (wrk then
    formats every request itself, which costs it a little time)."""
    lines = [f'wrk.method = "{method}"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in BROWSER_HEADERS.items()]
    if body is not None or bodies:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body)}")
    if bodies:
        lines.append(f"local bodies = {{{', '.join(map(_lua_string, bodies))}}}")
        lines.append(
            "local turn = 0\n"
            "request = function() turn = turn % #bodies + 1 "
            "return wrk.format(nil, nil, nil, bodies[turn]) end"
        )
    if delay_ms is not None:
        # Pace each connection: wrk waits this long before each request. It takes whole
        # milliseconds only, so round up or down at random to keep the fraction on average.
        whole, fraction = int(delay_ms), delay_ms - int(delay_ms)
        lines.append(
            f"delay = function() if math.random() < {fraction:.4f} then return {whole + 1} end "
            f"return {whole} end"
        )
    return "\n".join(lines) + _DONE


def run(
    url: str,
    script: str,
    *,
    connections: int,
    seconds: int,
    cpu: int | None,
    threads: int = 1,
) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        command = [
            ensure_installed(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            lua.name,
            url,
        ]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_RESULT "))
    data = json.loads(line.removeprefix("WRK_RESULT "))
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        non_2xx=data["non_2xx"],
        socket_errors=data["socket_errors"],
        mean_ms=data["mean_us"] / 1000,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def _lua_string(data: bytes) -> str:
    # Long-bracket strings take the bytes as they are; pick a level that cannot clash.
    level = 0
    while b"]" + b"=" * level + b"]" in data + b"]":  # data ending in "]" would close early
        level += 1
    text = data.decode()
    return f"[{'=' * level}[{text}]{'=' * level}]"
