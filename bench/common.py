"""What the benchmarks share: a `python -m chat` subprocess, CPU pinning, /proc readers,
a /metrics reader.

The scripts import it as `from common import ...`: run as `python bench/x.py`, a
script has bench/ as sys.path[0].
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]


def pinned(command: list[str], cpu: int = 0) -> list[str]:
    """`command` run on CPU `cpu` (with taskset, so that all its threads are), if there are two."""
    taskset = shutil.which("taskset")
    if (os.cpu_count() or 1) > 1 and taskset is not None:
        return [taskset, "-c", str(cpu), *command]
    return command


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time of each thread of a process so far, by thread name: "main"
    for the main thread, the name the thread was given for the others (summed by name)."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        found[name] = found.get(name, 0.0) + seconds
    return found


def busy_seconds() -> float:
    """CPU time the whole machine spent busy so far, all cores (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The unlabelled samples of the /metrics page of the server at `base` (its http URL),
    by name; a labelled one (a histogram's buckets) is left out."""
    async with http.get(base + "/metrics") as response:
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value and not line.startswith("#") and "{" not in name:
            samples[name] = float(value)
    return samples


class ChatProcess:
    """`python -m chat` on a free port with a YAML config; `url` its WebSocket endpoint."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str, *,
                 label: str = "server", host: str | None = None, cpu: int | None = None,
                 keep_log: bool = True, stop_timeout: float = 10) -> None:
        """Start it with `config` written to `workdir/{name}.yaml`; its stderr goes to
        `self.log` (`{name}.log`) unless not `keep_log`. `label` names it in the error if it
        does not start; `host` is passed as --host if given; `cpu` pins it (see `pinned`);
        `stop()` kills it if it has not exited `stop_timeout` s after SIGTERM.
        """
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = workdir / f"{name}.log"
        self.stop_timeout = stop_timeout
        command = [sys.executable, "-m", "chat", "--config", str(path)]
        if host is not None:
            command += ["--host", host]
        command += ["--port", "0", "--log-level", "WARNING"]
        if cpu is not None:
            command = pinned(command, cpu)
        with self.log.open("w") if keep_log else open(os.devnull, "w") as stderr:
            self.proc = subprocess.Popen(
                command, cwd=workdir, stdout=subprocess.PIPE, stderr=stderr, text=True,
                # The server runs this checkout's code, whatever the venv was installed from.
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.match(r"listening on (http://\S+)", line)
        if not match:
            self.proc.kill()
            log = f"\n{self.log.read_text()}" if keep_log else ""
            raise SystemExit(f"{label} did not start: {line!r}{log}")
        self.http = match.group(1)
        self.url = self.http.replace("http://", "ws://") + "/ws"

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited `stop_timeout` seconds later."""
        self.proc.terminate()
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
