import pytest

from orch.server.scheduler.rank import (
    anti_affinity_penalty, binpack_score, score_node,
)
from orch.structs import Resources

TOTAL = Resources(1000, 1000)


def test_binpack_bounds():
    assert binpack_score(TOTAL, TOTAL) == 0.0
    assert binpack_score(TOTAL, Resources(0, 0)) == 1.0


def test_fuller_node_scores_higher():
    emptier = binpack_score(TOTAL, Resources(900, 900))
    fuller = binpack_score(TOTAL, Resources(500, 500))
    assert 0 < emptier < fuller < 1


def test_balanced_use_beats_lopsided_use_of_the_same_total():
    balanced = binpack_score(TOTAL, Resources(500, 500))
    lopsided = binpack_score(TOTAL, Resources(1000, 0))
    assert balanced > lopsided > 0


def test_zero_capacity_node_does_not_divide_by_zero():
    assert binpack_score(Resources(0, 0), Resources(0, 0)) == 1.0


def test_anti_affinity_penalty():
    assert anti_affinity_penalty(0, 3) == 0.0
    assert anti_affinity_penalty(1, 3) == pytest.approx(2 / 3)
    assert anti_affinity_penalty(2, 3) == pytest.approx(1.0)
    assert anti_affinity_penalty(1, 0) == 2.0


def test_score_node_applies_penalties():
    free = Resources(500, 500)
    base = score_node(TOTAL, free, collisions=0, count=3, previous=False)
    assert base == binpack_score(TOTAL, free)
    spread = score_node(TOTAL, free, collisions=1, count=3, previous=False)
    assert spread == pytest.approx(base - 2 / 3)
    moved = score_node(TOTAL, free, collisions=0, count=3, previous=True)
    assert moved == pytest.approx(base - 1.0)
