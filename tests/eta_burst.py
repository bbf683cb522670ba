"""Two Celery apps for the ETA-burst pitfall test: plain Celery, and nepi_dist's.

Both have exactly nepi_dist's settings and one task, ``burst.stamp``, that
records when it ran (the test revokes every one: none may run).  ``plain``
is a bare Celery app; ``nepi`` comes from :func:`nepi_dist.engine.celery_app.create_app`,
whose workers run the timer catch-up step.
Each is served by its own worker process (``celery -A tests.eta_burst:<name>
worker``): kombu's event loop is one per process, so the two must not share one.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from nepi_dist.engine.celery_app import REDIS_URL_ENV, create_app, settings

STAMP = "burst.stamp"
URL = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")

plain = Celery("burst-plain", set_as_current=False)
plain.conf.update(settings(URL))
nepi = create_app(URL)
_client = redis.Redis.from_url(URL, decode_responses=True)


def _stamp(key: str) -> None:
    _client.rpush(key, f"{time.time():.6f}")


for _app in (plain, nepi):
    _app.task(name=STAMP, shared=False, ignore_result=True)(_stamp)
