"""What the extension keeps for one app, in ``app.extensions["kaizen_webhooks"]``: its settings,
database, HTTP clients and engine, built once by ``init_app`` and read by the API, the CLI and
the host's callbacks."""

from __future__ import annotations

import atexit
import logging
import os
import random
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, current_app

from .clock import Clock
from .config import ExecutorKind, Settings
from .delivery.celery_executor import CeleryExecutor
from .delivery.client import Client
from .delivery.context import DeliveryContext
from .delivery.engine import ThreadExecutor
from .delivery.executor import Executor, NoExecutor
from .delivery.recorder import Recorder
from .delivery.sync import DeliveryResult, FanOutLog, fan_out, write_logs
from .errors import WebhooksError
from .metrics import NO_METRICS, metrics_for
from .recording import Recordings
from .sealing import SecretBox
from .serving import StartAt, on_fork
from .storage.database import Database
from .storage.rows import Target
from .storage.tables import TEST_MODE
from .topics import Mode, Topic, TopicRegistry

EXTENSION_KEY = "kaizen_webhooks"
#: Seconds the process's exit waits for the delivery logs still queued to be written.
EXIT_LOG_TIMEOUT = 5.0

logger = logging.getLogger("flask_kaizen_webhooks")

UserLoader = Callable[[], Any]
PermissionChecker = Callable[[Any], bool]
OwnerKey = Callable[[Any], Any]


class HostCallbacks:
    """The host's answers to who is calling the API and what they may do, set with the
    extension's decorators."""

    def __init__(self) -> None:
        self.user_loader: UserLoader | None = None
        self.permission_checker: PermissionChecker | None = None
        self.owner_key: OwnerKey | None = None

    def owner_of(self, user: Any) -> str:
        """The owner key of ``user`` as stored with their registrations."""
        if self.owner_key is not None:
            key = self.owner_key(user)
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


class WebhooksState:
    """Everything the extension keeps for one app."""

    def __init__(
        self,
        app: Flask,
        settings: Settings,
        database: Database,
        *,
        topics: TopicRegistry,
        callbacks: HostCallbacks,
    ) -> None:
        self.topics = topics
        self.callbacks = callbacks
        secrets = SecretBox.from_config(settings.secret_keys, app.secret_key)
        self.context = DeliveryContext(
            settings,
            database,
            secrets,
            Clock(),
            random.Random(),
            metrics_for(settings.metrics, per_registration=settings.metrics_per_registration),
        )
        #: The background engine's HTTP client (in a Celery worker process too).
        self.client = self._client("engine", settings.workers)
        #: Synchronous topics (the host's logins) send on a client of their own (its thread and
        #: connections), which nothing an integrator can set off (a test, a redelivery) delays.
        self.sync_client = self._client("sync", settings.sync_workers)
        #: ``POST /test`` and ``flask webhooks test``.
        self.test_client = self._client("test", settings.sync_workers)
        self._app_ref = weakref.ref(app)
        self.sync_log = self._sync_log()
        self.executor = self._executor(app)
        #: The recordings open (see :meth:`KaizenWebhooks.recording`): nothing is sent then.
        self.recordings = Recordings()
        #: When the engine starts in this process (set by ``init_app``).
        self.start_at = StartAt.FIRST_USE
        self._forked_in = os.getpid()

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @property
    def database(self) -> Database:
        return self.context.database

    @property
    def secrets(self) -> SecretBox:
        return self.context.secrets

    @property
    def clock(self) -> Clock:
        """The clock every engine of this app reads (tests replace it)."""
        return self.context.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self.context.clock = clock

    @property
    def clients(self) -> tuple[Client, Client, Client]:
        """Every HTTP client of this app: the engine's, the sync topics', the tests'."""
        return self.client, self.sync_client, self.test_client

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
            count_attempts=None
            if self.context.metrics is NO_METRICS
            else self.context.metrics.in_flight,
        )

    def _executor(self, app: Flask) -> Executor:
        executor = self.settings.executor
        if executor == ExecutorKind.THREAD:
            return ThreadExecutor(app, self.context, self.client)
        if executor == ExecutorKind.CELERY:
            return CeleryExecutor(app, self.context, self.client)
        return NoExecutor()

    def _sync_log(self) -> Recorder[FanOutLog]:
        """The thread that writes the delivery logs of synchronous fan-outs and tests."""

        def write(logs: Sequence[FanOutLog]) -> None:
            app = self._app_ref()
            if app is None:
                logger.warning("%d delivery logs not written: their app is gone", len(logs))
                return
            write_logs(app, self.context, logs)

        return Recorder(
            write, name="kaizen-webhooks-sync-log", lost="those calls are missing from the log"
        )

    def send_now(
        self, app: Flask, topic: str, document: dict[str, Any], targets: Sequence[Target]
    ) -> list[DeliveryResult]:
        """Send a synchronous topic's ``document`` to ``targets`` while the caller waits."""
        return fan_out(
            app,
            self.context,
            topic=topic,
            document=document,
            targets=targets,
            mode=Mode.SYNC,
            timeout=self.settings.sync_timeout,
            client=self.sync_client,
            log=self.sync_log,
        )

    def send_test(
        self,
        app: Flask,
        topic: Topic,
        targets: Sequence[Target],
        *,
        timeout: float | None = None,
    ) -> list[DeliveryResult]:
        """Send ``topic``'s sample payload to ``targets`` now, on the tests' client, within
        ``timeout`` seconds (default: the topic's own time limit); the answers come back and
        are logged at once."""
        settings = self.settings
        if timeout is None:
            synchronous = topic.mode is Mode.SYNC
            timeout = settings.sync_timeout if synchronous else settings.async_timeout
        return fan_out(
            app,
            self.context,
            topic=topic.name,
            document=dict(topic.sample_payload),
            targets=targets,
            mode=TEST_MODE,
            timeout=timeout,
            client=self.test_client,
            log=self.sync_log,
        )

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the executor and the sync threads and close connections; nothing is lost."""
        self.executor.stop(timeout)
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
        self.executor.start()

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
        self.executor.after_fork()
        if self.start_at is StartAt.FORK:
            self.start_at = StartAt.NOW
            self.executor.start()


#: The state of every app set up in this process, for what a fork must renew.
_STATES: weakref.WeakSet[WebhooksState] = weakref.WeakSet()


def keep(state: WebhooksState) -> None:
    """Renew ``state`` after a fork and write its queued logs at exit."""
    _STATES.add(state)


def _after_fork_in_child() -> None:
    for state in list(_STATES):
        try:
            state.after_fork()
        except Exception:
            logger.exception("Could not renew the webhooks engine in a forked process")


on_fork(_after_fork_in_child)


@atexit.register
def _write_logs_at_exit() -> None:
    """At exit, the delivery logs of synchronous calls still queued are written."""
    for state in list(_STATES):
        try:
            state.sync_log.stop(EXIT_LOG_TIMEOUT)
        except Exception:
            logger.exception("Could not write the delivery logs still queued")


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
