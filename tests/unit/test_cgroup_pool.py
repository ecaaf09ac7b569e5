"""The pool of idle task cgroups (`Cgroups.release` / `create`), on a fake cgroup v2 tree."""

import os

from orch.agent.drivers import cgroups as cg
from orch.agent.drivers.cgroups import Cgroups


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def pool(tmp_path):
    """A v2 tree whose task dirs are plain dirs: rmdir is recorded, not done."""
    root, proc = tmp_path / "cg", tmp_path / "proc"
    (root / "agent.scope").mkdir(parents=True)
    proc.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "agent.scope" / "cgroup.subtree_control").write_text("")
    (proc / "cgroup").write_text("0::/agent.scope\n")
    clock = Clock()
    cgroups = Cgroups(root=str(root), proc=str(proc), clock=clock)
    removed: list[str] = []
    cgroups._rmdir = removed.append
    assert cgroups.detect() == "v2"
    return cgroups, clock, removed


def ended(group, charged=0, procs=""):
    """What a task leaves in its cgroup dir as it ends."""
    path = group.dirs[0]
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(procs)
    with open(os.path.join(path, "memory.current"), "w") as f:
        f.write(f"{charged}\n")
    return list(group.dirs)


def test_released_cgroup_is_reused_for_the_same_limits_only(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    first = cgroups.create("a1-t", 64, 1024)
    cgroups.release(ended(first))
    assert cgroups.create("a2-t", 32, 1024) != first
    assert cgroups.create("a3-t", 64, 1024) == first
    assert not os.path.exists(os.path.join(cgroups._parents["memory"], "a3-t"))
    assert removed == []


def test_release_twice_pools_once(tmp_path):
    cgroups, _, _ = pool(tmp_path)
    first = cgroups.create("a1-t", 64, 1024)
    cgroups.release(ended(first))
    cgroups.release(ended(first))
    assert cgroups.create("a2-t", 64, 1024) == first
    assert cgroups.create("a3-t", 64, 1024) != first


def test_charged_cgroups_are_removed_not_pooled(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    small, big = cgroups.create("a1-t", 64, 1024), cgroups.create("a2-t", 1024, 1024)
    cgroups.release(ended(small, charged=16 * 1024 * 1024 + 1))  # a quarter of its limit
    cgroups.release(ended(big, charged=17 * 1024 * 1024))  # POOL_MAX_CHARGE
    assert removed == [small.dirs[0], big.dirs[0]]
    assert cgroups.create("a3-t", 64, 1024) != small


def test_pool_is_bounded_per_limits(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    count = cg.POOL_PER_LIMITS_MAX + 1
    groups = [cgroups.create(f"a{i}-t", 64, 1024) for i in range(count)]
    for group in groups:
        cgroups.release(ended(group))
    assert removed == [groups[-1].dirs[0]]
    cgroups.drain()
    assert sorted(removed) == sorted(g.dirs[0] for g in groups)


def test_pool_holds_no_more_than_was_out_at_once(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    for i in range(cg.POOL_PER_LIMITS + 2):  # one at a time: one out at once
        cgroups.release(ended(cgroups.create(f"a{i}-t", 64, 1024)))
    assert removed == []  # each was the pooled one again
    # Bursts beyond the floor, then fewer: the pool keeps the burst, not more.
    first = [cgroups.create(f"b{i}-t", 64, 1024) for i in range(cg.POOL_PER_LIMITS + 2)]
    extra = cgroups.create("c-t", 64, 1024)
    for group in first:
        cgroups.release(ended(group))
    cgroups.release(ended(extra))
    assert removed == []
    made_before = set(os.listdir(cgroups._parents["memory"]))
    second = [cgroups.create(f"d{i}-t", 64, 1024) for i in range(cg.POOL_PER_LIMITS + 3)]
    assert set(os.listdir(cgroups._parents["memory"])) == made_before  # no new dir
    assert {g.dirs[0] for g in second} == {g.dirs[0] for g in [*first, extra]}


def test_a_burst_larger_than_the_floor_is_reused_whole(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    burst = cg.POOL_PER_LIMITS * 2
    for round_ in range(3):
        groups = [cgroups.create(f"r{round_}-{i}-t", 64, 1024) for i in range(burst)]
        for group in groups:
            cgroups.release(ended(group))
    assert removed == []
    parent = cgroups._parents["memory"]
    made = [n for n in os.listdir(parent) if os.path.isdir(os.path.join(parent, n))]
    assert len(made) == burst


def test_old_cgroups_are_not_reused(tmp_path):
    cgroups, clock, removed = pool(tmp_path)
    first = cgroups.create("a1-t", 64, 1024)
    cgroups.release(ended(first))
    clock.now += cg.POOL_MAX_AGE
    assert cgroups.create("a2-t", 64, 1024) != first
    assert removed == [first.dirs[0]]


def test_pooled_cgroup_found_busy_is_not_handed_out(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    first = cgroups.create("a1-t", 64, 1024)
    cgroups.release(ended(first))
    ended(first, procs="4242\n")
    assert cgroups.create("a2-t", 64, 1024) != first
    assert removed == [first.dirs[0]]


def test_not_kept_is_left_to_the_supervisor(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    first = cgroups.create("a1-t", 64, 1024)
    cgroups.release(ended(first), kept=False)
    assert removed == []
    assert cgroups.create("a2-t", 64, 1024) != first


def test_kept_cgroups_of_an_earlier_agent_are_removed_only_under_ours(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    parent = cgroups._parents["memory"]
    cgroups.release([os.path.join(parent, "old-t"), str(tmp_path / "elsewhere")])
    assert removed == [os.path.join(parent, "old-t")]


def test_kept_cgroups_released_before_any_create_are_removed(tmp_path):
    # A restarted agent reattaches (and releases an earlier agent's kept
    # cgroups) before it makes any: it must still know which parent is ours.
    cgroups, _, _ = pool(tmp_path)
    parent = cgroups._parents["memory"]
    fresh = Cgroups(root=cgroups._root, proc=cgroups._proc)
    removed: list[str] = []
    fresh._rmdir = removed.append
    fresh.release([os.path.join(parent, "old-t")])
    assert removed == [os.path.join(parent, "old-t")]


def test_drain_removes_pooled_and_handed_out_cgroups(tmp_path):
    cgroups, _, removed = pool(tmp_path)
    pooled, out = cgroups.create("a1-t", 64, 1024), cgroups.create("a2-t", 64, 1024)
    cgroups.release(ended(pooled))
    cgroups.drain()
    assert sorted(removed) == sorted([pooled.dirs[0], out.dirs[0]])
    assert cgroups.create("a3-t", 64, 1024) not in (pooled, out)


def test_a_pooled_cgroups_files_are_opened_once(tmp_path, monkeypatch):
    cgroups, _, removed = pool(tmp_path)
    first = cgroups.create("a1-t", 64, 1024)
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(p), real_open(p, *a, **k))[1])
    for i in range(5):  # released (charge read), taken again (emptiness read)
        cgroups.release(ended(first))
        assert cgroups.create(f"a{i + 2}-t", 64, 1024) == first
    assert sorted(opened) == sorted(
        os.path.join(first.dirs[0], name) for name in ("cgroup.procs", "memory.current")
    )
    # A busy one found at a take is removed, and its kept fds closed.
    cgroups.release(ended(first))
    ended(first, procs="4242\n")
    assert cgroups.create("b-t", 64, 1024) != first
    assert removed == [first.dirs[0]] and not cgroups._kept_files._fds


def test_a_name_given_as_a_function_is_asked_for_only_when_a_cgroup_is_made(tmp_path):
    cgroups, _, _ = pool(tmp_path)
    asked: list[str] = []

    def name(which):
        return lambda: asked.append(which) or which

    first = cgroups.create(name("a1-t"), 64, 1024)
    assert asked == ["a1-t"] and first.dirs[0].endswith("a1-t")
    cgroups.release(ended(first))
    assert cgroups.create(name("a2-t"), 64, 1024) == first  # pooled: no name needed
    assert asked == ["a1-t"]
