"""The Flask extension object: set-up, per-app state and the host's callbacks."""

from __future__ import annotations

import atexit
import logging
import os
import random
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from . import store
from .client import Client
from .clock import Clock
from .config import Settings
from .database import Database
from .dispatch.base import Dispatcher, NoDispatcher, hand_over_after_commit
from .dispatch.recorder import Recorder
from .dispatch.sync import DeliveryResult, FanOutLog, fan_out, write_logs
from .dispatch.threads import ThreadDispatcher
from .errors import ConfigurationError, DeliveryFailed, UnknownTopic, WebhooksError
from .logs import show_warnings
from .models import DeliveryMode
from .sealing import SecretBox
from .serving import StartAt, on_fork, start_at
from .signals import topic_signal
from .signing import encode_payload
from .topics import Mode, Topic, TopicRegistry

EXTENSION_KEY = "kaizen_webhooks"
#: Attempts a Celery worker process's client makes at once, at most.
CELERY_AT_ONCE = 1024

logger = logging.getLogger("flask_kaizen_webhooks")

UserLoader = Callable[[], Any]
PermissionChecker = Callable[[Any], bool]
OwnerKey = Callable[[Any], Any]
F = TypeVar("F", bound=Callable[..., Any])


class WebhooksState:
    """Everything the extension keeps for one app, in ``app.extensions["kaizen_webhooks"]``."""

    def __init__(
        self, app: Flask, extension: KaizenWebhooks, settings: Settings, database: Database
    ) -> None:
        self.extension = extension
        self.settings = settings
        self.database = database
        self.secrets = SecretBox.from_config(settings.secret_keys, app.secret_key)
        self.clock = Clock()
        self.rng = random.Random()
        #: The background engine's HTTP client; in a Celery worker, its tasks' (each task's
        #: thread waits for its own attempt: as many at once as the worker runs tasks).
        celery = settings.executor == "celery"
        self.client = self._client("engine", CELERY_AT_ONCE if celery else settings.workers)
        #: Synchronous topics (the host's logins) send on a client of their own (its thread and
        #: connections), which nothing an integrator can set off (a test, a redelivery) delays.
        self.sync_client = self._client("sync", settings.sync_workers)
        #: ``POST /test`` and ``flask webhooks test``.
        self.test_client = self._client("test", settings.sync_workers)
        self._app_ref = weakref.ref(app)
        self.sync_log = self._sync_log()
        self.dispatcher: Dispatcher = NoDispatcher()
        if settings.executor == "thread":
            self.dispatcher = ThreadDispatcher(app, self)
        elif settings.executor == "celery":
            from .dispatch.celery_executor import CeleryDispatcher

            self.dispatcher = CeleryDispatcher(app, self)
        #: When the engine starts in this process (set by ``init_app``).
        self.start_at = StartAt.FIRST_USE
        self._forked_in = os.getpid()

    def _client(self, name: str, max_active: int) -> Client:
        settings = self.settings
        return Client(
            max_response_bytes=settings.max_response_bytes,
            max_active=max_active,
            connect_timeout=settings.connect_timeout,
            policy=settings.address_policy,
            ca_bundle=settings.ca_bundle,
            proxy=settings.proxy,
            name=f"kaizen-webhooks-{name}",
        )

    def _sync_log(self) -> Recorder[FanOutLog]:
        """The thread that writes the delivery logs of synchronous fan-outs and tests."""

        def write(logs: Sequence[FanOutLog]) -> None:
            app = self._app_ref()
            if app is None:
                logger.warning("%d delivery logs not written: their app is gone", len(logs))
                return
            write_logs(app, self, logs)

        return Recorder(
            write, name="kaizen-webhooks-sync-log", lost="those calls are missing from the log"
        )

    @property
    def clients(self) -> tuple[Client, Client, Client]:
        """Every HTTP client of this app: the engine's, the sync topics', the tests'."""
        return self.client, self.sync_client, self.test_client

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the dispatcher and the sync threads and close connections; nothing is lost."""
        self.dispatcher.stop(timeout)
        for client in self.clients:
            client.close()
        self.sync_log.stop(timeout)

    def start_now(self, app: Flask) -> None:
        """Start the engine, the extension's tables made first (here, not in the engine's
        threads, where their creation would race the host's own ``db.create_all()``)."""
        try:
            with app.app_context():
                self.database.create_tables()
        except Exception:  # the database may not be reachable (or set up) yet
            logger.warning("The webhooks tables could not be made yet", exc_info=True)
        self.dispatcher.start()

    def after_fork(self) -> None:
        """In a forked child: nothing of the parent's threads, connections or locks is used
        again; a worker forked by a pre-forking server starts its own engine. Once per
        process, however many fork hooks call it."""
        if self._forked_in == os.getpid():
            return
        self._forked_in = os.getpid()
        self.database.after_fork()
        for client in self.clients:
            client.after_fork()
        self.sync_log = self._sync_log()
        self.dispatcher.after_fork()
        if self.start_at is StartAt.FORK:
            self.start_at = StartAt.NOW
            self.dispatcher.start()


#: The state of every app set up in this process, for what a fork must renew.
_STATES: weakref.WeakSet[WebhooksState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for state in list(_STATES):
        try:
            state.after_fork()
        except Exception:
            logger.exception("Could not renew the webhooks engine in a forked process")


on_fork(_after_fork_in_child)

#: Seconds the process's exit waits for the delivery logs still queued to be written.
EXIT_LOG_TIMEOUT = 5.0


@atexit.register
def _write_logs_at_exit() -> None:
    """At exit, the delivery logs of synchronous calls still queued are written."""
    for state in list(_STATES):
        try:
            state.sync_log.stop(EXIT_LOG_TIMEOUT)
        except Exception:
            logger.exception("Could not write the delivery logs still queued")


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
                "SECRET_KEY", "the app needs a SECRET_KEY to sign pagination cursors."
            )
        database = Database(app, settings, db if db is not None else self.db)
        state = WebhooksState(app, self, settings, database)
        app.extensions[EXTENSION_KEY] = state
        self._apps.add(app)
        for topic in self.topics:
            self._connect(topic.name, app)
        from .api import blueprint
        from .cli import webhooks_cli

        app.register_blueprint(blueprint, url_prefix=settings.url_prefix)
        app.cli.add_command(webhooks_cli)
        # Pending work (retries, or what a previous process left) resumes as soon as this
        # process serves the app (see :mod:`.serving`), or else with the first request.
        app.before_request(state.dispatcher.autostart)
        state.start_at = start_at(app, settings.autostart)
        _STATES.add(state)
        if state.start_at is StartAt.NOW:
            state.start_now(app)

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
        target_app = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        state = get_state(target_app)
        found = self.topics.get(topic)
        if found is None:
            raise UnknownTopic(topic, self.topics.names())
        document, encoded = _checked_payload(payload, state.settings.max_payload_bytes)
        if found.mode is Mode.SYNC:
            results = self._send_now(target_app, state, topic, document)
            if raise_on_error and not all(result.ok for result in results):
                raise DeliveryFailed(topic, results)
            return results
        return enqueue(state, topic, encoded)

    def _send_now(
        self, app: Flask, state: WebhooksState, topic: str, document: Mapping[str, Any]
    ) -> list[DeliveryResult]:
        try:
            with state.database.independent_session() as session:
                targets = store.active_targets(session, topic=topic)
        except Exception:
            logger.exception("Could not read the registrations of %s; nothing was sent", topic)
            return []
        try:
            return fan_out(
                app,
                state,
                topic=topic,
                document=document,
                targets=targets,
                mode=DeliveryMode.SYNC,
                timeout=state.settings.sync_timeout,
                client=state.sync_client,
            )
        except Exception as exc:  # a defect: the host's request goes on all the same
            logger.exception("Sending the %s webhooks failed unexpectedly", topic)
            return [DeliveryResult.failed(target, f"internal error: {exc!r}") for target in targets]

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

    # State -------------------------------------------------------------------------------------

    @staticmethod
    def state(app: Flask | None = None) -> WebhooksState:
        """The extension's state for ``app`` (default: the current app)."""
        return get_state(app)


def enqueue(state: WebhooksState, topic: str, document_json: str) -> list[str]:
    """Write the outbox rows of an event (its JSON, checked) for every active registration of
    ``topic``; hand them to the dispatcher once they are committed. The ids of the deliveries
    come back.

    Inside a transaction of the host's session the event is written as one row, which commits
    or rolls back with the host's change, and the dispatcher fans it out into deliveries after
    the commit; otherwise (and always with the embedded database) the deliveries are written
    and committed here.
    """
    database = state.database
    session = database.session
    owned = database.embedded or not session.in_transaction()
    connection = session.connection()
    recipients = store.active_recipients(connection, topic=topic)
    now = state.clock.now()
    if owned:
        ids = store.add_deliveries(
            connection,
            recipients=recipients,
            topic=topic,
            mode=DeliveryMode.ASYNC,
            document_json=document_json,
            now=now,
        )
        session.commit()
        state.dispatcher.submit(ids)
        return ids
    ids = store.add_event(
        connection, recipients=recipients, topic=topic, document_json=document_json, now=now
    )
    if ids:
        hand_over_after_commit(session, state.dispatcher, ids)
    return ids


def _checked_payload(payload: Mapping[str, Any], max_bytes: int) -> tuple[dict[str, Any], str]:
    """The payload as a document and as its JSON, or a :class:`WebhooksError` saying why not."""
    if not isinstance(payload, Mapping):
        raise WebhooksError(f"The payload must be a mapping (a JSON object), not {type(payload)}.")
    if "webhook_request_id" in payload:
        raise WebhooksError(
            "The payload must not contain 'webhook_request_id'; it is set per delivery."
        )
    document = dict(payload)
    try:
        encoded = encode_payload(document)
    except (TypeError, ValueError, RecursionError) as exc:
        raise WebhooksError(f"The payload cannot be sent as JSON: {exc}") from None
    if len(encoded) > max_bytes:
        raise WebhooksError(
            f"The payload is {len(encoded)} bytes of JSON, over KAIZEN_WEBHOOKS_MAX_PAYLOAD_BYTES "
            f"({max_bytes}); send a smaller document (receivers can fetch the rest)."
        )
    return document, encoded.decode()


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
