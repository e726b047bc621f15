"""Both ways the library makes a POST, behind :meth:`Transport.post`'s signature, so that the
exchange tests run through each: the blocking transport (synchronous topics, the test endpoint,
Celery) and the dispatcher's :class:`~flask_kaizen_webhooks.multiplex.Multiplexer`.

A module marked ``both_drivers`` runs every test once per driver; its clients come from
:func:`wrap`.
"""

from __future__ import annotations

import threading
from typing import Any

from flask_kaizen_webhooks.multiplex import Job, Multiplexer
from flask_kaizen_webhooks.transport import SendResult, Transport

#: The driver of the running test: "blocking" or "multiplexed".
CURRENT = "blocking"
_made: list[Multiplexed] = []


class Multiplexed:
    """A :class:`Multiplexer` of its own, waited on like a blocking call."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._sender: Multiplexer[tuple[threading.Event, list[SendResult]]] = Multiplexer(
            transport, max_active=8, connect_timeout=1.0, done=self._done
        )
        self._sender.start()

    def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float,
        connect_timeout: float,
    ) -> SendResult:
        self._sender.connect_timeout = connect_timeout
        finished: threading.Event = threading.Event()
        box: list[SendResult] = []
        self._sender.send(Job(url, body, headers, timeout, (finished, box)))
        assert finished.wait(timeout + 10), "the multiplexer never answered"
        return box[0]

    def close(self) -> None:
        assert self._sender.stop(5.0) == []
        self.transport.close()

    @staticmethod
    def _done(context: tuple[threading.Event, list[SendResult]], result: SendResult) -> None:
        finished, box = context
        box.append(result)
        finished.set()


def wrap(transport: Transport) -> Any:
    """``transport``, or a multiplexer in front of it, as the running test's driver says."""
    if CURRENT == "blocking":
        return transport
    _made.append(Multiplexed(transport))
    return _made[-1]


def close_all() -> None:
    """Stop the multiplexers the test made."""
    while _made:
        _made.pop().close()
