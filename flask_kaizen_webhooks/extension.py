"""The Flask extension object: set-up, per-app state and the host's callbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from .config import Settings
from .database import Database
from .errors import ConfigurationError, WebhooksError
from .topics import Mode, Topic, TopicRegistry

EXTENSION_KEY = "kaizen_webhooks"

logger = logging.getLogger("flask_kaizen_webhooks")

UserLoader = Callable[[], Any]
PermissionChecker = Callable[[Any], bool]
OwnerKey = Callable[[Any], Any]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class WebhooksState:
    """Everything the extension keeps for one app, in ``app.extensions["kaizen_webhooks"]``."""

    extension: KaizenWebhooks
    settings: Settings
    database: Database


class KaizenWebhooks:
    """Outgoing webhooks for a Flask app.

    ``KaizenWebhooks(app, db=db)`` at once, or ``webhooks = KaizenWebhooks(db=db)`` and later
    ``webhooks.init_app(app)`` for application factories. With a Flask-SQLAlchemy ``db`` the
    extension's tables live in the host's database and its writes join the host's session;
    without one it keeps an embedded SQLite database (``KAIZEN_WEBHOOKS_DATABASE_URI``).

    The registration API refuses every request until the host sets :meth:`user_loader` and
    :meth:`permission_checker`.
    """

    def __init__(self, app: Flask | None = None, *, db: SQLAlchemy | None = None) -> None:
        self.db = db
        self.topics = TopicRegistry()
        self.user_loader_callback: UserLoader | None = None
        self.permission_checker_callback: PermissionChecker | None = None
        self.owner_key_callback: OwnerKey | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, db: SQLAlchemy | None = None) -> None:
        """Set the extension up for ``app``: read the config, open storage, add the API.

        Raises :class:`ConfigurationError` for invalid ``KAIZEN_WEBHOOKS_*`` settings and
        :class:`RuntimeError` when ``app`` is already set up.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "flask-kaizen-webhooks is already set up for this app; call init_app once per app."
            )
        settings = Settings.from_app(app)
        if not app.secret_key:
            raise ConfigurationError(
                "SECRET_KEY", "the app needs a SECRET_KEY to sign pagination cursors."
            )
        database = Database(app, settings, db if db is not None else self.db)
        app.extensions[EXTENSION_KEY] = WebhooksState(self, settings, database)

        from .api import blueprint
        from .cli import webhooks_cli

        app.register_blueprint(blueprint, url_prefix=settings.url_prefix)
        app.cli.add_command(webhooks_cli)

    # Host callbacks ----------------------------------------------------------------------------

    def user_loader(self, callback: F) -> F:
        """Decorate the function returning the API user of the current request, or None (401)."""
        self.user_loader_callback = callback
        return callback

    def permission_checker(self, callback: F) -> F:
        """Decorate the function saying whether a user may manage web hooks (False: 403)."""
        self.permission_checker_callback = callback
        return callback

    def owner_key(self, callback: F) -> F:
        """Decorate the function mapping a user to the key their registrations are scoped by.

        By default the key is the user's ``id`` attribute, or the user value itself when the
        loader returns a plain id (a string or an integer).
        """
        self.owner_key_callback = callback
        return callback

    def owner_of(self, user: Any) -> str:
        """The owner key of ``user`` as stored with their registrations."""
        if self.owner_key_callback is not None:
            key = self.owner_key_callback(user)
        elif isinstance(user, str | int) and not isinstance(user, bool):
            key = user
        else:
            key = getattr(user, "id", None)
        if key is None or key == "":
            raise WebhooksError(
                f"Cannot tell the owner of user {type(user).__name__}: give it an 'id' "
                "attribute or decorate a function with @webhooks.owner_key."
            )
        return str(key)

    # Topics ------------------------------------------------------------------------------------

    def add_topic(
        self,
        name: str,
        mode: Mode | str,
        description: str,
        sample_payload: Mapping[str, Any] | None = None,
    ) -> Topic:
        """Add a topic of the host's own; ``mode`` is ``"sync"`` or ``"async"``."""
        return self.topics.add(Topic(name, Mode(mode), description, dict(sample_payload or {})))

    # State -------------------------------------------------------------------------------------

    @staticmethod
    def state(app: Flask | None = None) -> WebhooksState:
        """The extension's state for ``app`` (default: the current app)."""
        return get_state(app)


def get_state(app: Flask | None = None) -> WebhooksState:
    """The :class:`WebhooksState` of ``app`` or of the current app."""
    target = app if app is not None else current_app
    try:
        state: WebhooksState = target.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            "flask-kaizen-webhooks is not set up for this app; call KaizenWebhooks(app) first."
        ) from None
    return state
