"""`Flag`: a set-once Event (orch.agent.flag), as the runners use it."""

import threading

from orch.agent.flag import Flag


def test_a_new_flag_is_not_set_and_its_wait_times_out():
    flag = Flag()
    assert not flag.is_set()
    assert flag.wait(0) is False
    assert flag.wait(0.01) is False


def test_set_wakes_every_waiter_and_later_waits_return_at_once():
    flag = Flag()
    woken = []
    waiters = [threading.Thread(target=lambda: woken.append(flag.wait(10))) for _ in range(4)]
    for waiter in waiters:
        waiter.start()
    flag.set()
    for waiter in waiters:
        waiter.join(10)
    assert woken == [True] * 4
    assert flag.is_set() and flag.wait() and flag.wait(0)


def test_setting_twice_or_from_many_threads_is_harmless():
    flag = Flag()
    setters = [threading.Thread(target=flag.set) for _ in range(8)]
    for setter in setters:
        setter.start()
    for setter in setters:
        setter.join(10)
    flag.set()
    assert flag.is_set() and flag.wait(0)
