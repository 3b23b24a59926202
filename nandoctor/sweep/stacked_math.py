"""The arithmetic of a stacked pass: K copies of the weights through the user's loss, and their updates.

Kept apart from the pass's bookkeeping (``stacked.py``) because it must match torch's own code line
for line: the gradient norm and clipping of ``clip_grad_norm_``, and the single-tensor updates of
``torch.optim.Adam``/``AdamW``/``SGD`` (``_single_tensor_adam``, ``_single_tensor_sgd``), with each
slice's own rate as a (K, 1, ...) column. Scalars are formed in double precision and rounded to the
parameter's dtype once, as torch's kernels round a Python scalar, so a slice's weights follow its
sequential run to float rounding (the batched matrix products round differently too).
"""

from __future__ import annotations

import math
from typing import Any

from nandoctor.batches import iter_tensors
from nandoctor.loss import compute_loss
from nandoctor.step import autocast


def _column(values: list[float], like: Any) -> Any:
    """Per-slice scalars as a (K, 1, ..., 1) tensor broadcasting against ``like``."""
    import torch

    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.dim() - 1)))


class StackedModel:
    """The trainable parameters with a leading slice dimension, and the user's loss vmapped over them.

    Normalization buffers (batch-norm running statistics, written in place by every training forward)
    get a slice per rate too; every other buffer is shared, read-only."""

    def __init__(self, setup: Any, params: list[Any], k: int):
        import torch

        self.setup = setup
        self.wrapper = _LossOf(setup)
        names = {id(p): n for n, p in self.wrapper.named_parameters(remove_duplicate=True)}
        self.originals = [p for p in params if id(p) in names]
        self.names = [names[id(p)] for p in self.originals]
        self.params = [p.detach().unsqueeze(0).repeat(k, *([1] * p.dim())).requires_grad_() for p in self.originals]
        norms = [
            (name, module)
            for name, module in self.wrapper.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._NormBase)
        ]
        self.buffer_names = [f"{name}.{b}" for name, module in norms for b, _ in module.named_buffers()]
        lookup = dict(self.wrapper.named_buffers())
        self.buffers = [lookup[n].detach().unsqueeze(0).repeat(k, *([1] * lookup[n].dim())) for n in self.buffer_names]

    def _call(self, params: Any, buffers: Any, batch: Any) -> Any:
        from torch.func import functional_call

        state = {**dict(zip(self.names, params)), **dict(zip(self.buffer_names, buffers))}
        with autocast(self.setup):
            return functional_call(self.wrapper, state, (batch,), strict=False)

    def step(self, batch: Any, clip: float | None, update: Any) -> Any:
        """One training step of every slice; (K, 2) [loss, gradient norm before clipping], on the device."""
        import torch
        from torch.func import vmap

        for p in self.params:
            p.grad = None
        losses = vmap(self._call, in_dims=(0, 0, None), randomness="same")(self.params, self.buffers, batch)
        losses.sum().backward()
        grads = [p.grad for p in self.params]
        present = [g for g in grads if g is not None]
        k = self.params[0].shape[0]
        if present:
            per_param = [torch.linalg.vector_norm(g.reshape(k, -1), 2.0, dim=1) for g in present]
            norm = torch.linalg.vector_norm(torch.stack(per_param, dim=1), 2.0, dim=1)
        else:
            norm = torch.zeros(k, device=losses.device)
        if clip and present:  # clip_grad_norm_: max_norm / (norm + 1e-6), at most 1
            coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
            for g in present:
                g.mul_(coef.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1))))
        with torch.no_grad():
            update.apply(self.params, grads)
        return torch.stack([losses.detach().float(), norm.float().to(losses.device)], dim=1)

    def keep(self, slices: list[int]) -> None:
        """Drop the slices whose runs ended: later steps cost only what is still running."""
        import torch

        index = torch.tensor(slices, device=self.params[0].device)
        self.params = [p.detach().index_select(0, index).requires_grad_() for p in self.params]
        self.buffers = [b.index_select(0, index) for b in self.buffers]

    def score(self, batches: list[Any]) -> list[tuple[float | None, float | None]]:
        """Each slice's :func:`nandoctor.step.score`: mean held-out loss and output spread, dropout off,
        batch statistics as in training, the running statistics left as they were."""
        import torch
        from torch.func import vmap

        model = self.setup.model
        outputs: list[Any] = []

        def keep_output(module: Any, args: Any, output: Any) -> None:
            if not outputs:
                for _, tensor in iter_tensors(output):
                    if tensor.is_floating_point() and tensor.dim() >= 1 and tensor.shape[0] > 1:
                        outputs.append(tensor)
                        return

        def one(params: Any, buffers: Any, batch: Any) -> Any:
            outputs.clear()
            loss = self._call(params, [b.clone() for b in buffers], batch).detach().float().reshape(())
            if not outputs:
                return torch.stack([loss, torch.full_like(loss, math.nan)])
            flat = outputs[0].detach().float().reshape(outputs[0].shape[0], -1)
            scale = flat.pow(2).mean().sqrt() + 1e-12
            return torch.stack([loss, (flat.std(dim=0).mean() / scale).to(loss.dtype)])

        dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training]
        try:
            for module in dropouts:
                module.training = False
            with torch.no_grad(), model.register_forward_hook(keep_output):
                values = [vmap(one, in_dims=(0, 0, None))(self.params, self.buffers, b) for b in batches]
        finally:
            for module in dropouts:
                module.training = True
        rows = torch.stack(values, dim=1).tolist()  # [slice][batch][loss, spread]: one read-back
        scores = []
        for row in rows:
            losses = [r[0] for r in row]
            spreads = [r[1] for r in row if not math.isnan(r[1])]
            scores.append((sum(losses) / len(losses), sum(spreads) / len(spreads) if spreads else None))
        return scores


def _LossOf(setup: Any) -> Any:
    """A module around the user's model whose forward is the user's training loss (its parameters
    are the model's, named ``model.<name>``): what ``functional_call`` runs."""
    import torch

    class LossOf(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = setup.model

        def forward(self, batch: Any) -> Any:
            return compute_loss(setup, self.model, batch).total

    return LossOf()


class StackedUpdate:
    """torch's Adam/AdamW/SGD step over stacked parameters, each slice with its own rate and decay.

    ``groups[k][g]`` is rate k's param group g (``lr``, ``weight_decay`` and the rest, the same for
    every rate); ``group_of[i]`` the group of stacked parameter i."""

    def __init__(self, kind: str, groups: list[list[dict[str, Any]]], group_of: list[int]):
        self.kind, self.groups, self.group_of = kind, groups, group_of
        self.steps = 0
        self.state: list[list[Any]] = [[] for _ in group_of]
        self.columns: dict[tuple, Any] = {}  # per-slice scalars on the device, made once (no copy a step)

    def _col(self, name: str, group: int, values: list[float], like: Any) -> Any:
        key = (name, group, like.dim(), like.dtype, like.device)
        if key not in self.columns:
            self.columns[key] = _column(values, like)
        return self.columns[key]

    def keep(self, slices: list[int]) -> None:
        import torch

        self.groups = [self.groups[i] for i in slices]
        self.columns.clear()
        for i, tensors in enumerate(self.state):
            if tensors:
                index = torch.tensor(slices, device=tensors[0].device)
                self.state[i] = [t.index_select(0, index) for t in tensors]

    def _per_slice(self, group: int, key: str) -> list[float]:
        return [rate[group][key] for rate in self.groups]

    def apply(self, params: list[Any], grads: list[Any]) -> None:
        self.steps += 1
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is None:  # torch's optimizers leave a parameter without gradient untouched
                continue
            group = self.group_of[i]
            if self.kind == "SGD":
                self._sgd(i, p, g, group)
            else:
                self._adam(i, p, g, group)

    def _adam(self, i: int, p: Any, g: Any, group: int) -> None:
        import torch

        hyper = self.groups[0][group]
        beta1, beta2 = hyper["betas"]
        lrs, decays = self._per_slice(group, "lr"), self._per_slice(group, "weight_decay")
        if hyper["maximize"]:
            g = -g
        if not self.state[i]:
            slots = 3 if hyper["amsgrad"] else 2
            self.state[i] = [torch.zeros_like(p, memory_format=torch.preserve_format) for _ in range(slots)]
        exp_avg, exp_avg_sq = self.state[i][0], self.state[i][1]
        if any(decays):
            if hyper["decoupled_weight_decay"] or self.kind == "AdamW" and hyper["decoupled_weight_decay"] is None:
                p.mul_(self._col("decay", group, [1 - lr * wd for lr, wd in zip(lrs, decays)], p))
            else:
                g = g.add(p * self._col("wd", group, decays, p))
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        if hyper["amsgrad"]:
            torch.maximum(self.state[i][2], exp_avg_sq, out=self.state[i][2])
            denom = (self.state[i][2].sqrt() / bias_correction2_sqrt).add_(hyper["eps"])
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(hyper["eps"])
        # addcdiv_(exp_avg, denom, value=-step_size) computes self + (value * t1) / t2; the step size
        # -lr / bias_correction1 from the cached -lr column: a device op, no copy from the host a step
        p.add_(exp_avg.mul(self._col("-lr", group, [-lr for lr in lrs], p) / bias_correction1).div_(denom))

    def _sgd(self, i: int, p: Any, g: Any, group: int) -> None:
        hyper = self.groups[0][group]
        lrs, decays = self._per_slice(group, "lr"), self._per_slice(group, "weight_decay")
        if hyper["maximize"]:
            g = -g
        if any(decays):
            g = g.add(p * self._col("wd", group, decays, p))
        momentum = hyper["momentum"]
        if momentum:
            if not self.state[i]:
                self.state[i] = [g.clone().detach()]
            else:
                self.state[i][0].mul_(momentum).add_(g, alpha=1 - hyper["dampening"])
            buf = self.state[i][0]
            g = g.add(buf, alpha=momentum) if hyper["nesterov"] else buf
        p.add_(g * self._col("-lr", group, [-lr for lr in lrs], p))
