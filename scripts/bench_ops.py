"""Cost of the op-level pass: nothing on a healthy model, and what it costs when a failure runs it.

The ~10M-parameter transformer of ``bench_trace.py`` on the CPU. Prints the median time of
  plain forward:    the user's loss, forward only
  forward probe:    nandoctor's forward probe on the healthy model (traced pass; the op pass is not run)
  traced pass:      the traced forward + backward alone (what the probe costs without the op pass)
  op pass:          the op-level pass on the same model whose loss is NaN (log of an underflowed softmax)
and the one-time cost of the first op pass in a process (torch imports its dispatch machinery).

    python scripts/bench_ops.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import time

import torch
from bench_trace import loss_fn
from benchtools import median_time, model_benchmark
from torch.nn import functional as F

from nandoctor.context import RunContext
from nandoctor.measure.ops import locate_nonfinite_op
from nandoctor.measure.trace import trace_batch
from nandoctor.probes.forward import ForwardProbe
from nandoctor.settings import Settings
from nandoctor.spec import validate


def nan_loss(model, batch):
    """log(softmax) by hand on confident logits: log(0) = -inf, times a 0 of the one-hot = NaN."""
    tokens, labels = batch
    probs = torch.softmax(model(tokens) * 1e4, -1)
    return -(F.one_hot(labels, 10).float() * torch.log(probs)).sum(-1).mean()


def context(model, batch, loss) -> RunContext:
    setup = validate({"model": model, "data": [batch], "loss": loss}, "bench")
    return RunContext(setup=setup, batches=[batch], settings=Settings())


def main() -> None:
    args, model = model_benchmark(__doc__, threads=2, repeats=3)
    batch = (torch.randint(0, 4000, (args.batch, args.length)), torch.randint(0, 10, (args.batch,)))
    healthy, failing = context(model, batch, loss_fn), context(model, batch, nan_loss)

    def plain():
        with torch.no_grad():
            loss_fn(model, batch)

    def probe():
        healthy.shared.clear()  # a fresh run: the traced pass is not reused
        result = ForwardProbe().run(healthy)
        assert result.raw["op_pass"] == "not run: the traced pass was finite", result.raw["op_pass"]

    start = time.perf_counter()
    first = locate_nonfinite_op(failing, 0)
    first_s = time.perf_counter() - start
    assert first.site is not None and first.site.op == "aten::log", first.site
    plain_s = median_time(plain, args.repeats)
    probe_s = median_time(probe, args.repeats)
    trace_s = median_time(lambda: trace_batch(healthy, 0), args.repeats)
    ops_s = median_time(lambda: locate_nonfinite_op(failing, 0), args.repeats)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {params / 1e6:.1f}M parameters, batch {args.batch}x{args.length}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; {first.ops_seen} ops per pass"
    )
    print(f"plain forward                 : {plain_s * 1e3:8.1f} ms   1.00x")
    print(f"forward probe, healthy model  : {probe_s * 1e3:8.1f} ms   {probe_s / plain_s:.2f}x  (op pass not run)")
    print(f"traced pass alone             : {trace_s * 1e3:8.1f} ms   {trace_s / plain_s:.2f}x")
    print(
        f"op pass, NaN loss             : {ops_s * 1e3:8.1f} ms   {ops_s / plain_s:.2f}x  "
        f"(found {first.site.op} at {first.site.source})"
    )
    print(f"first op pass in a process    : {first_s * 1e3:8.1f} ms   (one-time: torch's dispatch imports)")


if __name__ == "__main__":
    main()
