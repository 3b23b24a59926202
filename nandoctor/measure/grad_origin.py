"""Where gradients first turn non-finite, down to the autograd op and the module that made it.

Run only when the cheap traced pass saw a finite forward with non-finite gradients. Each
autograd node is tagged with the innermost module that was running when it was created: at
every module hook, the nodes created since the previous hook (reachable from the tensors at
hand and not tagged yet) belong to the module that was running in between. Hooks on every
node then find the first node whose incoming gradient is finite while its outgoing one is not.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from nandoctor.measure.hooks import ACCUMULATE, module_names, ours, tag_graph
from nandoctor.measure.ops import SOURCE_KEY, node_sources, restore_rng
from nandoctor.measure.trace import float_tensors

_TAG = "nandoctor_module"
_LOSS = "<loss function>"


def _grad_fns(tensors: list[Any]) -> list[Any]:
    return [t.grad_fn for t in tensors if t.grad_fn is not None]


def _all_nodes(root: Any) -> list[Any]:
    seen, order, todo = set(), [], [root]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return order


def _bounded(torch: Any, grads: list[Any]) -> Any:
    """Every value of ``grads`` squares to a finite number of its dtype."""
    if not grads:
        return torch.tensor(True)
    return torch.stack(
        [(g.abs().max() <= torch.finfo(g.dtype).max ** 0.5).cpu() if g.numel() else torch.tensor(True) for g in grads]
    ).all()


def find_gradient_origin(ctx: Any, batch_index: int, component: str | None = None) -> dict[str, Any] | None:
    """Re-run one batch and return ``{"op", "module", "loss_side", "source"}`` for the first bad node.

    With ``component``, the search follows that loss component's gradient instead of the total's.
    """
    return gradient_origin(ctx, batch_index, component)[0]


def gradient_origin(
    ctx: Any,
    batch_index: int,
    component: str | None = None,
    rng: tuple[Any, dict[Any, Any]] | None = None,
    squares: bool = False,
) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`find_gradient_origin`, and in words why no node was found when none was.

    ``rng``: the generator states the failing pass started from, so the re-run draws its dropout
    masks (a step after training: the traced pass drew them, and other masks may not fail).
    ``squares``: when every gradient is finite, find the node whose outgoing gradient first grows past
    the square root of its dtype's largest value: its square overflows, so the gradient norm (what
    clipping and the step's NaN check read) is Inf while each gradient is finite (``"norm_overflow"``).
    """
    import torch

    model, batch = ctx.model, ctx.batches[batch_index]
    names = module_names(model)
    running: list[str] = []
    records: list[tuple[str, str, Any, Any, str | None]] = []
    bounded: list[list[Any]] = []  # per record: incoming, outgoing below sqrt(dtype max) (``squares``)

    def pre_hook(module, args, kwargs):
        tag_graph(_grad_fns(float_tensors((args, kwargs))), _TAG, running[-1] if running else _LOSS)
        running.append(names.get(id(module), type(module).__name__))

    def post_hook(module, args, kwargs, output):
        tag_graph(_grad_fns(float_tensors(output)), _TAG, running.pop())

    def node_hook(node):
        tag = node.metadata.get(_TAG, _LOSS)

        def record(grad_inputs, grad_outputs):
            with torch.no_grad():
                incoming = [torch.isfinite(g).all() for g in grad_outputs if g is not None]
                outgoing = [torch.isfinite(g).all() for g in grad_inputs if g is not None]
                records.append(
                    (
                        node.name(),
                        tag,
                        torch.stack(incoming).all() if incoming else None,
                        torch.stack(outgoing).all() if outgoing else None,
                        node.metadata.get(SOURCE_KEY),
                    )
                )
                if squares:
                    bounded.append(
                        [_bounded(torch, [g for g in grads if g is not None]) for grads in (grad_outputs, grad_inputs)]
                    )

        return record

    for param in model.parameters():
        param.grad = None
    if rng is not None:
        restore_rng(rng)
    with ExitStack() as hooks:
        for module in model.modules():
            hooks.enter_context(module.register_forward_pre_hook(ours(pre_hook), with_kwargs=True))
            hooks.enter_context(module.register_forward_hook(ours(post_hook), with_kwargs=True))
        hooks.enter_context(node_sources())  # each node learns the user's line that made it
        result = ctx.loss(batch)
    loss = result.components[component] if component is not None else result.total
    if loss.grad_fn is None:
        return None, "the loss has no autograd graph to search"
    tag_graph([loss.grad_fn], _TAG, _LOSS)
    with ExitStack() as hooks:
        for node in _all_nodes(loss.grad_fn):
            if node.name() != ACCUMULATE:
                hooks.enter_context(node.register_hook(ours(node_hook(node))))
        try:
            loss.backward()
        except Exception as exc:  # the cheap pass already reported backward crashes
            return None, f"the re-run backward raised {type(exc).__name__}"
    flags = (
        torch.stack(
            [
                torch.stack([f if f is not None else torch.tensor(True, device=loss.device) for f in (inc, out)]).to(
                    loss.device
                )
                for _, _, inc, out, _ in records
            ]
        ).tolist()
        if records
        else []
    )
    found = _first_break(records, flags)
    if found is not None:
        return found, None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if squares and bounded:
        small = torch.stack([torch.stack(pair).to(loss.device) for pair in bounded]).tolist()
        found = _first_break(records, small)
        if found is not None:
            return dict(found, norm_overflow=True), None
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        return None, (
            "every autograd op passed on finite gradients: they turned non-finite only where autograd "
            "summed them into a parameter's .grad"
        )
    return None, "the re-run of this batch's backward gave finite gradients (it did not fail again)"


def _first_break(records: list[Any], flags: list[Any]) -> dict[str, Any] | None:
    """The first op whose incoming gradients pass the check and whose outgoing ones do not."""
    for (op, tag, _, _, source), (incoming_ok, outgoing_ok) in zip(records, flags):
        if incoming_ok and not outgoing_ok:
            return {"op": op, "module": None if tag == _LOSS else tag, "loss_side": tag == _LOSS, "source": source}
    return None
