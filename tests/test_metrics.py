"""/metrics keeps answering while the broker is out: the queue depth has no sample, the rest is scraped."""

from service.api.metrics import _StoreCollector
from tests.test_sweeper import RecordingDispatcher
from workers.core.store.jobs import JobStore
from workers.worker.dispatch import DispatchError


class _BrokerDown(RecordingDispatcher):
    def queue_depth(self) -> dict[str, int]:
        raise DispatchError("the broker is unreachable (test)")


def test_a_broker_outage_leaves_the_queue_depth_without_samples_and_the_job_counts_scraped(
    store: JobStore,
) -> None:
    store.jobs.create_job("local", {"model": "m"}, "hash", None, "cpu")
    families = {family.name: family for family in _StoreCollector(store, _BrokerDown()).collect()}
    assert families["saliency_queue_depth"].samples == []
    queued = [s.value for s in families["saliency_jobs"].samples if s.labels["state"] == "queued"]
    assert queued == [1]
