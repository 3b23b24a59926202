"""Targets checked against the domain and the shape of the loss that reads them, at the loss call.

The traced pass's ``TorchFunctionMode`` (measure/labels.py) hands every loss call here before the
loss runs. What is recorded (plain data, never raised: these losses run, and train on nonsense):

- ``target_out_of_range``: BCE targets outside [0, 1] (0/255 masks), negative targets to a loss
  that needs them >= 0 (Poisson, KL divergence of probabilities, cross-entropy probabilities),
  one-hot targets where class ids are expected and float class ids where integers are;
- ``loss_shape_mismatch``: an elementwise loss whose input and target shapes differ and
  broadcast ((B,) against (B, 1) gives (B, B));
- loss-specific degenerate targets: CTC targets longer than their inputs (an Inf loss) and a
  batch whose every class target is the ignore index (a mean of 0/0 = NaN);
- ``target_out_of_range`` for a regression loss whose prediction comes straight out of a bounded
  activation (sigmoid, tanh, softmax; read from the prediction's autograd node, through reshapes)
  while targets lie outside what it can reach: targets of 10..90 against a sigmoid.

- ``loss_maximized``: every loss call that reaches the total does so with a negative sign
  (``-F.cross_entropy(...)``): the optimizer climbs the loss, and the total falls without bound.
  A tensor hook on each call's output records d total / d output during the backward; one term
  subtracted beside a term that is minimized (an entropy bonus) is not this.

Each record costs one small read-back per loss call.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from nandoctor.measure.ops import user_source

ELEMENTWISE = (
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "soft_margin_loss",
    "poisson_nll_loss",
    "kl_div",
    "gaussian_nll_loss",
    "multilabel_soft_margin_loss",
)
REGRESSION = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
# the autograd node of a bounded activation's output -> (name, lowest, highest) it can reach
BOUNDED = {
    "SigmoidBackward0": ("sigmoid", 0.0, 1.0),
    "TanhBackward0": ("tanh", -1.0, 1.0),
    "SoftmaxBackward0": ("softmax", 0.0, 1.0),
}
# nodes that only move or reshape values: the range of what feeds them is the range of their output
RESHAPES = (
    "ViewBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "SqueezeBackward2",
    "UnsqueezeBackward0",
    "ReshapeAliasBackward0",
    "UnsafeViewBackward0",
    "TBackward0",
    "TransposeBackward0",
    "PermuteBackward0",
    "CloneBackward0",
    "ExpandBackward0",
    "SelectBackward0",
    "SliceBackward0",
    "ToCopyBackward0",
)
UNIT_INTERVAL = ("binary_cross_entropy", "binary_cross_entropy_with_logits", "multilabel_soft_margin_loss")
NON_NEGATIVE = ("poisson_nll_loss", "kl_div")
CLASS_LOSSES = ("cross_entropy", "nll_loss")


@cache
def _signatures() -> dict[Any, inspect.Signature]:
    from torch.nn import functional as F

    names = ELEMENTWISE + CLASS_LOSSES + ("ctc_loss",)
    return {getattr(F, name): inspect.signature(getattr(F, name)) for name in names}


def check_loss_call(func: Any, args: tuple, kwargs: dict, batch_tensors: dict, records: list) -> None:
    """Append a record for each problem with this loss call's targets (nothing for other calls)."""
    import torch

    signature = _signatures().get(func)
    if signature is None:
        return
    try:
        call = signature.bind(*args, **kwargs).arguments
    except TypeError:
        return
    name = func.__name__
    if name == "ctc_loss":
        _ctc(call, records, torch)
        return
    prediction, target = call.get("input"), call.get("target")
    if not isinstance(prediction, torch.Tensor) or not isinstance(target, torch.Tensor) or not target.numel():
        return
    found: list[dict[str, Any]] = []
    if name in ELEMENTWISE:
        found += _shapes(name, prediction, target)
        found += _domain(name, call, target, torch)
        found += _reachable(name, prediction, target, torch)
    else:
        found += _class_targets(name, call, prediction, target, torch)
    for record in found:
        record["source"] = user_source()
        record.setdefault("tensor", batch_tensors.get(id(target), (None,))[0])
        records.append(record)


def _shapes(name: str, prediction: Any, target: Any) -> list[dict[str, Any]]:
    if prediction.shape == target.shape or prediction.numel() == 1 or target.numel() == 1:
        return []
    try:
        import torch

        joined = tuple(torch.broadcast_shapes(prediction.shape, target.shape))
    except RuntimeError:
        joined = None
    grows = joined is not None and _numel(joined) > max(prediction.numel(), target.numel())
    return [
        {
            "kind": "loss_shape_mismatch",
            "loss": name,
            "input_shape": list(prediction.shape),
            "target_shape": list(target.shape),
            "broadcast_shape": list(joined) if joined is not None else None,
            "pairs_every_prediction_with_every_target": grows,
        }
    ]


def _numel(shape: tuple) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _range(target: Any, low: float, high: float | None, torch: Any) -> tuple[int, int, float, float]:
    """(count outside [low, high], first flat index outside, min, max) in one read-back."""
    with torch.no_grad():
        flat = target.detach().reshape(-1).float()
        bad = flat < low if high is None else (flat < low) | (flat > high)
        values = torch.stack([bad.sum().float(), torch.argmax(bad.to(torch.uint8)).float(), flat.min(), flat.max()])
        count, first, smallest, largest = values.tolist()
    return int(count), int(first), smallest, largest


def _per_sample(target: Any, flat_index: int) -> int:
    return flat_index // max(_numel(tuple(target.shape[1:])), 1) if target.dim() else 0


def _domain(name: str, call: dict, target: Any, torch: Any) -> list[dict[str, Any]]:
    if not target.is_floating_point():
        return []
    if name in UNIT_INTERVAL:
        bounds: tuple[float, float | None] = (0.0, 1.0)
    elif name == "kl_div" and not call.get("log_target", False) or name == "poisson_nll_loss":
        bounds = (0.0, None)
    else:
        return []
    return _outside(name, "range", target, bounds[0], bounds[1], torch)


def _outside(name: str, problem: str, target: Any, low: float, high: float | None, torch: Any, **extra: Any) -> list:
    """One ``target_out_of_range`` record when targets fall outside [low, high] (one read-back), else none."""
    count, first, smallest, largest = _range(target, low, high, torch)
    if not count:
        return []
    return [
        {
            "kind": "target_out_of_range",
            "loss": name,
            "problem": problem,
            **extra,
            "domain": [low, high],
            "min_target": smallest,
            "max_target": largest,
            "out_of_range": count,
            "total": int(target.numel()),
            "sample": _per_sample(target, first),
        }
    ]


def bounded_activation(prediction: Any) -> tuple[str, float, float] | None:
    """(activation, low, high) when the prediction is a bounded activation's output, up to reshapes."""
    node = getattr(prediction, "grad_fn", None)
    for _ in range(8):
        if node is None:
            return None
        kind = type(node).__name__
        if kind in BOUNDED:
            return BOUNDED[kind]
        if kind not in RESHAPES:
            return None
        node = next((n for n, _ in node.next_functions if n is not None), None)
    return None


def _reachable(name: str, prediction: Any, target: Any, torch: Any) -> list[dict[str, Any]]:
    if name not in REGRESSION or not target.is_floating_point():
        return []
    bounded = bounded_activation(prediction)
    if bounded is None:
        return []
    activation, low, high = bounded
    return _outside(name, "unreachable", target, low, high, torch, activation=activation)


def _class_targets(name: str, call: dict, logits: Any, target: Any, torch: Any) -> list[dict[str, Any]]:
    base = {"kind": "target_out_of_range", "loss": name, "total": int(target.numel())}
    same_shape = target.shape == logits.shape and logits.dim() > 1
    if not target.is_floating_point():
        if same_shape and target.dtype != torch.bool:  # one-hot integers where class ids are expected
            return [dict(base, problem="one_hot_ids", target_shape=list(target.shape), sample=None)]
        ignore = call.get("ignore_index", -100)
        with torch.no_grad():
            kept = int((target != ignore).sum())
        if kept == 0 and call.get("reduction", "mean") == "mean":
            return [dict(base, problem="all_ignored", ignore_index=ignore, sample=None)]
        return []
    if not same_shape:  # float class ids: the loss wants integers
        return [dict(base, problem="float_ids", target_shape=list(target.shape), sample=None)]
    if name == "nll_loss":
        return [dict(base, problem="one_hot_floats", target_shape=list(target.shape), sample=None)]
    return _outside(name, "range", target, 0.0, 1.0, torch)  # class probabilities, soft labels: fine


def _ctc(call: dict, records: list, torch: Any) -> None:
    try:  # lengths come as tensors, lists or tuples
        inputs, targets = torch.as_tensor(call.get("input_lengths")), torch.as_tensor(call.get("target_lengths"))
    except (TypeError, RuntimeError, ValueError):
        return
    if not inputs.numel() or inputs.numel() != targets.numel():
        return
    with torch.no_grad():
        short = inputs.reshape(-1).to(targets.device) < targets.reshape(-1)
        values = torch.stack([short.sum(), torch.argmax(short.to(torch.uint8))]).tolist()
    count, first = int(values[0]), int(values[1])
    if count:
        records.append(
            {
                "kind": "target_out_of_range",
                "loss": "ctc_loss",
                "problem": "ctc_lengths",
                "out_of_range": count,
                "total": int(short.numel()),
                "sample": first,
                "input_length": int(inputs.reshape(-1)[first]),
                "target_length": int(targets.reshape(-1)[first]),
                "zero_infinity": bool(call.get("zero_infinity", False)),
                "source": user_source(),
                "tensor": None,
            }
        )


def watch_loss_sign(func: Any, output: Any, watched: list) -> None:
    """Hook a loss call's output so the backward records the sign it enters the total with."""
    import torch

    if func not in _signatures() or not isinstance(output, torch.Tensor) or not output.requires_grad:
        return
    entry: dict[str, Any] = {"loss": func.__name__, "source": user_source(), "grad": None}

    def record(grad: Any) -> None:
        entry["grad"] = grad.detach().float().sum()

    entry["handle"] = output.register_hook(record)
    watched.append(entry)


def release_loss_hooks(watched: list) -> None:
    """Remove the hooks :func:`watch_loss_sign` put on the loss calls' outputs (their grads stay)."""
    for entry in watched:
        entry.pop("handle").remove()


def loss_sign_records(reached: list, signs: list[float]) -> list[dict[str, Any]]:
    """One ``loss_maximized`` record when every loss call that reached the total did so negated.

    ``reached``: the watched calls whose output got a gradient; ``signs``: those gradients, read back
    with the traced pass's other statistics."""
    if not reached or not all(sign < 0 for sign in signs):
        return []
    first = reached[0]
    return [
        {
            "kind": "loss_maximized",
            "loss": first["loss"],
            "losses": sorted({entry["loss"] for entry in reached}),
            "d_total_d_loss": signs[0],
            "source": first["source"],
            "tensor": None,
            "sample": None,
        }
    ]
