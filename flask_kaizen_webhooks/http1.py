"""The HTTP/1.1 a webhook sender needs (RFC 9112), on a blocking socket and under a deadline:
write a request, then read one answer strictly, with limits on everything a receiver controls.

Every socket call gets only the time left before the deadline, so the deadline bounds the whole
exchange however slowly the receiver writes; :class:`TimeoutError` is raised when it passes
before the answer's head is complete. A body cut short by the deadline or a broken connection
comes back with what was read and an error, beside the status already known.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

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
    """Write all of ``data`` before ``deadline`` (TimeoutError otherwise)."""
    view = memoryview(data)
    while view:
        _wait_at_most(sock, deadline)
        sent = sock.send(view)
        view = view[sent:]


def read_response(sock: socket.socket, deadline: float, max_body: int) -> Response:
    """Read one answer from ``sock``; keep up to ``max_body`` bytes of its body (a longer body
    is not read further, and the connection is then not reusable)."""
    reader = _Reader(sock, deadline)
    for _ in range(MAX_INTERIM + 1):
        version, status, headers = _read_head(reader)
        if not 100 <= status < 200 or status == 101:
            break
    else:
        raise Malformed(f"more than {MAX_INTERIM} interim answers")
    keep_alive = version == "HTTP/1.1" and "close" not in _tokens(headers.get("connection"))
    if status in NO_BODY or 100 <= status < 200:
        return Response(status, headers, b"", None, keep_alive and status != 101)
    body = bytearray()
    try:
        framed = _read_body(reader, headers, max_body, body)
    except TimeoutError:
        return Response(status, headers, bytes(body), "timed out reading the response", False)
    except (OSError, Malformed) as exc:
        return Response(status, headers, bytes(body), f"reading the response failed: {exc}", False)
    reusable = keep_alive and framed and not reader.buffer
    return Response(status, headers, bytes(body[:max_body]), None, reusable)


def _read_head(reader: _Reader) -> tuple[str, int, dict[str, str]]:
    """The status line and headers of one answer."""
    budget = [MAX_HEAD_BYTES]
    line = reader.line(budget)
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
    return version.decode(), int(code), _read_fields(reader, budget)


def _read_fields(reader: _Reader, budget: list[int]) -> dict[str, str]:
    """Header (or trailer) lines up to the empty line that ends them."""
    headers: dict[str, str] = {}
    count = 0
    while True:
        line = reader.line(budget)
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


def _read_body(reader: _Reader, headers: dict[str, str], max_body: int, body: bytearray) -> bool:
    """Read the body into ``body`` (at most ``max_body`` bytes plus one read); True when it was
    read to its framed end, so the connection can carry the next request."""
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if _tokens(coding)[-1:] == ["chunked"]:
            return _read_chunked(reader, max_body, body)
        return _read_to_end(reader, max_body, body)
    length = headers.get("content-length")
    if length is None:
        return _read_to_end(reader, max_body, body)
    if not (length.isascii() and length.isdigit()) or len(length) > MAX_LENGTH_DIGITS:
        raise Malformed(f"Content-Length is not a number: {length[:40]!r}")
    size = int(length)
    reader.take_into(body, min(size, max_body))
    if len(body) < min(size, max_body):
        raise ConnectionAbortedError(f"the connection closed after {len(body)} of {size} bytes")
    return size <= max_body


def _read_chunked(reader: _Reader, max_body: int, body: bytearray) -> bool:
    while True:
        line = reader.line([MAX_CHUNK_LINE])  # each size line has a limit of its own
        if line is None:
            raise ConnectionAbortedError("the connection closed inside a chunked body")
        digits = line.partition(b";")[0].strip()
        if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
            raise Malformed(f"not a chunk size: {line[:40]!r}")
        size = int(digits, 16)
        if size == 0:
            _read_fields(reader, [MAX_HEAD_BYTES])  # trailers, ignored
            return True
        wanted = min(size, max_body - len(body) + 1)
        before = len(body)
        reader.take_into(body, wanted)
        if len(body) - before < wanted:
            raise ConnectionAbortedError("the connection closed inside a chunk")
        if len(body) > max_body:
            return False  # over the cap: the rest is not read
        if reader.line([MAX_CHUNK_LINE]) != b"":
            raise Malformed("a chunk is longer than its size")


def _read_to_end(reader: _Reader, max_body: int, body: bytearray) -> bool:
    """A body that the end of the connection frames."""
    reader.take_into(body, max_body + 1)
    return False


def _tokens(value: str | None) -> list[str]:
    return [token.strip().lower() for token in value.split(",")] if value else []


def _wait_at_most(sock: socket.socket, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the deadline passed")
    sock.settimeout(remaining)


class _Reader:
    """Buffered reads of one answer, each bounded by what is left of the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()
        self.ended = False

    def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        if self.ended:
            return False
        _wait_at_most(self.sock, self.deadline)
        chunk = self.sock.recv(RECV_BYTES)
        if not chunk:
            self.ended = True
            return False
        self.buffer += chunk
        return True

    def line(self, budget: list[int]) -> bytes | None:
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
            if not self._fill():
                if self.buffer:
                    raise ConnectionAbortedError("the connection closed inside a line")
                return None
        budget[0] -= end + 1
        if budget[0] < 0:
            raise Malformed("the answer's head, or a chunk's size line, is too long")
        line = bytes(self.buffer[: end - 1 if end and self.buffer[end - 1] == 13 else end])
        del self.buffer[: end + 1]
        return line

    def take_into(self, out: bytearray, count: int) -> None:
        """Move up to ``count`` bytes into ``out``; fewer only at the end of the stream."""
        while True:
            moved = min(count, len(self.buffer))
            if moved:
                out += self.buffer[:moved]
                del self.buffer[:moved]
                count -= moved
            if count <= 0 or not self._fill():
                return
