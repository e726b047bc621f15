"""For integrators: verify the webhooks this extension sends.

.. code-block:: python

    from flask_kaizen_webhooks.receiver import verify

    payload = verify(request.get_data(), "signature_secret", max_age=300)

or, in a Flask receiver, :func:`webhook_view`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import jsonify, request
from jose import jws
from jose.exceptions import JOSEError, JWSError

from .errors import (
    ExpiredWebhook,
    InvalidSignature,
    MalformedWebhook,
    VerificationError,
)
from .signing import ALGORITHM

#: Seconds a receiver accepts an ``iat`` from the future, for clocks that disagree a little.
CLOCK_SKEW = 60

R = TypeVar("R")

__all__ = [
    "ExpiredWebhook",
    "InvalidSignature",
    "MalformedWebhook",
    "VerificationError",
    "verify",
    "webhook_view",
]


def verify(
    body: bytes | str,
    secret: str | list[str],
    *,
    max_age: float | None = 300,
    now: float | None = None,
    next_signature: str | None = None,
) -> dict[str, Any]:
    """The payload of a webhook ``body`` signed with ``secret``, or a :class:`VerificationError`.

    ``secret`` may be a list, to accept any of several. During a secret rotation the body is
    signed with the previous secret and the ``Webhook-Signature-Next`` header carries the
    signature made with the new one: pass that header as ``next_signature`` and a receiver that
    knows only the new secret verifies too. ``max_age`` refuses replays of bodies signed longer
    ago than that many seconds; ``None`` turns it off.
    """
    token = (body.decode("ascii", "replace") if isinstance(body, bytes) else body).strip()
    keys = [secret] if isinstance(secret, str) else list(secret)
    candidates = [token]
    if next_signature:
        detached_parts, body_parts = next_signature.strip().split("."), token.split(".")
        if len(detached_parts) == 3 and detached_parts[1] == "" and len(body_parts) == 3:
            candidates.append(f"{detached_parts[0]}.{body_parts[1]}.{detached_parts[2]}")
    failure: VerificationError = InvalidSignature("The signature does not match the secret.")
    for candidate in candidates:
        try:
            header = jws.get_unverified_header(candidate)
        except (JWSError, ValueError, TypeError):
            raise MalformedWebhook("The body is not a compact JWS.") from None
        if header.get("alg") != ALGORITHM:
            failure = InvalidSignature(
                f"Unexpected algorithm {header.get('alg')!r}; expected HS256."
            )
            continue
        try:
            payload = _verified_bytes(candidate, keys)
        except InvalidSignature as exc:
            failure = exc
            continue
        if max_age is not None:
            _check_age(header.get("iat"), max_age, time.time() if now is None else now)
        try:
            document = json.loads(payload)
        except ValueError:
            raise MalformedWebhook("The signed payload is not JSON.") from None
        if not isinstance(document, dict):
            raise MalformedWebhook("The signed payload is not a JSON object.")
        return document
    raise failure


def _verified_bytes(token: str, secrets: list[str]) -> bytes:
    for candidate in secrets:
        try:
            payload: bytes = jws.verify(token, candidate, algorithms=[ALGORITHM])
            return payload
        except JWSError:
            continue
        except JOSEError:  # a secret python-jose cannot use as an HMAC key matches nothing
            continue
        except (ValueError, TypeError):
            raise MalformedWebhook("The body is not a compact JWS.") from None
    raise InvalidSignature("The signature does not match the secret.")


def _check_age(iat: Any, max_age: float, now: float) -> None:
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise ExpiredWebhook("The JWS header has no 'iat'; cannot tell how old the webhook is.")
    if iat > now + CLOCK_SKEW:
        raise ExpiredWebhook("The webhook's 'iat' lies in the future.")
    if now - iat > max_age:
        raise ExpiredWebhook(f"The webhook was signed {int(now - iat)} s ago (max {max_age:g} s).")


def webhook_view(
    secret: str | list[str] | Callable[[], str | list[str]], *, max_age: float | None = 300
) -> Callable[[Callable[..., R]], Callable[..., Any]]:
    """Decorate a Flask view that receives webhooks; it is called with ``payload=`` the verified
    document. Bodies that fail verification are answered ``401`` (``400`` if malformed) with a
    JSON error, and the view is not called.

    .. code-block:: python

        @app.post("/profile_updated")
        @webhook_view(secret=lambda: current_app.config["WEBHOOK_SECRET"])
        def profile_updated(payload):
            queue.put(payload)          # answer fast, work later
            return {"ok": True}
    """

    def decorate(view: Callable[..., R]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = secret() if callable(secret) else secret
            try:
                payload = verify(
                    request.get_data(),
                    key,
                    max_age=max_age,
                    next_signature=request.headers.get("Webhook-Signature-Next"),
                )
            except VerificationError as exc:
                status = 400 if isinstance(exc, MalformedWebhook) else 401
                return jsonify(error={"code": exc.code, "message": str(exc)}), status
            return view(*args, payload=payload, **kwargs)

        return wrapper

    return decorate
