"""The Flask extension object: set-up, the host's callbacks, topics and sending."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import Flask, Response, current_app
from flask_sqlalchemy import SQLAlchemy

from .cli import webhooks_cli
from .config import Settings
from .delivery.publish import checked_payload, enqueue
from .delivery.sync import DeliveryResult
from .errors import ConfigurationError, DeliveryFailed, UnknownTopic
from .logs import show_warnings
from .portal import PortalLink, make_link
from .portal.pages import blueprint as portal_blueprint
from .recording import SentWebhook
from .serving import StartAt, start_at
from .signals import topic_signal
from .state import (
    EXTENSION_KEY,
    HostCallbacks,
    OwnerKey,
    PermissionChecker,
    UserLoader,
    WebhooksState,
    get_state,
    keep,
)
from .storage import outbox
from .storage.database import Database
from .topics import Mode, Topic, TopicRegistry
from .web.api import blueprint
from .web.metrics import MetricsServer, metrics_view, serve

logger = logging.getLogger("flask_kaizen_webhooks")

F = TypeVar("F", bound=Callable[..., Any])


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
        self.callbacks = HostCallbacks()
        self._receivers: dict[str, Callable[..., Any]] = {}
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
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
        show_warnings()  # before anything logs, such as the SECRET_KEYS warning
        settings = Settings.from_app(app)
        if not app.secret_key:
            raise ConfigurationError(
                "SECRET_KEY",
                "the app needs a SECRET_KEY to sign pagination cursors and portal links.",
            )
        database = Database(app, settings, db if db is not None else self.db)
        state = WebhooksState(app, settings, database, topics=self.topics, callbacks=self.callbacks)
        app.extensions[EXTENSION_KEY] = state
        self._apps.add(app)
        for topic in self.topics:
            self._connect(topic.name, app)
        app.register_blueprint(blueprint, url_prefix=settings.url_prefix)
        if settings.portal:
            app.register_blueprint(portal_blueprint, url_prefix=settings.url_prefix + "/portal")
        app.cli.add_command(webhooks_cli)
        # Pending work (retries, or what a previous process left) resumes as soon as this
        # process serves the app (see :mod:`.serving`), or else with the first request.
        app.before_request(state.executor.autostart)
        state.start_at = start_at(app, settings.autostart)
        keep(state)
        if state.start_at is StartAt.NOW:
            state.start_now(app)

    # Host callbacks ----------------------------------------------------------------------------

    @property
    def user_loader_callback(self) -> UserLoader | None:
        """The function set with :meth:`user_loader`."""
        return self.callbacks.user_loader

    @user_loader_callback.setter
    def user_loader_callback(self, callback: UserLoader | None) -> None:
        self.callbacks.user_loader = callback

    @property
    def permission_checker_callback(self) -> PermissionChecker | None:
        """The function set with :meth:`permission_checker`."""
        return self.callbacks.permission_checker

    @permission_checker_callback.setter
    def permission_checker_callback(self, callback: PermissionChecker | None) -> None:
        self.callbacks.permission_checker = callback

    @property
    def owner_key_callback(self) -> OwnerKey | None:
        """The function set with :meth:`owner_key`."""
        return self.callbacks.owner_key

    @owner_key_callback.setter
    def owner_key_callback(self, callback: OwnerKey | None) -> None:
        self.callbacks.owner_key = callback

    def user_loader(self, callback: F) -> F:
        """Decorate the function returning the API user of the current request, or None (401)."""
        self.callbacks.user_loader = callback
        return callback

    def permission_checker(self, callback: F) -> F:
        """Decorate the function saying whether a user may manage web hooks (False: 403)."""
        self.callbacks.permission_checker = callback
        return callback

    def owner_key(self, callback: F) -> F:
        """Decorate the function mapping a user to the key their registrations are scoped by.

        By default the key is the user's ``id`` attribute, or the user value itself when the
        loader returns a plain id (a string or an integer).
        """
        self.callbacks.owner_key = callback
        return callback

    def owner_of(self, user: Any) -> str:
        """The owner key of ``user`` as stored with their registrations."""
        return self.callbacks.owner_of(user)

    def portal_link(
        self,
        owner: str,
        *,
        expires_in: float | None = None,
        base_url: str | None = None,
        app: Flask | None = None,
    ) -> PortalLink:
        """A link opening the integrator portal for the owner key ``owner`` (a user's is
        ``webhooks.owner_of(user)``), valid for ``expires_in`` seconds (default: an hour,
        ``KAIZEN_WEBHOOKS_PORTAL_LINK_SECONDS``). Its address starts with ``base_url``, or
        ``KAIZEN_WEBHOOKS_PORTAL_BASE_URL``, or the current request's."""
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        return make_link(target, owner, expires_in=expires_in, base_url=base_url)

    # Sending -----------------------------------------------------------------------------------

    def trigger(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        app: Flask | None = None,
        raise_on_error: bool = False,
    ) -> list[DeliveryResult] | list[str]:
        """Send ``payload`` to every active registration of ``topic``.

        For a synchronous topic, returns a :class:`DeliveryResult` per registration once all
        answered or the deadline passed; a failing receiver never raises unless
        ``raise_on_error`` is set (then :class:`DeliveryFailed` carries the results). For an
        asynchronous topic, writes the outbox (inside a transaction of the host's session one
        row for the event, which commits with it; otherwise one row per registration, committed
        at once) and returns the ids of the deliveries, one per registration; they are sent
        after the commit.
        """
        started = time.perf_counter()
        target_app = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        state = get_state(target_app)
        found = self.topics.get(topic)
        if found is None:
            raise UnknownTopic(topic, self.topics.names())
        document, encoded = checked_payload(payload, state.settings.max_payload_bytes)
        recordings = state.recordings.listening()
        if recordings:
            return state.recordings.capture(recordings, state.database, found, encoded)
        if found.mode is Mode.ASYNC:
            ids = enqueue(state.context, state.executor, topic, encoded)
            state.context.metrics.enqueue_took(topic, time.perf_counter() - started)
            return ids
        results = self._send_now(target_app, state, topic, document)
        if raise_on_error and not all(result.ok for result in results):
            raise DeliveryFailed(topic, results)
        return results

    def _send_now(
        self, app: Flask, state: WebhooksState, topic: str, document: dict[str, Any]
    ) -> list[DeliveryResult]:
        try:
            with state.database.independent_session() as session:
                targets = outbox.active_targets(session, topic=topic)
        except Exception:
            logger.exception("Could not read the registrations of %s; nothing was sent", topic)
            return []
        try:
            return state.send_now(app, topic, document, targets)
        except Exception as exc:  # a defect: the host's request goes on all the same
            logger.exception("Sending the %s webhooks failed unexpectedly", topic)
            return [
                DeliveryResult.failed(target, f"internal error: {exc!r}")
                for target in targets
                if target.url is not None  # a pull-only one is never waited for
            ]

    @contextmanager
    def recording(self, app: Flask | None = None) -> Iterator[list[SentWebhook]]:
        """Capture what would be sent instead of sending it, for the host's own tests::

            with webhooks.recording() as sent:
                client.post("/profile", json={...})
            assert [webhook.topic for webhook in sent] == ["profile_updated"]

        Inside the block every webhook of ``app`` (default: the current app), fired by a signal
        or by :meth:`trigger`, is recorded as a
        :class:`~flask_kaizen_webhooks.recording.SentWebhook` (its topic, registration, owner,
        URL, None for a pull-only one, and payload), one per active registration, and nothing
        goes over the network or into the outbox. A synchronous topic's call gets a successful
        result per registration with no answer; an asynchronous one the ids its deliveries
        would have.
        """
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        with get_state(target).recordings.open() as sent:
            yield sent

    def start(self, app: Flask | None = None) -> None:
        """Start delivering in this process now (see ``KAIZEN_WEBHOOKS_AUTOSTART`` for when it
        starts on its own)."""
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        get_state(target).start_now(target)

    def shutdown(self, app: Flask | None = None, timeout: float = 30.0) -> None:
        """Stop delivering for ``app`` (default: the current app) without losing anything."""
        get_state(app).shutdown(timeout)

    # Topics ------------------------------------------------------------------------------------

    def add_topic(
        self,
        name: str,
        mode: Mode | str,
        description: str,
        sample_payload: Mapping[str, Any] | None = None,
    ) -> Topic:
        """Add a topic of the host's own; ``mode`` is ``"sync"`` or ``"async"``."""
        topic = self.topics.add(Topic(name, Mode(mode), description, dict(sample_payload or {})))
        self._connect(topic.name)
        return topic

    def _connect(self, topic: str, app: Flask | None = None) -> None:
        """Deliver ``topic`` when ``app`` (default: every app set up so far) sends its signal."""
        receiver = self._receivers.get(topic)
        if receiver is None:

            def receiver(sender: Flask, **kwargs: Any) -> list[DeliveryResult] | list[str]:
                return self.trigger(topic, kwargs["payload"], app=sender)

            self._receivers[topic] = receiver
        for target in [app] if app is not None else list(self._apps):
            # Held as long as the app lives: blinker drops it when the app is collected.
            topic_signal(topic).connect(receiver, sender=target, weak=False)

    @property
    def metrics_view(self) -> Callable[[], Response]:
        """The view of the Prometheus metrics, for the host to mount where it likes::

            app.add_url_rule("/metrics", view_func=webhooks.metrics_view)

        It shows what this process counted (every process's, in prometheus-client's
        multiprocess mode) and gauges read from the database at each scrape. Without
        prometheus-client (the ``[metrics]`` extra) it answers 501, saying what to install.
        """
        return metrics_view

    def serve_metrics(
        self, port: int, *, host: str = "127.0.0.1", app: Flask | None = None
    ) -> MetricsServer:
        """Serve the metrics of ``app`` (default: the current app) at
        ``http://host:port/metrics`` from a thread of this process, for processes that serve no
        web requests (what ``flask webhooks worker --metrics-port`` runs; a Celery worker's main
        process can call it when it is ready). ``port`` 0 picks a free one: the server's
        ``server_port`` tells which; ``shutdown()`` stops it. Raises
        :class:`MetricsUnavailable` without prometheus-client, :class:`OSError` if the port is
        taken or ``PROMETHEUS_MULTIPROC_DIR`` is not a directory."""
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        return serve(target, port, host)

    # State -------------------------------------------------------------------------------------

    @staticmethod
    def state(app: Flask | None = None) -> WebhooksState:
        """The extension's state for ``app`` (default: the current app)."""
        return get_state(app)
