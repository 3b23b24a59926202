"""The sweep's held-out batch stays held out: a loader that reshuffles a small set serves its samples
again in the fresh batches the sweep reads, and those rows are dropped there (a loader that repeats
one batch, which has nothing to hold out, is read as before)."""

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.sweep.stream import BatchStream, sample_keys


def _classifier(data):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return {
        "model": model,
        "data": data,
        "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        "optimizer": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
        "lr": 1e-3,
    }


def _stream(built, steps):
    torch.manual_seed(0)
    with open_context(validate(built, "test"), Settings()) as ctx:
        stream = BatchStream(ctx, 64)
        batches = [stream.train(step) for step in range(steps)]
        return stream, batches


def _rows(batch):
    return set(sample_keys(batch))


def test_reshuffled_small_set_never_trains_on_heldout_samples():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    data = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(4))
    stream, batches = _stream(_classifier(data), 24)
    held = _rows(stream.heldout[0])
    assert stream.fresh_read > 0 and stream.heldout_rows_dropped > 0
    assert all(not (_rows(b) & held) for b in batches)
    # what is left of a batch keeps inputs and labels together
    for b in batches:
        for xi, yi in zip(*b):
            match = (x == xi).all(1).nonzero()
            assert len(match) == 1 and y[match[0, 0]] == yi


def test_a_loader_that_repeats_one_batch_is_read_as_before():
    g = torch.Generator().manual_seed(5)
    batch = (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
    stream, batches = _stream(_classifier([batch] * 12), 16)
    assert stream.heldout_rows_dropped == 0
    assert all(len(b[0]) == 8 for b in batches)


def test_disjoint_batches_are_untouched():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(256, 6, generator=g), torch.randint(0, 3, (256,), generator=g)
    stream, batches = _stream(_classifier(DataLoader(TensorDataset(x, y), batch_size=8)), 20)
    assert stream.heldout_rows_dropped == 0
    assert all(len(b[0]) == 8 for b in batches)


# --- recommend: a training-tail difference inside the tail's own step noise is a tie --------------


def _run(lr, tail_mean, wobble, heldout):
    """A 32-step run from loss 2.33 whose held-out loss ends at ``heldout`` and whose last quarter of
    training losses averages ``tail_mean``, alternating by +-``wobble`` (dropout-like step noise)."""
    from nandoctor.sweep.training import LEARNS, TrainRun

    head = [2.33 - (2.33 - tail_mean) * k / 24 for k in range(24)]
    tail = [tail_mean + (wobble if k % 2 else -wobble) for k in range(8)]
    run = TrainRun(lr=lr, clip=None, steps=32, losses=head + tail, grad_norms=[1.0] * 32)
    run.initial_loss, run.heldout_initial, run.heldout_batches = 2.33, 2.31, 1
    run.heldout = {8: 2.2, 32: heldout}
    run.verdict, run.drop = LEARNS, (2.31 - heldout) / 2.31
    return run


def _pick(runs):
    from nandoctor.settings import Settings
    from nandoctor.sweep.grid import Sweep, recommend

    chosen, _ = recommend(Sweep(runs=runs, user_lr=1.0, checkpoints=[8, 32]), Settings())
    return chosen.lr


def test_noisy_tails_that_differ_within_their_noise_tie_and_the_larger_rate_wins():
    assert _pick([_run(1.0, 2.017, 0.09, 2.004), _run(3.0, 2.046, 0.09, 2.010)]) == 3.0


def test_quiet_tails_that_differ_beyond_their_noise_still_decide():
    assert _pick([_run(1.0, 2.017, 0.002, 2.004), _run(3.0, 2.046, 0.002, 2.010)]) == 1.0


def test_in_one_process_a_step_trains_on_one_batch():
    setup = validate({"model": nn.Linear(4, 2), "data": [torch.randn(8, 4) for _ in range(6)]}, "spec")
    with open_context(setup, Settings()) as ctx:
        stream = BatchStream(ctx, 8)
        assert (stream.group, stream.group_note) == (1, None)
        assert stream.train(0).shape == (8, 4) and stream.heldout[0].shape == (8, 4)


def _padded_token_batches():
    """Token batches padded to their own length (6, 7, ... ids): batches that could not be concatenated."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for length in range(6, 12):
        labels = torch.randint(0, 4, (32,), generator=g)
        batches.append((torch.randint(0, 25, (32, length), generator=g) + 25 * labels[:, None], labels))
    return batches


class _MeanTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(100, 16), nn.Linear(16, 4)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def test_a_step_accumulates_several_batches_when_asked_and_holds_out_as_many():
    setup = validate({"model": _MeanTokens(), "data": _padded_token_batches()}, "spec")
    with open_context(setup, Settings(sweep_rank_batches=2)) as ctx:
        stream = BatchStream(ctx, 8)
        assert stream.group == 2 and "accumulates 2 batches" in stream.group_note
        assert [b[0].shape[1] for b in stream.heldout] == [8, 9]  # the last two cached, never trained on
        assert [stream.train(i)[0].shape[1] for i in range(4)] == [6, 7, 10, 11]  # then fresh ones


def test_the_sweep_accumulates_and_says_so(capsys):
    import nandoctor

    data = _padded_token_batches()
    sweep = nandoctor.lr_sweep(
        {"model": _MeanTokens(), "data": data, "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1])},
        lrs=[1e-3, 1e-2],
        steps=4,
        settings={"sweep_rank_batches": 2},
        progress=False,
    ).to_dict()
    assert sweep["batches"]["per_step"] == 2 and sweep["batches"]["heldout"] == 2
    assert all(run["steps_run"] == 4 for run in sweep["runs"])
