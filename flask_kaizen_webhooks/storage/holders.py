"""Claim tokens that tell which process holds a claim, so that a process starting on the same
machine can give back at once the claims of a process there that died, instead of waiting for
their leases to run out.

A token reads ``<machine>-<pid>-<process start>-<random>`` in hex (35 characters): the machine is
a digest of its host name, boot and process-id namespace, the process start is its start time in
clock ticks since boot (Linux), which tells a process from a later one that was given the same
pid. Where that cannot be told, a process that runs under the pid is taken to be the holder: a
claim is only ever given back early when its holder surely ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
from dataclasses import dataclass


def machine_tag() -> str:
    """This machine's part of the tokens: its host name, its boot and the process-id namespace
    of this process, so that containers sharing a host name (one pod) never judge each other's
    process ids, and a machine booted again does not take its old ids for new ones."""
    parts = [socket.gethostname(), "", ""]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as boot:
        parts[1] = boot.read().strip()
    with contextlib.suppress(OSError):
        parts[2] = os.readlink("/proc/self/ns/pid")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), 0 where the system does not say,
    or None when no such process runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None  # it ended; nobody has collected its exit status yet
        return int(fields[19])  # field 22, counted from the state (field 3)
    except (OSError, IndexError, ValueError):
        pass  # no /proc, or one that hides other users' processes
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: it runs
    return 0


@dataclass(frozen=True, slots=True)
class Holder:
    """The process a token names."""

    machine: str
    pid: int
    started: int

    @property
    def prefix(self) -> str:
        """What every token of this process starts with."""
        return f"{self.machine}-{self.pid:06x}-{self.started:010x}-"

    def runs(self) -> bool:
        """True while this process (on this machine) runs, or when that cannot be told."""
        started = process_start(self.pid)
        return started is not None and (started == self.started or 0 in (started, self.started))

    @classmethod
    def of(cls, token: str) -> Holder | None:
        """The holder ``token`` names, or None for a token of another form."""
        parts = token.split("-")
        if len(parts) != 4 or len(parts[0]) != 8:
            return None
        try:
            return cls(parts[0], int(parts[1], 16), int(parts[2], 16))
        except ValueError:
            return None


_this: Holder | None = None


def this_process() -> Holder:
    """The holder of this process's claims."""
    global _this
    pid = os.getpid()
    if _this is None or _this.pid != pid:  # first use, or a forked child
        _this = Holder(machine_tag(), pid, process_start(pid) or 0)
    return _this


def new_token() -> str:
    """A fresh claim token of this process."""
    return this_process().prefix + secrets.token_hex(4)
