"""Which failures are passing outages (answered 503/507, retried) and which are the code's own faults."""

import errno
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from workers.core.outages import DATABASE, DISK, outage_of
from workers.core.storage import Storage


def _raised(action) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        action()
    except Exception as error:
        return error
    raise AssertionError("nothing was raised")


def test_a_wrong_statement_is_not_an_outage_but_a_busy_or_unreachable_store_is() -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as connection:
        wrong = _raised(lambda: connection.execute(text("select missing from nowhere")))
    assert outage_of(wrong) is None  # a missing table answers 500: retrying would not help
    unreachable = _raised(lambda: create_engine("postgresql+psycopg://x@127.0.0.1:1/x").connect())
    assert outage_of(unreachable) == DATABASE


def test_a_full_disk_is_found_in_the_chain_unless_the_code_suppressed_it() -> None:
    def wrapped() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise RuntimeError("the archive could not be written") from error

    def suppressed() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise KeyError("another fault") from None

    assert outage_of(_raised(wrapped)) == DISK
    assert outage_of(_raised(suppressed)) is None


def test_an_upload_whose_last_write_met_a_full_disk_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(tmp_path)
    storage.prepare()
    upload = storage.new_upload(1000, "model.onnx")
    upload.write(b"partial")

    class FullDisk:
        """The upload's file whose closing flushes its buffer onto a full disk."""

        def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
            self.real = real

        def close(self) -> None:
            self.real.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upload, "_file", FullDisk(upload._file))
    upload.discard()
    assert not upload.path.parent.exists()


def test_a_job_store_blip_does_not_stop_a_running_audit_but_a_code_fault_does() -> None:
    from workers.engine.audit import Progress
    from workers.worker.job_runner import Throttle
    from workers.worker.lease import Lease

    blip = _raised(lambda: create_engine("postgresql+psycopg://x@127.0.0.1:1/x").connect())

    class Store:
        failure: BaseException = blip

        def report_progress(self, *_: object) -> None:
            raise self.failure

        def cancel_requested(self, _: str) -> bool:
            raise self.failure

    store = Store()
    lease = Lease(lambda: True, 60, "job")
    throttle = Throttle(store, "job", 1, lease)  # type: ignore[arg-type]
    throttle.progress(Progress("gradient: trained model", 1, 9))
    assert throttle.cancel_requested() is False
    store.failure = KeyError("a fault of the code")
    with pytest.raises(KeyError):
        throttle.progress(Progress("gradient: cascading", 2, 9))
