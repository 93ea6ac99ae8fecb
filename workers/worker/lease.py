"""A lease renewed from a thread while long work runs: a job's attempt, or a unit of a fanned-out audit."""

import logging
import threading
from collections.abc import Callable

from workers.core.outages import OUTAGES, outage_of

log = logging.getLogger(__name__)


class Lease:
    """Calls ``renew`` every ``lease_s / 4`` (three renewals may fail before the lease lapses), so long
    work with no progress stays held.

    ``lost`` turns true when ``renew`` says the holder no longer holds it (it was presumed dead and
    settled): the work then stops at its next cancel check.
    """

    def __init__(self, renew: Callable[[], bool], lease_s: float, what: str) -> None:
        self.renew, self.what = renew, what
        self.interval_s = lease_s / 4
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{what}", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.lost = not self.renew()
            except Exception as error:  # the store is unreachable for now: the next renewal tries again
                outage = outage_of(error)
                if outage is None:
                    log.warning("%s: lease renewal failed", self.what, exc_info=True)
                else:
                    OUTAGES.failed(outage, error, f"lease of {self.what}")
            if self.lost:
                log.warning("%s: no longer held here; stopping", self.what)
                return
