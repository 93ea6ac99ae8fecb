"""The units of a fanned-out audit in the job store, on SQLite and PostgreSQL through the real migration:
one holder at a time, a lapsed holder loses its unit, a result counts once (docs/decisions/0026)."""

from workers.core.store.jobs import JobStore
from workers.core.store.units import PlanId, UnitStore, holder_token

KEYS = ["cascading.draw-0.gradient", "cascading.draw-0.gradcam"]
PLAN = PlanId("job", 1)


def test_two_claimants_share_the_units_and_none_is_taken_twice(store: JobStore) -> None:
    units = UnitStore(store.engine)
    units.add(PLAN, KEYS)
    first, second = holder_token("coordinator"), holder_token("worker")
    assert units.claim(PLAN, KEYS, first, lease_s=60) == KEYS[0]
    assert units.claim(PLAN, KEYS, second, lease_s=60) == KEYS[1]
    assert units.claim(PLAN, KEYS, first, lease_s=60) is None  # both held, leases fresh
    assert units.finish(PLAN, KEYS[1], second)
    assert units.done(PLAN, KEYS) == {KEYS[1]}
    assert not units.finish(PLAN, KEYS[1], second)  # done once


def test_a_unit_whose_holder_stopped_renewing_goes_to_the_next_claimant(store: JobStore) -> None:
    units = UnitStore(store.engine)
    units.add(PLAN, KEYS[:1])
    dead, alive = holder_token("worker"), holder_token("coordinator")
    assert units.claim(PLAN, KEYS, dead, lease_s=60) == KEYS[0]
    assert units.claim(PLAN, KEYS, alive, lease_s=60) is None
    assert units.claim(PLAN, KEYS, alive, lease_s=0) == KEYS[0]  # the lease lapsed
    assert not units.heartbeat(PLAN, KEYS[0], dead)  # the old holder hears it lost the unit
    assert not units.finish(PLAN, KEYS[0], dead)  # and its late result does not count
    assert units.holders(PLAN)[KEYS[0]] == ("running", alive)
    assert units.finish(PLAN, KEYS[0], alive)


def test_a_released_unit_is_claimed_again_and_a_new_attempt_plans_anew(store: JobStore) -> None:
    units = UnitStore(store.engine)
    units.add(PLAN, KEYS)
    holder = holder_token("worker")
    assert units.claim(PLAN, KEYS, holder, lease_s=60) == KEYS[0]
    units.release(PLAN, KEYS[0], holder)
    assert units.holders(PLAN)[KEYS[0]] == ("pending", None)
    assert units.claim(PLAN, KEYS, holder, lease_s=60) == KEYS[0]
    assert units.finish(PLAN, KEYS[0], holder)
    units.add(PLAN, KEYS)  # a second delivery plans nothing new
    assert units.done(PLAN, KEYS) == {KEYS[0]}
    units.add(PlanId("job", 2), KEYS)  # the job's next attempt plans anew
    assert units.done(PlanId("job", 2), KEYS) == set()
    units.remove("job")
    assert units.holders(PLAN) == {} and units.holders(PlanId("job", 2)) == {}
