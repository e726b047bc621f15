"""Signing webhook bodies: a compact JWS (HS256) of the JSON payload, ``iat`` in its header."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from jose import jws

ALGORITHM = "HS256"


def encode_payload(document: Mapping[str, Any]) -> bytes:
    """The payload's canonical JSON bytes (compact, UTF-8); raise TypeError if not JSON."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(payload: bytes, secret: str, *, issued_at: float | None = None) -> str:
    """The compact JWS of ``payload`` signed with ``secret``; ``iat`` is set here, never by
    callers' headers (which could otherwise override ``alg``)."""
    iat = int(time.time() if issued_at is None else issued_at)
    token: str = jws.sign(payload, secret, headers={"iat": iat}, algorithm=ALGORITHM)
    return token
