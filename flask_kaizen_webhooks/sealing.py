"""Integrators' secrets at rest: sealed with Fernet (AES-128-CBC and HMAC-SHA256) under the
operator's keys, opened only to sign a delivery.

Keys come from ``KAIZEN_WEBHOOKS_SECRET_KEYS`` (Fernet keys, newest first: the first seals, every
one opens), or, with a warning, from a key derived from the app's ``SECRET_KEY``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigurationError, SecretUnreadable

logger = logging.getLogger("flask_kaizen_webhooks")

KEY_SETTING = "KAIZEN_WEBHOOKS_SECRET_KEYS"
#: Opened secrets kept in memory, by their sealed text, so that attempts do not decrypt again.
OPENED_CACHE = 1024


def fernet_keys(configured: object) -> tuple[bytes, ...]:
    """The keys of ``KAIZEN_WEBHOOKS_SECRET_KEYS``, checked: Fernet keys, newest first; none if
    it is unset (or empty)."""
    if not configured:
        return ()
    if isinstance(configured, str | bytes) or not isinstance(configured, list | tuple):
        raise ConfigurationError(KEY_SETTING, "expected a list of Fernet keys, newest first")
    keys = tuple(key.encode() if isinstance(key, str) else key for key in configured)
    for key in keys:
        _fernet(key)
    return keys


def _fernet(key: bytes) -> Fernet:
    """A Fernet for ``key``; :class:`ConfigurationError` if it is not a Fernet key."""
    try:
        return Fernet(key)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            KEY_SETTING,
            f"not a Fernet key ({exc}); make one with "
            "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'",
        ) from None


class SecretBox:
    """Seals and opens secrets with a list of Fernet keys, newest first."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigurationError(KEY_SETTING, "at least one key is needed")
        self._fernet = MultiFernet([_fernet(key) for key in keys])
        self._open = lru_cache(maxsize=OPENED_CACHE)(self._decrypt)

    @classmethod
    def from_config(cls, configured: object, secret_key: str | bytes | None) -> SecretBox:
        """The box for an app: its configured keys, or one derived from ``SECRET_KEY``."""
        keys = fernet_keys(configured)
        if keys:
            return cls(keys)
        if not secret_key:
            raise ConfigurationError(
                KEY_SETTING, "set it (or at least the app's SECRET_KEY) to encrypt secrets at rest"
            )
        logger.warning(
            "%s is not set: integrators' secrets are encrypted with a key derived from "
            "SECRET_KEY. Set your own keys so that SECRET_KEY can change independently.",
            KEY_SETTING,
        )
        raw = secret_key.encode() if isinstance(secret_key, str) else secret_key
        derived = hashlib.sha256(b"flask-kaizen-webhooks secrets at rest\0" + raw).digest()
        return cls([base64.urlsafe_b64encode(derived)])

    def seal(self, secret: str) -> str:
        """``secret`` encrypted under the newest key."""
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        """The secret inside ``sealed``; :class:`SecretUnreadable` if no key opens it."""
        return self._open(sealed)

    def _decrypt(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise SecretUnreadable(
                "A stored webhook secret cannot be decrypted with the configured keys; "
                f"was a key removed from {KEY_SETTING}?"
            ) from None

    def reseal(self, sealed: str) -> str:
        """``sealed`` encrypted again under the newest key."""
        try:
            return self._fernet.rotate(sealed.encode("ascii")).decode("ascii")
        except (InvalidToken, ValueError):
            raise SecretUnreadable("A stored webhook secret cannot be decrypted.") from None
