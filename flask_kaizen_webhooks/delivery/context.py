"""What the engines need to send and record, handed to them by the state that builds them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..clock import Clock
from ..config import Settings
from ..metrics import NO_METRICS, Metrics
from ..sealing import SecretBox
from ..storage.database import Database


@dataclass(slots=True)
class DeliveryContext:
    """One app's settings, database, secrets, clock, randomness (for the retries' jitter) and
    metrics.

    The engines share this one object with the app's state, so a clock replaced there (as
    tests do) is the clock every engine reads.
    """

    settings: Settings
    database: Database
    secrets: SecretBox
    clock: Clock = field(default_factory=Clock)
    rng: random.Random = field(default_factory=random.Random)
    metrics: Metrics = NO_METRICS
