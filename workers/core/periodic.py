"""Background rounds of the API process (the sweeper, the callback sender) on a daemon thread."""

import logging
import threading
from collections.abc import Callable

from workers.core.outages import DATABASE, OUTAGES, outage_of

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class Periodic:
    """Runs ``work`` every ``interval_s`` until stopped. A round that raises is logged and the next one
    tries again; while a dependency is out (the job store, the disk), rounds back off, doubling their pause
    up to ``MAX_BACKOFF_S``, and the outage is logged once, not at every round."""

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
        pause = self.interval_s
        while True:
            try:
                self.work()
                OUTAGES.working(DATABASE)  # every round reads the job store
                pause = self.interval_s
            except Exception as error:
                outage = outage_of(error)
                if outage is None:
                    log.exception("%s: the round failed; the next one tries again", self.name)
                else:
                    OUTAGES.failed(outage, error, self.name)
                    pause = min(max(pause * 2, self.interval_s), max(MAX_BACKOFF_S, self.interval_s))
            if self._stop.wait(pause):
                return
