import numpy as np
import pytest

from reprotune.training.sampling import ClassBalancedSampler, balanced_probabilities, training_sampler

LONG_TAIL = [0] * 90 + [1] * 9 + [2] * 1


def test_every_class_is_drawn_about_equally_often():
    sampler = ClassBalancedSampler(LONG_TAIL * 20, seed=0)
    drawn = np.bincount(np.asarray(LONG_TAIL * 20)[list(sampler)], minlength=3) / len(sampler)
    np.testing.assert_allclose(drawn, [1 / 3] * 3, atol=0.03)
    assert len(sampler) == 2000


def test_unlabelled_items_keep_their_share():
    targets = [0] * 60 + [1] * 10 + [-1] * 30
    chances = balanced_probabilities(targets)
    assert chances[np.asarray(targets) == -1].sum() == pytest.approx(0.3)
    assert chances[:60].sum() == pytest.approx(chances[60:70].sum()) == pytest.approx(0.35)


def test_an_epoch_depends_on_the_seed_and_epoch_and_processes_share_one_draw():
    one = ClassBalancedSampler(LONG_TAIL, seed=3)
    one.set_epoch(2)
    again = ClassBalancedSampler(LONG_TAIL, seed=3)
    again.set_epoch(2)
    assert list(one) == list(again)  # a resumed run draws what an uninterrupted one would
    again.set_epoch(3)
    assert list(again) != list(one)
    ranks = [ClassBalancedSampler(LONG_TAIL, seed=3, rank=r, world=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    first, second = (list(s) for s in ranks)
    assert len(first) == len(second) == 50
    interleaved = [i for pair in zip(first, second, strict=True) for i in pair]
    assert interleaved == list(one)  # the two processes' positions of the one process's draw


def test_shuffle_is_the_loaders_own_in_one_process_and_shards_under_torchrun():
    from torch.utils.data import DistributedSampler

    assert training_sampler("shuffle", LONG_TAIL, 0, 0, 1) is None
    assert isinstance(training_sampler("shuffle", LONG_TAIL, 0, 1, 2), DistributedSampler)
    assert isinstance(training_sampler("balanced", LONG_TAIL, 0, 0, 1), ClassBalancedSampler)


def test_finetune_trains_with_balanced_draws(tiny_params):
    """The stage's own data path: the loader draws through the balanced sampler, one epoch trains."""
    from reprotune.pipeline.layout import Layout
    from stages.finetune import finetune
    from tests.test_finetune import prepare, with_finetune

    prepare(tiny_params)
    params = with_finetune(tiny_params, sampler="balanced")
    finetune(params)
    history = (Layout(params.paths).finetune_history).read_text().splitlines()
    assert len(history) == 2  # the header and epoch 1
