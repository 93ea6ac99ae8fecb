"""Background rounds of the API process (the sweeper, the callback sender) on a daemon thread."""

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` every ``interval_s`` until stopped. A round that raises is logged and the next one
    tries again: the job store or the broker may be unreachable for a while."""

    def __init__(
        self, name: str, interval_s: float, work: Callable[[], object], stop_wait_s: float = 5
    ) -> None:
        self.name, self.interval_s, self.work, self.stop_wait_s = name, interval_s, work, stop_wait_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.stop_wait_s)

    def _run(self) -> None:
        while True:
            try:
                self.work()
            except Exception:
                log.exception("%s: the round failed; the next one tries again", self.name)
            if self._stop.wait(self.interval_s):
                return
