"""Signing webhook bodies: a compact JWS (HS256) of the JSON payload, ``iat`` in its header.

Signing is done here with :mod:`hmac` (it runs for every attempt; the tests check that it gives
python-jose's bytes exactly); verifying is python-jose's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jose import jws

ALGORITHM = "HS256"


def encode_payload(document: Mapping[str, Any]) -> bytes:
    """The payload's canonical JSON bytes (compact, UTF-8); raise TypeError if not JSON."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def with_request_ids(document_json: str, request_ids: Sequence[str]) -> list[str]:
    """The payload for each id: ``document_json`` (from :func:`encode_payload`) with
    ``webhook_request_id`` set to the id, last. The id is spliced in, which gives what encoding
    ``{**document, "webhook_request_id": id}`` would."""
    head = document_json[:-1] + ("," if document_json != "{}" else "")
    return [f'{head}"webhook_request_id":{json.dumps(request_id)}}}' for request_id in request_ids]


def sign(
    payload: bytes, secret: str, *, issued_at: float | None = None, kid: int | None = None
) -> str:
    """The compact JWS of ``payload`` signed with ``secret``. The header holds ``iat`` and the
    secret's version as ``kid``, set here and never from callers' headers (which could otherwise
    override ``alg``)."""
    header: dict[str, Any] = {
        "alg": ALGORITHM,
        "iat": int(time.time() if issued_at is None else issued_at),
        "typ": "JWT",
    }
    if kid is not None:
        header["kid"] = str(kid)
    encoded_header = _base64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    signing_input = encoded_header + b"." + _base64url(payload)
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _base64url(signature)).decode("ascii")


def _base64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def detached(token: str) -> str:
    """``token`` without its payload (``header..signature``, RFC 7515 appendix F)."""
    header, _payload, signature = token.split(".")
    return f"{header}..{signature}"


def verify_with(token: str, secret: str) -> bytes:
    """The payload of ``token`` if its HS256 signature matches ``secret``; raise a
    :class:`jose.exceptions.JOSEError` otherwise."""
    payload: bytes = jws.verify(token, secret, algorithms=[ALGORITHM])
    return payload
