"""The HTTP/1.1 a webhook sender needs (RFC 9112): write a request, then read one answer
strictly, with limits on everything a receiver controls.

The answer is read by one parser, :func:`parse_response`, a generator that is fed the bytes as
they arrive, so that a blocking socket (:func:`read_response`) and the dispatcher's event loop
share it. Its feeder throws :class:`TimeoutError` (or the socket's :class:`OSError`) into it
when the deadline passes (or the connection breaks): before the answer's head is complete that
exception comes out; later, the answer comes back with the body read so far and an error,
beside the status already known.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

#: Bytes read from the socket at a time.
RECV_BYTES = 64 * 1024
#: The most bytes of status line and headers (with any trailers) one answer may have.
MAX_HEAD_BYTES = 64 * 1024
#: The most header lines one answer may have.
MAX_HEADERS = 100
#: The most interim (1xx) answers skipped before the final one.
MAX_INTERIM = 10
#: The most bytes of one chunk-size line (with its extensions).
MAX_CHUNK_LINE = 4096
#: The most digits of a Content-Length (18: under an exabyte, and a cheap int()).
MAX_LENGTH_DIGITS = 18
#: Statuses whose answers have no body.
NO_BODY = frozenset({204, 304})

T = TypeVar("T")
#: A parser step: it yields when it needs more bytes and is sent them (``b""``: the stream
#: ended).
Parse = Generator[None, bytes, T]


class Malformed(Exception):
    """The receiver's answer is not HTTP/1.x as the RFC frames it."""


@dataclass(frozen=True, slots=True)
class Response:
    """A receiver's answer: status, headers (names lower-case, repeated ones joined with ``, ``)
    and the body, up to the cap."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: Why the body is incomplete (cut off by the deadline, or the connection broke), or None.
    error: str | None
    #: True when the connection may carry another request.
    reusable: bool

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower-case), or None."""
        return self.headers.get(name)


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Write all of ``data`` to a blocking ``sock`` before ``deadline`` (TimeoutError
    otherwise)."""
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline passed")
        sock.settimeout(remaining)
        sent = sock.send(view)
        view = view[sent:]


def read_response(sock: socket.socket, deadline: float, max_body: int) -> Response:
    """Read one answer from a blocking ``sock``, each read bounded by what is left before
    ``deadline``; see :func:`parse_response`."""
    parser = parse_response(max_body)
    try:
        next(parser)  # to its first need for bytes
        while True:
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the deadline passed")
                sock.settimeout(remaining)
                chunk = sock.recv(RECV_BYTES)
            except OSError as exc:  # TimeoutError included
                parser.throw(exc)
            else:
                parser.send(chunk)
    except StopIteration as done:
        response: Response = done.value
        return response


def parse_response(max_body: int) -> Parse[Response]:
    """Parse one answer; keep up to ``max_body`` bytes of its body (a longer body is not read
    further, and the connection is then not reusable)."""
    reader = _Reader()
    for _ in range(MAX_INTERIM + 1):
        version, status, headers = yield from _read_head(reader)
        if not 100 <= status < 200 or status == 101:
            break
    else:
        raise Malformed(f"more than {MAX_INTERIM} interim answers")
    keep_alive = version == "HTTP/1.1" and "close" not in _tokens(headers.get("connection"))
    if status in NO_BODY or 100 <= status < 200:
        return Response(status, headers, b"", None, keep_alive and status != 101)
    body = bytearray()
    try:
        framed = yield from _read_body(reader, headers, max_body, body)
    except TimeoutError:
        return Response(status, headers, bytes(body), "timed out reading the response", False)
    except (OSError, Malformed) as exc:
        return Response(status, headers, bytes(body), f"reading the response failed: {exc}", False)
    reusable = keep_alive and framed and not reader.buffer
    return Response(status, headers, bytes(body[:max_body]), None, reusable)


def _read_head(reader: _Reader) -> Parse[tuple[str, int, dict[str, str]]]:
    """The status line and headers of one answer."""
    budget = [MAX_HEAD_BYTES]
    line = yield from reader.line(budget)
    if line is None:
        raise ConnectionAbortedError("the receiver closed the connection without answering")
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not (
        version in (b"HTTP/1.1", b"HTTP/1.0")
        and len(code) == 3
        and code.isdigit()
        and rest[3:4] in (b"", b" ")
    ):
        raise Malformed(f"not an HTTP/1.x status line: {line[:40]!r}")
    return version.decode(), int(code), (yield from _read_fields(reader, budget))


def _read_fields(reader: _Reader, budget: list[int]) -> Parse[dict[str, str]]:
    """Header (or trailer) lines up to the empty line that ends them."""
    headers: dict[str, str] = {}
    count = 0
    while True:
        line = yield from reader.line(budget)
        if line is None:
            raise Malformed("the connection closed inside the headers")
        if not line:
            return headers
        count += 1
        if count > MAX_HEADERS:
            raise Malformed(f"more than {MAX_HEADERS} header lines")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
            raise Malformed(f"not a header line: {line[:40]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key == "content-length" and headers[key] != text:
                raise Malformed("conflicting Content-Length headers")
            if key != "content-length":
                headers[key] += ", " + text
        else:
            headers[key] = text


def _read_body(
    reader: _Reader, headers: dict[str, str], max_body: int, body: bytearray
) -> Parse[bool]:
    """Read the body into ``body`` (at most ``max_body`` bytes plus one read); True when it was
    read to its framed end, so the connection can carry the next request."""
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if _tokens(coding)[-1:] == ["chunked"]:
            return (yield from _read_chunked(reader, max_body, body))
        return (yield from _read_to_end(reader, max_body, body))
    length = headers.get("content-length")
    if length is None:
        return (yield from _read_to_end(reader, max_body, body))
    if not (length.isascii() and length.isdigit()) or len(length) > MAX_LENGTH_DIGITS:
        raise Malformed(f"Content-Length is not a number: {length[:40]!r}")
    size = int(length)
    yield from reader.take_into(body, min(size, max_body))
    if len(body) < min(size, max_body):
        raise ConnectionAbortedError(f"the connection closed after {len(body)} of {size} bytes")
    return size <= max_body


def _read_chunked(reader: _Reader, max_body: int, body: bytearray) -> Parse[bool]:
    while True:
        line = yield from reader.line([MAX_CHUNK_LINE])  # each size line has a limit of its own
        if line is None:
            raise ConnectionAbortedError("the connection closed inside a chunked body")
        digits = line.partition(b";")[0].strip()
        if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
            raise Malformed(f"not a chunk size: {line[:40]!r}")
        size = int(digits, 16)
        if size == 0:
            yield from _read_fields(reader, [MAX_HEAD_BYTES])  # trailers, ignored
            return True
        wanted = min(size, max_body - len(body) + 1)
        before = len(body)
        yield from reader.take_into(body, wanted)
        if len(body) - before < wanted:
            raise ConnectionAbortedError("the connection closed inside a chunk")
        if len(body) > max_body:
            return False  # over the cap: the rest is not read
        if (yield from reader.line([MAX_CHUNK_LINE])) != b"":
            raise Malformed("a chunk is longer than its size")


def _read_to_end(reader: _Reader, max_body: int, body: bytearray) -> Parse[bool]:
    """A body that the end of the connection frames."""
    yield from reader.take_into(body, max_body + 1)
    return False


def _tokens(value: str | None) -> list[str]:
    return [token.strip().lower() for token in value.split(",")] if value else []


class _Reader:
    """The bytes of one answer, as they are fed in."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.ended = False

    def _fill(self) -> Parse[bool]:
        """Wait for more bytes; False at the end of the stream."""
        if self.ended:
            return False
        chunk = yield
        if not chunk:
            self.ended = True
            return False
        self.buffer += chunk
        return True

    def line(self, budget: list[int]) -> Parse[bytes | None]:
        """The next line without its line break (a bare LF ends a line too); None at the end
        of the stream. ``budget`` holds the bytes the line (with those after it in the same
        part of the answer) may still take."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                break
            start = len(self.buffer)
            if start > budget[0]:
                raise Malformed("the answer's head, or a chunk's size line, is too long")
            if not (yield from self._fill()):
                if self.buffer:
                    raise ConnectionAbortedError("the connection closed inside a line")
                return None
        budget[0] -= end + 1
        if budget[0] < 0:
            raise Malformed("the answer's head, or a chunk's size line, is too long")
        line = bytes(self.buffer[: end - 1 if end and self.buffer[end - 1] == 13 else end])
        del self.buffer[: end + 1]
        return line

    def take_into(self, out: bytearray, count: int) -> Parse[None]:
        """Move up to ``count`` bytes into ``out``; fewer only at the end of the stream."""
        while True:
            moved = min(count, len(self.buffer))
            if moved:
                out += self.buffer[:moved]
                del self.buffer[:moved]
                count -= moved
            if count <= 0 or not (yield from self._fill()):
                return
