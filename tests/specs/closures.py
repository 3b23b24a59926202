"""An LBFGS (closure) optimizer and a gradient-penalty loss (torch.autograd.grad inside the loss)."""

import torch
from torch import nn


def build(kind: str = "lbfgs"):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 1, generator=g)
    data = []
    for _ in range(4):
        x = torch.randn(32, 6, generator=g)
        data.append((x, x @ w + 0.1 * torch.randn(32, 1, generator=g)))
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    if kind == "lbfgs":

        def opt(params, lr):
            return torch.optim.LBFGS(params, lr=lr, max_iter=4)

        return {
            "model": model,
            "data": data,
            "optimizer": opt,
            "lr": 0.5,
            "loss": lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
        }

    # WGAN-GP style critic: gradient penalty inside the loss
    def loss(m, b):
        x = b[0].clone().requires_grad_(True)
        out = m(x)
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return nn.functional.mse_loss(out, b[1]) + 0.1 * ((grad.norm(dim=1) - 1) ** 2).mean()

    return {"model": model, "data": data, "loss": loss, "lr": 1e-3}
