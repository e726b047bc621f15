"""Flask's Celery pattern, as a host sets it up for ``KAIZEN_WEBHOOKS_EXECUTOR = "celery"``
(see ``docs/deployment.rst``): call :func:`celery_init_app` before ``KaizenWebhooks(app)``.
Needs ``pip install flask-kaizen-webhooks[celery]``."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from flask import Flask


def celery_init_app(app: Flask) -> Celery:
    """A Celery app configured from ``app.config["CELERY"]`` whose tasks run inside the app's
    context, stored as ``app.extensions["celery"]``."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
