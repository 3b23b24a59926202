"""Training setups for the learning-rate ground-truth benchmark (``scripts/bench_lr_truth.py``).

Each ``build_<name>()`` is a build function in the shape of CONTRACT.md §1, so nandoctor takes it
as ``nandoctor lr-sweep scripts/lr_truth_setups.py:build_<name>``. Besides the contract's keys each
returns ``heldout``: a list of batches from the same distribution that are never trained on (the
benchmark scores every rate on them; nandoctor ignores keys it does not know).

The data are synthetic but learnable (a teacher network, a template, a Markov chain or a counting
rule, with a little label noise so that the best loss stays above zero), and deterministic: they
come from their own generators, so only the model's initial weights depend on the torch seed that
the caller sets before building. Each ``lr`` is a plausible user default (1e-3 for Adam, 5e-5 for
a Hugging Face model, 1e-2 / 0.1 for SGD), not the best rate. The models are tiny: a training step
takes a few milliseconds on one CPU thread.

Only torch is needed, except ``build_gpt2_lm`` and ``build_resnet_cnn``, which build their models
from ``transformers`` configs (``pip install 'nandoctor[bench]'``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

STREAM_BATCHES = 320  # the training stream holds enough batches for 300+ steps without repeating
HELDOUT_BATCHES = 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _loader(tensors, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A plain DataLoader over tensors; a shuffled one draws its order from its own generator."""
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=True,
        generator=_gen(seed) if shuffle else None,
    )


def _split(tensors, n_train: int, batch_size: int, shuffle: bool = False):
    """The first ``n_train`` samples as the training stream, the rest as held-out batches."""
    train = [t[:n_train] for t in tensors]
    rest = [t[n_train:] for t in tensors]
    heldout = [tuple(t[i * batch_size : (i + 1) * batch_size] for t in rest) for i in range(len(rest[0]) // batch_size)]
    return _loader(train, batch_size, shuffle), heldout


def _xy_loss_mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def _xy_loss_ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _adam(params, lr):
    return torch.optim.Adam(params, lr=lr)


def _adamw(params, lr):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def _sgd_momentum(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _sgd(params, lr):
    return torch.optim.SGD(params, lr=lr)


def _teacher_regression(n: int, d_in: int, seed: int, noise: float):
    """y = a fixed random two-layer tanh network of x, plus Gaussian noise; y has unit scale."""
    g = _gen(seed)
    w1 = torch.randn(d_in, 32, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(32, 1, generator=g) / math.sqrt(32)
    x = torch.randn(n, d_in, generator=g)
    clean = torch.tanh(2 * x @ w1) @ w2
    clean = (clean - clean.mean()) / clean.std()
    return x, clean + noise * torch.randn(n, 1, generator=g)


def _teacher_classes(n: int, d_in: int, classes: int, seed: int, flip: float):
    """Labels = argmax of a fixed random tanh network of x; a share ``flip`` of them replaced at random."""
    g = _gen(seed)
    w1 = torch.randn(d_in, 64, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(64, classes, generator=g) / math.sqrt(64)
    x = torch.randn(n, d_in, generator=g)
    y = (torch.tanh(2 * x @ w1) @ w2).argmax(1)
    noisy = torch.rand(n, generator=g) < flip
    y[noisy] = torch.randint(0, classes, (int(noisy.sum()),), generator=g)
    return x, y


def _markov_tokens(n_seq: int, seq_len: int, vocab: int, seed: int, order: int = 2) -> torch.Tensor:
    """Sequences from a fixed Markov chain of order 1 or 2: each context has 3 likely successors."""
    g = _gen(seed)
    successors = torch.randint(0, vocab, (vocab, vocab, 3), generator=g)
    if order == 1:
        successors = successors[:1].expand(vocab, vocab, 3)  # the token two back does not matter
    probs = torch.tensor([0.6, 0.25, 0.1])  # and 0.05 uniform over the vocabulary
    seqs = torch.empty(n_seq, seq_len, dtype=torch.long)
    seqs[:, :2] = torch.randint(0, vocab, (n_seq, 2), generator=g)
    for t in range(2, seq_len):
        choice = torch.multinomial(probs.expand(n_seq, 3), 1, generator=g).squeeze(1)
        nxt = successors[seqs[:, t - 2], seqs[:, t - 1], choice]
        uniform = torch.rand(n_seq, generator=g) < 0.05
        nxt[uniform] = torch.randint(0, vocab, (int(uniform.sum()),), generator=g)
        seqs[:, t] = nxt
    return seqs


# --- 1. tabular regression MLP, Adam -------------------------------------------------------------


def build_mlp_regression():
    """A 16-feature regression MLP against a teacher network, Adam at the usual 1e-3."""
    bs = 64
    x, y = _teacher_regression((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 16, seed=101, noise=0.3)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_mse,
        "optimizer": _adam,
        "lr": 1e-3,
        "grad_clip": None,
    }


# --- 2. a small ResNet (transformers ResNetConfig) on noisy shifted templates, AdamW ------------


def _template_images(n: int, classes: int, size: int, seed: int):
    """Each class is a fixed smooth random pattern, shifted by up to 3 pixels, scaled, in noise."""
    g = _gen(seed)
    templates = F.avg_pool2d(torch.randn(classes, 1, size, size, generator=g), 3, 1, 1) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    shifts = torch.randint(-3, 4, (n, 2), generator=g)
    amp = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    imgs = templates[y].clone()
    for i in range(n):
        imgs[i] = torch.roll(imgs[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return amp * imgs + 1.2 * torch.randn(n, 1, size, size, generator=g), y


def build_resnet_cnn():
    """A two-stage ResNet from transformers' ResNetConfig on 16x16 images, AdamW at 1e-3."""
    from transformers import ResNetConfig, ResNetForImageClassification

    bs = 32
    x, y = _template_images((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 4, 16, seed=202)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    config = ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4
    )
    model = ResNetForImageClassification(config)
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": lambda m, b: m(pixel_values=b[0], labels=b[1]).loss,
        "optimizer": _adamw,
        "lr": 1e-3,
        "grad_clip": None,
    }


# --- 3. a small GPT-2 (transformers GPT2Config) language model, AdamW at the HF default ----------


def build_gpt2_lm():
    """A 2-layer GPT-2 on a first-order Markov chain; AdamW at 5e-5 (the Hugging Face Trainer default)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    bs, seq, vocab = 16, 32, 48
    tokens = _markov_tokens((STREAM_BATCHES + HELDOUT_BATCHES) * bs, seq, vocab, seed=303, order=1)
    train, held = tokens[: STREAM_BATCHES * bs], tokens[STREAM_BATCHES * bs :]
    data = DataLoader([{"input_ids": t, "labels": t} for t in train], batch_size=bs)
    heldout = [
        {"input_ids": held[i * bs : (i + 1) * bs], "labels": held[i * bs : (i + 1) * bs]}
        for i in range(HELDOUT_BATCHES)
    ]
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=seq,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": lambda m, b: m(**b).loss,
        "optimizer": _adamw,
        "lr": 5e-5,
        "grad_clip": None,
    }


# --- 4. an LSTM language model, Adam -------------------------------------------------------------


class LSTMLM(nn.Module):
    def __init__(self, vocab: int, dim: int = 32, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def _lm_loss(model, batch):
    (tokens,) = batch
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def build_lstm_lm():
    """A one-layer LSTM language model on a second-order Markov chain, Adam at 1e-3."""
    bs, seq, vocab = 16, 24, 32
    tokens = _markov_tokens((STREAM_BATCHES + HELDOUT_BATCHES) * bs, seq, vocab, seed=404)
    data, heldout = _split((tokens,), STREAM_BATCHES * bs, bs)
    return {
        "model": LSTMLM(vocab),
        "data": data,
        "heldout": heldout,
        "loss": _lm_loss,
        "optimizer": _adam,
        "lr": 1e-3,
        "grad_clip": None,
    }


# --- 5. a BatchNorm MLP classifier, SGD with momentum --------------------------------------------


def build_bn_mlp_sgd():
    """A 20-feature, 10-class MLP with BatchNorm; SGD with momentum 0.9 at 1e-2."""
    bs = 64
    x, y = _teacher_classes((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 20, 10, seed=505, flip=0.1)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    model = nn.Sequential(
        nn.Linear(20, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_ce,
        "optimizer": _sgd_momentum,
        "lr": 1e-2,
        "grad_clip": None,
    }


# --- 6. small data, AdamW: a wide MLP on only 256 labelled samples ------------------------------


def build_small_data_adamw():
    """A wide 20-feature, 4-class MLP on only 256 training samples (16 batches, reshuffled each epoch,
    so 300 steps are ~19 epochs and it can overfit); AdamW at 1e-3 with weight decay 0.01."""
    bs, n_train = 16, 256
    x, y = _teacher_classes(n_train + HELDOUT_BATCHES * 64, 20, 4, seed=606, flip=0.1)
    data = _loader((x[:n_train], y[:n_train]), bs, shuffle=True, seed=607)
    heldout = [
        (x[n_train + i * 64 : n_train + (i + 1) * 64], y[n_train + i * 64 : n_train + (i + 1) * 64])
        for i in range(HELDOUT_BATCHES)
    ]
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_ce,
        "optimizer": _adamw,
        "lr": 1e-3,
        "grad_clip": None,
    }


# --- 7. a GRU sequence regressor, plain SGD with gradient clipping -------------------------------


class GRURegressor(nn.Module):
    def __init__(self, d_in: int = 4, hidden: int = 32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out)


def build_gru_clip():
    """A GRU predicting, at each step, tanh of a fixed filter over the last 5 inputs; SGD at 0.1, clip 1.0."""
    bs, seq, d_in = 32, 20, 4
    g = _gen(707)
    n = (STREAM_BATCHES + HELDOUT_BATCHES) * bs
    x = torch.randn(n, seq, d_in, generator=g)
    w = torch.randn(5, d_in, generator=g) / math.sqrt(5 * d_in)
    padded = F.pad(x, (0, 0, 4, 0))
    filt = sum(padded[:, 4 - k : 4 - k + seq] @ w[k] for k in range(5))
    y = (torch.tanh(2 * filt) + 0.1 * torch.randn(n, seq, generator=g)).unsqueeze(-1)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    return {
        "model": GRURegressor(d_in),
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_mse,
        "optimizer": _sgd,
        "lr": 0.1,
        "grad_clip": 1.0,
    }


# --- 8. a deep plain MLP (10 linear layers, no normalization), Adam ------------------------------


def build_deep_mlp():
    """Ten Linear+ReLU layers of width 64, default init, no normalization; regression, Adam at 1e-3."""
    bs = 64
    x, y = _teacher_regression((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 16, seed=808, noise=0.3)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    layers, width = [], 16
    for _ in range(9):
        layers += [nn.Linear(width, 64), nn.ReLU()]
        width = 64
    model = nn.Sequential(*layers, nn.Linear(64, 1))
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_mse,
        "optimizer": _adam,
        "lr": 1e-3,
        "grad_clip": None,
    }


# --- 9. a small pure-torch CNN, SGD with momentum ------------------------------------------------


def build_small_cnn():
    """Two conv layers and a linear head on the 16x16 template images; SGD momentum 0.9 at 1e-2."""
    bs = 32
    x, y = _template_images((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 4, 16, seed=909)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 4),
    )
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_ce,
        "optimizer": _sgd_momentum,
        "lr": 1e-2,
        "grad_clip": None,
    }


SETUPS = {
    name[len("build_") :]: fn for name, fn in list(globals().items()) if name.startswith("build_") and callable(fn)
}
