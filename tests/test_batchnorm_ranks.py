"""The BatchNorm statistics measure in one process: each rank's records made from its own shard here,
compared as the probe compares what every rank sends (the probe itself runs under torchrun only)."""

import pytest
import torch
from torch import nn

from nandoctor.context import RunContext
from nandoctor.measure.batchnorm import batchnorm_calls, compare_ranks, single_values
from nandoctor.probes.batchnorm_ranks import shards_differ, too_noisy
from nandoctor.settings import Settings
from nandoctor.spec import validate
from tests.specs import ranks


def records_per_rank(build, world: int, monkeypatch, raises: bool = False, **kwargs):
    """What each of ``world`` ranks would send: its build (its own shard) measured on its batches."""
    sent = []
    for number in range(world):
        monkeypatch.setattr(ranks, "_rank", lambda number=number: number)
        setup = validate(build(**kwargs), "test:build")
        ctx = RunContext(setup=setup, batches=list(setup.data)[:4], settings=Settings())
        records, completed = batchnorm_calls(ctx)
        assert completed == (4 if not raises or number == 0 else 0)
        sent.append(records)
    return sent


def test_an_iid_batch_is_worth_its_count_and_pooling_ranks_multiplies_it():
    """The control of the estimator: independent values are worth as many samples as there are."""
    from nandoctor.measure.batchnorm import ModuleCalls

    g = torch.Generator().manual_seed(0)
    per_rank = []
    for _ in range(4):
        calls = []
        for step in range(16):
            x = torch.randn(16, 32, generator=g)
            var, mean = torch.var_mean(x, dim=0, correction=0)
            stats = {"mean": mean.tolist(), "var": var.tolist()}
            calls.append({"step": step, "call": 0, "count": 16, "samples": 16, **stats})
        per_rank.append({"bn": ModuleCalls(1e-5, calls)})
    (row,) = compare_ranks(per_rank)
    assert 12 < row.effective_per_rank < 21 and 45 < row.effective_sync < 85
    assert row.count_per_rank == 16 and row.sync_count == 64 and row.world_size == 4


def test_two_images_per_rank_are_worth_a_few_samples_and_64_rows_are_not(monkeypatch):
    small, second = compare_ranks(records_per_rank(ranks.bn_two_images_per_rank, 2, monkeypatch))
    assert (small.module, small.count_per_rank, small.samples_per_rank, small.sync_count) == ("body.1", 32, 2, 64)
    assert small.effective_per_rank < 6 < small.effective_sync and second.effective_per_rank > 20
    (large,) = compare_ranks(records_per_rank(ranks.bn_mlp_large_batch, 2, monkeypatch))
    assert large.count_per_rank == 64 and large.effective_per_rank > 20


def test_a_frozen_batchnorm_is_not_recorded_and_hooks_go():
    setup = validate(ranks.bn_two_images_per_rank(), "test:build")
    setup.model.body[1].eval()  # frozen: normalizes with its running statistics
    ctx = RunContext(setup=setup, batches=list(setup.data)[:2], settings=Settings())
    records, completed = batchnorm_calls(ctx)
    assert list(records) == ["body.4"] and completed == 2 and len(records["body.4"].calls) == 2
    assert all(not m._forward_pre_hooks for m in setup.model.modules())


def test_a_model_with_syncbatchnorm_runs_no_forward_of_ours():
    """Under torchrun a training SyncBatchNorm all-reduces in its forward: none is run alone on one rank."""
    setup = validate(ranks.bn_two_images_per_rank(), "test:build")
    setup.model.body[4] = nn.SyncBatchNorm(16)
    calls = []
    setup.model.body[1].register_forward_hook(lambda *args: calls.append(1))
    ctx = RunContext(setup=setup, batches=list(setup.data)[:2], settings=Settings())
    assert batchnorm_calls(ctx) == ({}, 0) and calls == []


def test_one_value_per_channel_on_one_rank_is_named_with_what_pooling_would_give(monkeypatch):
    sent = records_per_rank(ranks.bn_one_sample_on_rank_1, 2, monkeypatch, raises=True)
    assert single_values(sent) == [("1", [1], 65)]
    assert compare_ranks(sent) == []  # no call to compare: rank 1 has no statistics


def test_a_forward_that_raises_keeps_the_calls_made_before_it():
    setup = validate(ranks.bn_two_images_per_rank(), "test:build")

    def loss(model, batch):
        model.body[:2](batch[0])
        raise RuntimeError("the user's head is broken")

    setup.loss = loss
    ctx = RunContext(setup=setup, batches=list(setup.data)[:3], settings=Settings())
    records, completed = batchnorm_calls(ctx)
    assert completed == 0 and [c["step"] for c in records["body.1"].calls] == [0, 1, 2]


@pytest.mark.parametrize("world", [1])
def test_one_rank_alone_is_no_comparison(world, monkeypatch):
    assert compare_ranks(records_per_rank(ranks.bn_two_images_per_rank, world, monkeypatch)) == []


def test_ranks_whose_data_differ_are_told_from_a_small_batch(monkeypatch):
    """The offsets of a small batch change sign from batch to batch; those of a rank with other classes stay."""
    (apart,) = compare_ranks(records_per_rank(ranks.bn_mlp_shards_by_class, 2, monkeypatch))
    assert apart.count_per_rank == 64 and apart.effective_per_rank < 8 and too_noisy(apart, 8.0)
    assert apart.rank_offset_share > 0.9 and shards_differ(apart)
    small = compare_ranks(records_per_rank(ranks.bn_two_images_per_rank, 2, monkeypatch))[0]
    assert too_noisy(small, 8.0) and not shards_differ(small) and small.rank_offset_share < 0.5
    (large,) = compare_ranks(records_per_rank(ranks.bn_mlp_large_batch, 2, monkeypatch))
    assert not too_noisy(large, 8.0) and not shards_differ(large)


def test_a_nan_channel_is_left_out_of_the_comparison(monkeypatch):
    sent = records_per_rank(ranks.bn_mlp_large_batch, 2, monkeypatch)
    for call in sent[1]["1"].calls:
        call["mean"][0] = float("nan")
    (row,) = compare_ranks(sent)
    assert all(v == v for v in (row.deviation, row.effective_per_rank, row.mean_offset, row.var_ratio_high))
    assert row.effective_per_rank > 20
