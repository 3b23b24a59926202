"""Build functions meant for ``torchrun --nproc_per_node=2``: each rank builds its own shard.

In one process (no launcher) they build the single-rank setup, so the same file serves both.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def blobs(seed: int, count: int = 5, size: int = 48):
    g = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 4, (size,), generator=g)
        batches.append((centers[labels] + torch.randn(size, 16, generator=g), labels))
    return batches


def ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def ddp(nan_on_rank: int = -1, lr: float = 1e-3):
    """An MLP wrapped in DDP, every rank its own shard; ``nan_on_rank`` puts one NaN in that rank's first batch."""
    torch.manual_seed(0)
    model = mlp()
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    data = blobs(seed=1 + _rank())
    if _rank() == nan_on_rank:
        x, y = data[0]
        x = x.clone()
        x[3, 2] = float("nan")
        data[0] = (x, y)
    return {"model": model, "data": data, "loss": ce, "lr": lr}


def seed_per_rank():
    """No DDP (gradients all-reduced by hand in the user's loop), seeded with the rank: ranks differ."""
    torch.manual_seed(_rank())
    return {"model": mlp(), "data": blobs(seed=1 + _rank()), "loss": ce}


def one_seed():
    torch.manual_seed(0)
    return {"model": mlp(), "data": blobs(seed=1 + _rank()), "loss": ce}


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def ids_beyond_vocab(vocab_ids: int = 120):
    """Token ids up to ``vocab_ids`` into a 100-row embedding, wrapped in DDP."""
    torch.manual_seed(0)
    model = Tokens()
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    g = torch.Generator().manual_seed(_rank())
    data = [
        (torch.randint(0, vocab_ids, (16, 8), generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(3)
    ]
    return {"model": model, "data": data, "loss": ce}


def raises_on_rank_1():
    if _rank() == 1:
        raise RuntimeError("no data shard for rank 1")
    return one_seed()


def whole_dataset():
    """The same six batches on every rank (nothing sharded): batch 3, sample 5 holds a NaN."""
    torch.manual_seed(0)
    data = blobs(seed=7, count=6)
    x, y = data[3]
    x = x.clone()
    x[5, 1] = float("nan")
    data[3] = (x, y)
    return {"model": mlp(), "data": data, "loss": ce}


class RunningStandardize(nn.Module):
    """Standardizes its input with running statistics of the batches it saw (updated in the forward)."""

    def __init__(self, width: int, as_buffer: bool):
        super().__init__()
        if as_buffer:  # DDP broadcasts buffers from rank 0 at every forward
            self.register_buffer("mean", torch.zeros(width))
        else:  # a parameter nothing all-reduces: it drifts with each rank's own batches
            self.mean = nn.Parameter(torch.zeros(width), requires_grad=False)

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.mean.mul_(0.9).add_(0.1 * x.mean(0))
        return x - self.mean


def ddp_stats_as_parameter():
    """An MLP whose input centring keeps its running mean in a requires_grad=False parameter, under DDP."""
    torch.manual_seed(0)
    model = nn.Sequential(RunningStandardize(16, as_buffer=False), mlp())
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    return {"model": model, "data": blobs(seed=1 + _rank()), "loss": ce}


class ConvScorer(nn.Module):
    """A Conv1d classifier over 16 positions with running-mean centring kept in a buffer."""

    def __init__(self):
        super().__init__()
        self.norm = RunningStandardize(16, as_buffer=True)
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(self.norm(x)[:, None])).flatten(1))


def ddp_stats_as_buffer():
    torch.manual_seed(0)
    model = ConvScorer()
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    return {"model": model, "data": blobs(seed=1 + _rank()), "loss": ce}


def ddp_head_after_wrapping():
    """A classifier whose head is replaced after DDP wrapped it (a fine-tuning script's order): DDP never
    all-reduces the new head's gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    if dist.is_initialized():
        model = DistributedDataParallel(model)
        model.module[2] = nn.Linear(32, 4)
    else:
        model[2] = nn.Linear(32, 4)
    return {"model": model, "data": blobs(seed=1 + _rank()), "loss": ce}


def tokens_head_before_wrapping():
    """The token model with its head replaced before DDP wraps it."""
    torch.manual_seed(0)
    model = Tokens()
    model.head = nn.Linear(16, 4)
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    g = torch.Generator().manual_seed(_rank())
    data = []
    for _ in range(5):  # the class is the quarter of the vocabulary the tokens come from
        labels = torch.randint(0, 4, (32,), generator=g)
        data.append((torch.randint(0, 25, (32, 8), generator=g) + 25 * labels[:, None], labels))
    return {"model": model, "data": data, "loss": ce}


class WithAuxHead(nn.Module):
    """A classifier with an auxiliary head left over from another task: no loss reads it."""

    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.aux_head = nn.Linear(32, 2)

    def forward(self, x):
        return self.body(x)


def ddp_unused_head(find_unused: bool = False):
    """The aux head's parameters get no gradient; DDP without find_unused_parameters raises on them."""
    torch.manual_seed(0)
    model = WithAuxHead()
    if dist.is_initialized():
        model = DistributedDataParallel(model, find_unused_parameters=find_unused)
    return {"model": model, "data": blobs(seed=1 + _rank()), "loss": ce, "lr": 1e-2}


# -- FSDP2 (fully_shard): nandoctor diagnoses the unsharded replica ---------------------------------


def _fully_shard(model: nn.Module, units: list) -> nn.Module:
    """``fully_shard`` on each unit, then on the root, as FSDP2 training scripts do (needs a group)."""
    if dist.is_initialized():
        from torch.distributed.fsdp import fully_shard

        for unit in units:
            fully_shard(unit)
        fully_shard(model)
    return model


class SmallConv(nn.Module):
    """A small conv net over 1x8x8 images: two conv blocks and a linear head."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


def _images(seed: int, count: int = 4, size: int = 24):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 3, (size,), generator=g)
        images = torch.randn(size, 1, 8, 8, generator=g) * 0.5
        images[:, :, : labels.max() + 2] += labels.view(-1, 1, 1, 1).float()  # the label shows in the image
        batches.append((images, labels))
    return batches


def fsdp2_conv():
    """A healthy conv net sharded with FSDP2 (each conv block and the head, then the root)."""
    torch.manual_seed(0)
    model = SmallConv()
    model = _fully_shard(model, [*model.blocks, model.head])
    return {"model": model, "data": _images(seed=1 + _rank()), "loss": ce, "lr": 1e-3}


def fsdp2_ids_beyond_vocab(vocab_ids: int = 120):
    """Token ids up to ``vocab_ids`` into a 100-row embedding, the model sharded with FSDP2."""
    torch.manual_seed(0)
    model = Tokens()
    model = _fully_shard(model, [model.embed, model.head])
    g = torch.Generator().manual_seed(_rank())
    data = [
        (torch.randint(0, vocab_ids, (16, 8), generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(3)
    ]
    return {"model": model, "data": data, "loss": ce}


def fsdp2_on_a_sub_mesh():
    """Sharded over a mesh of one rank each (as a pipeline stage's or a tensor-parallel group's would be):
    no rank holds what the others hold, so there is no whole model to diagnose on every rank."""
    torch.manual_seed(0)
    model = mlp()
    if dist.is_initialized():
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(), 1), mesh_dim_names=("stage", "shard"))
        fully_shard(model, mesh=mesh["shard"])
    return {"model": model, "data": blobs(seed=1 + _rank()), "loss": ce}


class SmallConvNet(nn.Module):
    """Two conv blocks and a linear head for 3x4x4 images; ``norm`` makes each block's normalization."""

    def __init__(self, norm=nn.BatchNorm2d):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            norm(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            norm(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x))


def tiny_images(seed: int, per_rank: int, count: int = 64):
    """3x4x4 images of 4 classes: a class pattern, a strong per-image lighting offset per colour
    channel (dark and bright photos), noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 4, (per_rank,), generator=g)
        lighting = 2.0 * torch.randn(per_rank, 3, 1, 1, generator=g)
        batches.append((patterns[labels] + lighting + 0.3 * torch.randn(per_rank, 3, 4, 4, generator=g), labels))
    return batches


def _conv_ddp(norm, per_rank: int):
    torch.manual_seed(0)
    model = SmallConvNet(norm)
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    return {"model": model, "data": tiny_images(seed=1 + _rank(), per_rank=per_rank), "loss": ce}


def bn_two_images_per_rank(per_rank: int = 2):
    """A BatchNorm2d image classifier under DDP with 2 images of 4x4 per rank: each BatchNorm
    normalizes with the statistics of 2 images (32 values per channel, about 2 samples' worth)."""
    return _conv_ddp(nn.BatchNorm2d, per_rank)


def gn_two_images_per_rank(per_rank: int = 2):
    """The same classifier with GroupNorm: per-sample statistics, no batch to be too small."""
    return _conv_ddp(lambda channels: nn.GroupNorm(2, channels), per_rank)


def bn_mlp_large_batch(per_rank: int = 64):
    """An MLP with BatchNorm1d under DDP and 64 samples per rank: batch statistics that hold."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    return {"model": model, "data": blobs(seed=1 + _rank(), count=4, size=per_rank), "loss": ce}


def bn_one_sample_on_rank_1():
    """The MLP with BatchNorm1d, whose rank 1 gets one sample per batch (the short last batch of an epoch)."""
    setup = bn_mlp_large_batch()
    if _rank() == 1:
        setup["data"] = [(x[:1], y[:1]) for x, y in setup["data"]]
    return setup


def bn_mlp_shards_by_class(per_rank: int = 64):
    """The MLP with BatchNorm1d and 64 samples per rank, but rank r holds only classes 2r and 2r+1:
    a dataset split by class across ranks without shuffling."""
    setup = bn_mlp_large_batch(per_rank)
    g = torch.Generator().manual_seed(1 + _rank())
    centers = 2.0 * torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    setup["data"] = []
    for _ in range(4):
        labels = 2 * _rank() + torch.randint(0, 2, (per_rank,), generator=g)
        setup["data"].append((centers[labels] + torch.randn(per_rank, 16, generator=g), labels))
    return setup


def syncbn_mlp(per_rank: int = 64):
    """The BatchNorm MLP converted with SyncBatchNorm.convert_sync_batchnorm (its gradients all-reduced by
    hand: DDP refuses SyncBatchNorm on CPU modules). Its training forward would all-reduce on every call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return {"model": model, "data": blobs(seed=1 + _rank(), count=4, size=per_rank), "loss": ce}


def train_under_guard(model, data, path: str, spec: str, check_every: int) -> None:
    """The torchrun scripts' training loop under nandoctor.Guard: rank 1's batch at step 3 gets a NaN
    in its first value; each rank prints what tripped its guard."""
    import sys

    from nandoctor import Guard

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    guard = Guard(model, optimizer, path=path, spec=spec, check_every=check_every, on_failure="continue")
    with guard:
        for step, (x, y) in enumerate(data):
            if step == 3 and _rank() == 1:
                x = x.clone()
                x.view(-1)[0] = float("nan")
            loss = ce(model, (x, y))
            optimizer.zero_grad()
            loss.backward()
            guard.step(loss, (x, y))
            optimizer.step()
    print(f"rank {_rank()} tripped {guard.tripped}", file=sys.stderr)
