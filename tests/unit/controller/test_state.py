"""Session admission and the speculation gate."""

from __future__ import annotations

import asyncio

from services.controller.state import SessionSlots, SpeculationGate


def test_session_slots_admit_up_to_the_limit() -> None:
    slots = SessionSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.try_acquire()


async def test_speculations_are_capped_and_shed_oldest_first() -> None:
    gate = SpeculationGate(limit=2)
    tasks = [asyncio.create_task(asyncio.sleep(10)) for _ in range(2)]
    for task in tasks:
        assert gate.has_room()
        gate.track(task)
    assert not gate.has_room()
    assert gate.shed_one()
    await asyncio.sleep(0)
    assert tasks[0].cancelled() and not tasks[1].done()
    assert gate.has_room()
    assert gate.shed_one() and not gate.shed_one()  # nothing left to shed
    await asyncio.gather(*tasks, return_exceptions=True)
    assert SpeculationGate(limit=0).has_room() is False
