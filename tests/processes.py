"""Host apps as real processes: started with a command, their port read from what they print,
stopped gently or killed outright (with every process they forked)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from flask import Flask

from flask_kaizen_webhooks import signals

ROOT = Path(__file__).resolve().parent.parent


def host_environment(**extra: str) -> dict[str, str]:
    """The environment of a host process: no trace of the test run it is started from."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class HostProcess:
    """A server process (and the ones it forks) in a session of its own, its output (stdout and
    stderr) kept in :attr:`output`."""

    def __init__(
        self, command: list[str], env: dict[str, str], *, listening: str | None, cwd: Path = ROOT
    ) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output = ""
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        #: The port ``listening`` caught in its first group (0: no pattern, or one without a
        #: group, as for a worker).
        self.port = 0
        if listening:
            match = self.wait_for_output(listening)
            self.port = int(match.group(1)) if match.re.groups else 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def wait_for_output(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` in what the process printed, waiting for it."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.output)):
            assert self.process.poll() is None or not self._lines.empty(), self.output
            assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s: {self.output}"
            with contextlib.suppress(queue.Empty):
                self.output += self._lines.get(timeout=0.2)
        return found

    def read_output(self) -> str:
        """Everything printed so far."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.output += self._lines.get_nowait()
        return self.output

    def kill(self) -> None:
        """SIGKILL the process and everything it forked, at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._reader.join(10)
        self.read_output()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL whatever is left after 15 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._reader.join(10)
        self.read_output()


def python() -> str:
    return sys.executable


def run_python(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a host process of its own (the package importable, as from a checkout);
    what it printed, once it ended well."""
    run = subprocess.run(
        [python(), "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=host_environment(),
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def celery_worker_command(
    name: str,
    *,
    pool: str = "threads",
    concurrency: int = 2,
    loglevel: str = "WARNING",
    beat: Path | None = None,
    quiet: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command of a Celery worker process of ``tests.celery_host`` named ``name``
    (running beat too, with its schedule in ``beat``; without Celery's banner if ``quiet``)."""
    command = [python(), "-m", "celery", "-A", "tests.celery_host:celery_app"]
    command += ["--quiet", "worker"] if quiet else ["worker"]
    command += [f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel}"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    command += [f"--hostname={name}@%h", *extra]
    if beat is not None:
        command += ["--beat", f"--schedule={beat}"]
    return command


def note_deliveries(app: Flask) -> None:
    """With ``KWT_DELIVERED`` set (a file's path): each delivery that succeeds in this process
    appends ``<pid> <delivery id>`` to that file, as a host listening to the signal would, so
    that a test tells which process sent what."""
    path = os.environ.get("KWT_DELIVERED")
    if not path:
        return
    lock = threading.Lock()

    def noted(sender: Flask, *, delivery_id: str, **_fields: object) -> None:
        with lock, open(path, "a") as notes:
            notes.write(f"{os.getpid()} {delivery_id}\n")

    signals.delivery_succeeded.connect(noted, sender=app, weak=False)


def delivered_by(path: Path) -> dict[str, set[int]]:
    """What :func:`note_deliveries` wrote: the processes that sent each delivery."""
    found: dict[str, set[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            pid, delivery_id = line.split()
            found.setdefault(delivery_id, set()).add(int(pid))
    return found
