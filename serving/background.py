"""A callable run every few seconds in a daemon thread: the demo fleet's clock and the forecast refresh."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Periodic:
    """Runs ``task`` every ``interval`` seconds until :meth:`stop`; a failing run is logged, not fatal."""

    def __init__(self, task: Callable[[], object], name: str,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.task = task
        self.name = name
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.task()
            except Exception as exc:  # keep the service up; the caller decides how to report it
                logger.exception("%s failed", self.name)
                if self.on_error is not None:
                    self.on_error(exc)

    def start(self, interval: float) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
