"""Prometheus metrics at ``/metrics``: HTTP traffic (prometheus-fastapi-instrumentator) and the service's
own numbers.

Jobs by state and audit durations are read from the job store when scraped, so every API process reports
the same numbers whichever worker ran a job; queue depth comes from the dispatcher (the broker's queues,
or the embedded worker's); upload bytes are counted by the process that received them. Each app has a
registry of its own (several apps may live in one test process).
"""

import contextlib
from collections.abc import Iterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator

from workers.core.store.jobs import JobStore
from workers.core.store.states import JobState
from workers.worker.dispatch import Dispatcher, DispatchError

DURATION_BUCKETS_S = (10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


class ServiceMetrics:
    def __init__(self, store: JobStore, dispatcher: Dispatcher) -> None:
        self.registry = CollectorRegistry()
        self.upload_bytes = Counter(
            "saliency_upload_bytes",
            "Bytes of uploads received by this process, stored or refused",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, dispatcher))

    def install(self, app: FastAPI) -> None:
        Instrumentator(registry=self.registry, excluded_handlers=["/metrics"]).instrument(app).expose(
            app, include_in_schema=False
        )


class _StoreCollector(Collector):
    def __init__(self, store: JobStore, dispatcher: Dispatcher) -> None:
        self.store, self.dispatcher = store, dispatcher

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("saliency_jobs", "Audit jobs in the job store, by state", labels=["state"])
        counts = self.store.jobs.count_jobs_by_state()
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("saliency_queue_depth", "Jobs waiting in a work queue", labels=["queue"])
        with contextlib.suppress(DispatchError):  # the broker is out: no sample, the rest still scraped
            for queue, waiting in self.dispatcher.queue_depth().items():
                depth.add_metric([queue], waiting)
        yield depth
        durations = sorted(self.store.jobs.audit_durations_s())
        buckets = [(str(bound), sum(1 for d in durations if d <= bound)) for bound in DURATION_BUCKETS_S]
        histogram = HistogramMetricFamily(
            "saliency_audit_duration_seconds", "Running time of the succeeded audits the store keeps"
        )
        histogram.add_metric([], [*buckets, ("+Inf", len(durations))], sum_value=sum(durations))
        yield histogram
