"""Claim tokens that tell which process holds a claim, so that a process starting on the same
machine can give back at once the claims of a process there that died, instead of waiting for
their leases to run out.

A token reads ``<machine>-<pid>-<process start>-<random>`` in hex (35 characters): the machine is
a digest of its host name, the process start is its start time in clock ticks since boot
(Linux), which tells a process from a later one that was given the same pid.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from dataclasses import dataclass


def machine_tag() -> str:
    """This machine's part of the tokens."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), 0 where the system does not say,
    or None when no such process runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None  # it ended; nobody has collected its exit status yet
        return int(fields[19])  # field 22, counted from the state (field 3)
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        pass
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
        """True while this process (on this machine) runs."""
        return process_start(self.pid) == self.started

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
