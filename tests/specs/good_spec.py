"""A build file that imports a sibling module, takes --set values, and returns a mapping."""

import torch
from helper_module import WIDTH  # a sibling import: the file's folder is on sys.path
from torch import nn


def build(steps: int = 2, lr: float = 1e-3, amp=None, fixed: bool = False, name: str = "x"):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, WIDTH, generator=g), torch.randn(4, 1, generator=g)) for _ in range(steps)]
    return {
        "model": nn.Sequential(nn.Linear(WIDTH, 8), nn.ReLU(), nn.Linear(8, 1)),
        "data": data,
        "loss": lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
        "lr": lr,
        "amp": amp,
        "config": {"fixed": fixed, "name": name},
    }


class Bundle:
    def __init__(self):
        self.model = nn.Linear(WIDTH, 1)
        self.data = [torch.randn(3, WIDTH)]
        self.loss = lambda m, b: m(b).pow(2).mean()


def build_object():
    return Bundle()


def build_raises():
    return helper_that_fails()


def helper_that_fails():
    raise ValueError("dataset path /data/train.parquet not found")


def build_not_a_module():
    return {"model": "resnet", "data": [torch.zeros(1)]}


def build_empty_data():
    return {"model": nn.Linear(2, 1), "data": []}


def build_no_data():
    return {"model": nn.Linear(2, 1)}


def build_list():
    return [nn.Linear(2, 1)]


def build_bad_amp():
    return {"model": nn.Linear(2, 1), "data": [torch.zeros(1, 2)], "amp": "fp8"}


def build_vector_loss():
    return {"model": nn.Linear(2, 1), "data": [torch.zeros(3, 2)], "loss": lambda m, b: m(b)}


def build_data_raises():
    def gen():
        raise OSError("disk unplugged")
        yield

    return {"model": nn.Linear(2, 1), "data": gen()}


def build_index_error():
    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.vocab = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 1)

        def forward(self, ids):
            return self.out(self.vocab(ids)).mean()

    return {"model": Lookup(), "data": [torch.tensor([[1, 2, 15]])]}


def build_chatty():
    print("building the model...")  # user code that prints must not break --format json

    class Chatty(nn.Linear):
        def forward(self, x):
            print("forward!")
            return super().forward(x)

    return {"model": Chatty(WIDTH, 1), "data": [torch.randn(3, WIDTH)], "loss": lambda m, b: m(b).pow(2).mean()}
