"""The position-addressable epoch order behind exact resume and DDP = single-process equivalence."""
import numpy as np
import pytest

from imgtrain.data.order import TrainPlan, epoch_order, eval_positions

COUNTS = [50, 50, 50, 37]


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(COUNTS, seed=0, epoch=0, buffer=20)
    assert sorted(a.tolist()) == list(range(sum(COUNTS)))
    assert np.array_equal(a, epoch_order(COUNTS, seed=0, epoch=0, buffer=20))
    assert not np.array_equal(a, epoch_order(COUNTS, seed=0, epoch=1, buffer=20))  # the epoch really advances
    assert not np.array_equal(a, epoch_order(COUNTS, seed=1, epoch=0, buffer=20))
    assert np.array_equal(epoch_order(COUNTS, seed=0, epoch=0, buffer=1, shuffle=False), np.arange(187))


def test_shuffle_stays_local_to_a_window():
    """Like a shuffle buffer: each window of the stream holds samples of at most two shards."""
    order = epoch_order(COUNTS, seed=3, epoch=0, buffer=20)
    shard_of = np.searchsorted(np.cumsum(COUNTS), order, side="right")
    for w in range(0, len(order), 20):
        assert len(set(shard_of[w:w + 20].tolist())) <= 2


@pytest.mark.parametrize("world", [1, 2, 4])
def test_global_batches_do_not_depend_on_world_size(world):
    total, global_batch = 187, 8
    plan = TrainPlan(total, global_batch // world, world)
    single = TrainPlan(total, global_batch, 1)
    assert plan.steps == single.steps == 23 and plan.dropped == 3
    for step in range(plan.steps):
        ranks = [list(plan.rank_positions(r, step)) for r in range(world)]
        assert sum(ranks, []) == list(single.rank_positions(0, step))


def test_resume_from_a_position_continues_the_same_stream():
    full = TrainPlan(187, 4, 2)
    resumed = TrainPlan(187, 4, 2, start=5 * 8)
    assert resumed.steps == full.steps - 5
    for step in range(resumed.steps):
        for r in range(2):
            assert list(resumed.rank_positions(r, step)) == list(full.rank_positions(r, step + 5))


def test_resume_with_another_world_size_sees_each_sample_once():
    total = 187
    first = TrainPlan(total, 4, 4)  # 4 ranks, stopped after 3 steps
    seen = [p for s in range(3) for r in range(4) for p in first.rank_positions(r, s)]
    second = TrainPlan(total, 4, 2, start=len(seen))  # requeued on 2 ranks
    seen += [p for s in range(second.steps) for r in range(2) for p in second.rank_positions(r, s)]
    assert len(seen) == len(set(seen))
    assert set(seen) == set(range(total - second.dropped))


@pytest.mark.parametrize("total, world", [(10, 3), (7, 2), (2, 4), (100, 1)])
def test_eval_positions_cover_each_sample_once(total, world):
    got = [p for r in range(world) for p in eval_positions(total, r, world)]
    assert got == list(range(total))
