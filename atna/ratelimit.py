"""Warnings that cannot flood the log: the ARR logs each refused frame or payload, and a
misbehaving sender could send thousands a second (the counters keep the full tally)."""
from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """``warning`` passes at most ``per_minute`` messages a minute to ``logger``."""

    def __init__(self, logger: logging.Logger, per_minute: int = 30) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.window = 0
        self.count = 0

    def warning(self, fmt: str, *args) -> None:
        now = int(time.monotonic() // 60)
        if now != self.window:
            self.window, self.count = now, 0
        self.count += 1
        if self.count <= self.per_minute:
            self.logger.warning(fmt, *args)
        elif self.count == self.per_minute + 1:
            self.logger.warning("(more warnings this minute suppressed; see the counters)")
