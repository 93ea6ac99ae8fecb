"""The units of a fanned-out audit in the job store, on SQLite and PostgreSQL through the real migration:
one holder at a time, a lapsed holder loses its unit, a result counts once (docs/decisions/0026)."""

from workers.store.jobs import JobStore
from workers.store.units import UnitStore, holder_token

KEYS = ["cascading.draw-0.gradient", "cascading.draw-0.gradcam"]


def test_two_claimants_share_the_units_and_none_is_taken_twice(store: JobStore) -> None:
    units = UnitStore(store.engine)
    units.add("job", KEYS)
    first, second = holder_token("coordinator"), holder_token("worker")
    assert units.claim("job", KEYS, first, lease_s=60) == KEYS[0]
    assert units.claim("job", KEYS, second, lease_s=60) == KEYS[1]
    assert units.claim("job", KEYS, first, lease_s=60) is None  # both held, leases fresh
    assert units.finish("job", KEYS[1], second)
    assert units.done("job", KEYS) == {KEYS[1]}
    assert not units.finish("job", KEYS[1], second)  # done once


def test_a_unit_whose_holder_stopped_renewing_goes_to_the_next_claimant(store: JobStore) -> None:
    units = UnitStore(store.engine)
    units.add("job", KEYS[:1])
    dead, alive = holder_token("worker"), holder_token("coordinator")
    assert units.claim("job", KEYS, dead, lease_s=60) == KEYS[0]
    assert units.claim("job", KEYS, alive, lease_s=60) is None
    assert units.claim("job", KEYS, alive, lease_s=0) == KEYS[0]  # the lease lapsed
    assert not units.heartbeat("job", KEYS[0], dead)  # the old holder hears it lost the unit
    assert not units.finish("job", KEYS[0], dead)  # and its late result does not count
    assert units.holders("job")[KEYS[0]] == ("running", alive)
    assert units.finish("job", KEYS[0], alive)


def test_a_released_unit_is_claimed_again_and_a_new_attempt_keeps_finished_units(store: JobStore) -> None:
    units = UnitStore(store.engine)
    units.add("job", KEYS)
    holder = holder_token("worker")
    assert units.claim("job", KEYS, holder, lease_s=60) == KEYS[0]
    units.release("job", KEYS[0], holder)
    assert units.holders("job")[KEYS[0]] == ("pending", None)
    assert units.claim("job", KEYS, holder, lease_s=60) == KEYS[0]
    assert units.finish("job", KEYS[0], holder)
    units.add("job", KEYS)  # planned again by the job's next attempt
    assert units.done("job", KEYS) == {KEYS[0]}
    units.remove("job")
    assert units.holders("job") == {}
