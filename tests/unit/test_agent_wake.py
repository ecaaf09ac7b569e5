"""orch.agent.wake.Wake: an Event whose waiter re-reads its deadline when poked."""

import threading
import time

from orch.agent.wake import Wake


def test_a_poke_makes_the_waiter_see_a_nearer_deadline():
    wake = Wake()
    due = [float("inf")]
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(wake.wait(60.0, lambda: due[0])))
    waiter.start()
    time.sleep(0.05)  # the waiter sleeps on a 60 s timeout
    due[0] = time.monotonic()
    wake.poke()
    waiter.join(10.0)
    assert not waiter.is_alive() and result == [False]


def test_set_wakes_the_waiter_and_clear_resets():
    wake = Wake()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(wake.wait(60.0)))
    waiter.start()
    wake.set()
    waiter.join(10.0)
    assert result == [True] and wake.is_set()
    wake.clear()
    assert not wake.is_set() and wake.wait(0.01) is False
