"""orch.slots: a count of holders with a cap."""

from __future__ import annotations

import threading

from orch.slots import Slots


def test_slots_are_taken_up_to_the_cap_and_given_back():
    slots = Slots(2)
    assert slots.try_take() and slots.try_take()
    assert not slots.try_take() and slots.held == 2
    slots.give()
    assert slots.held == 1 and slots.try_take()


def test_waiting_for_idle_ends_when_the_last_slot_is_given_back():
    slots = Slots(1)
    assert slots.wait_idle(0)
    assert slots.try_take()
    assert not slots.wait_idle(0.05)
    threading.Timer(0.05, slots.give).start()
    assert slots.wait_idle(5)
