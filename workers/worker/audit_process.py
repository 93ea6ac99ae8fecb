"""One job in a process of its own: ``python -m workers.worker.audit_process JOB_ID``, the service's
settings as one line of JSON on stdin.

A model is a program (TorchScript, torch.export) or drives one (onnxruntime): it may allocate without
bound, crash its runtime or hang. In a fresh interpreter, under an address-space limit set before torch is
imported, it takes down only its own audit; the embedded worker (``workers.worker.audit_supervisor``)
waits for it, kills it past the hard time limit and settles the job it left. Celery's pool children apply
the same ``limit_memory``. Torch-free to import: the engine is imported in ``main``, under the limit.
"""

import logging
import os
import resource
import signal
import sys
import threading

from workers.core import logs
from workers.core.config import Settings
from workers.core.storage import Storage
from workers.core.store.database import make_engine
from workers.core.store.jobs import JobStore

MODULE = "workers.worker.audit_process"
STDIN = 0
EXIT_STORE_FAILED = 3  # execute_job raised: the store or the disk failed, and the job's lease settles it


log = logging.getLogger(MODULE)  # not "__main__", as run with -m


def limit_memory(limit_mib: int) -> None:
    """Cap this process's address space (RLIMIT_AS): past it allocations fail (MemoryError, or a runtime
    aborts) instead of exhausting the host. The hard limit too, so code in a model cannot lift it. 0: no
    limit."""
    if limit_mib == 0:
        return
    limit = limit_mib * 1024**2
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # a lower limit set by the host stays
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str]) -> int:
    job_id = argv[0]
    settings = Settings.model_validate_json(_first_line(STDIN))  # the parent's, not the environment
    _end_with_parent()
    limit_memory(settings.audit_memory_limit_mib)
    logs.configure(settings.log_format)
    from workers.worker.job_runner import execute_job  # torch and the engine, under the limit

    store = JobStore(make_engine(settings.resolved_database_url))
    try:
        execute_job(job_id, store, Storage.from_settings(settings), settings)
    except Exception:  # as in the Celery task: the audit's own failures are recorded by execute_job
        log.exception("job %s: not recorded; its lease lapses and the sweeper settles it", job_id)
        return EXIT_STORE_FAILED
    finally:
        store.close()
        log.info("job %s: audit process peak memory %s", job_id, _peak_memory())
    return 0


def _first_line(fd: int) -> bytes:
    """Read byte by byte: nothing past the line is taken from the descriptor the watch reads next."""
    line = bytearray()
    while (byte := os.read(fd, 1)) not in (b"", b"\n"):
        line += byte
    return bytes(line)


def _end_with_parent() -> None:
    """The parent holds stdin open while it waits; end of file means it died, and an audit nobody
    supervises (time limit, settlement) must not go on: the process group is killed. The raw descriptor is
    read, so that this thread holds no lock of ``sys.stdin`` when the interpreter shuts down."""

    def watch() -> None:
        while os.read(STDIN, 4096):
            pass
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _peak_memory() -> str:
    """Virtual (what RLIMIT_AS counts) and resident peaks, for sizing ``audit_memory_limit_mib``."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return f"{fields['VmPeak'].strip()} virtual, {fields['VmHWM'].strip()} resident"


if __name__ == "__main__":
    status = main(sys.argv[1:])
    logging.shutdown()
    sys.stdout.flush()
    os._exit(status)  # the job is recorded and the store closed: torch's teardown (about 2 s) is skipped
