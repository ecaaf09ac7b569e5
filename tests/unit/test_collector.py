"""A daemon's collector settings (orch.collector)."""

from __future__ import annotations

import gc
import weakref

import pytest

from orch import collector


@pytest.fixture
def restored():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Stored:
    """A record of the kind the store keeps, and a cycle of two."""

    def __init__(self):
        self.partner: Stored | None = None


def test_tune_freezes_the_loaded_state_and_spaces_the_passes(restored):
    gc.set_threshold(700, 10, 10)
    loaded = [Stored() for _ in range(100)]
    collector.tune()
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() >= len(loaded)
    # Frozen: no pass scans them (get_objects lists only the generations).
    assert not any(o is loaded[0] for o in gc.get_objects())


def test_start_ups_own_cycles_are_collected_not_frozen(restored):
    gc.disable()  # no pass between the cycle's making and tune()
    try:
        a, b = Stored(), Stored()
        a.partner, b.partner = b, a
        gone = weakref.ref(a)
        del a, b
        collector.tune()
        assert gone() is None  # frozen, it would have lived on
    finally:
        gc.enable()


def test_cycles_made_later_are_still_collected(restored):
    collector.tune()
    a, b = Stored(), Stored()
    a.partner, b.partner = b, a
    del a, b
    assert gc.collect() >= 2


@pytest.mark.parametrize("own_process", [True, False])
def test_an_agent_sets_the_collector_only_in_a_process_of_its_own(
    tmp_path, monkeypatch, own_process
):
    import socket
    import threading

    from orch.agent import main
    from orch.config import AgentConfig

    calls = []
    monkeypatch.setattr(main.collector, "tune", lambda: calls.append("tuned"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:  # the port is taken: serve returns once the state is restored
        config = AgentConfig(
            server="http://127.0.0.1:9", data_dir=str(tmp_path), port=taken.getsockname()[1]
        )
        assert main.serve(config, threading.Event(), own_process=own_process) == 1
    finally:
        taken.close()
    assert calls == (["tuned"] if own_process else [])
