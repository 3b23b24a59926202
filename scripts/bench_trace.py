"""Cost of nandoctor's traced pass against a plain training step, measured in one run.

A ~10M-parameter transformer-like model on the CPU. Prints the median time of
  plain:   forward + backward
  trace:   nandoctor's traced forward + backward (module hooks, device-side statistics)
  anomaly: forward + backward under torch.autograd.detect_anomaly()
and the ratios trace/plain and anomaly/plain (target: trace <= 1.5x plain).

    python scripts/bench_trace.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from benchtools import median_time
from torch import nn
from torch.nn import functional as F

from nandoctor.context import RunContext
from nandoctor.measure.trace import trace_batch
from nandoctor.settings import Settings
from nandoctor.spec import validate


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv_proj(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, vocab=4000, width=384, heads=6, depth=5, classes=10):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


def loss_fn(model, batch):
    tokens, labels = batch
    return F.cross_entropy(model(tokens), labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    torch.manual_seed(0)
    model = Transformer()
    batch = (torch.randint(0, 4000, (args.batch, args.length)), torch.randint(0, 10, (args.batch,)))
    params = sum(p.numel() for p in model.parameters())
    setup = validate({"model": model, "data": [batch], "loss": loss_fn}, "bench")
    ctx = RunContext(setup=setup, batches=[batch], settings=Settings())

    def plain():
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()

    def traced():
        trace_batch(ctx, 0)

    def anomaly():
        with torch.autograd.detect_anomaly():
            plain()

    # interleave the three so that machine noise hits them alike
    results = {"plain": [], "trace": [], "anomaly": []}
    for _ in range(3):
        for name, step in (("plain", plain), ("trace", traced), ("anomaly", anomaly)):
            results[name].append(median_time(step, max(args.repeats // 3, 1)))
    plain_s, trace_s, anomaly_s = (min(results[k]) for k in ("plain", "trace", "anomaly"))
    print(
        f"model: {params / 1e6:.1f}M parameters, batch {args.batch}x{args.length}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"plain forward+backward : {plain_s * 1e3:8.1f} ms   1.00x")
    print(f"nandoctor trace pass   : {trace_s * 1e3:8.1f} ms   {trace_s / plain_s:.2f}x  (target <= 1.5x)")
    print(f"detect_anomaly step    : {anomaly_s * 1e3:8.1f} ms   {anomaly_s / plain_s:.2f}x")


if __name__ == "__main__":
    main()
