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


# --- setups re-expressed from public training code -----------------------------------------------
# Each names its source. The architecture, optimizer, rate, clipping and batch shape follow the
# source; the model is shrunk and the data are generated (the source's data set is not downloaded),
# keeping what makes the learning problem what it is: a small set that a long run overfits, classes
# read row by row by a recurrent net, a language model on a chain with real structure.


def _correlated_tabular(n: int, d: int, latent: int, seed: int, flip: float):
    """Tabular binary data like a diagnostic set: ``d`` standardised, strongly correlated features
    from ``latent`` hidden factors; the label is a smooth nonlinear function of the factors, a share
    ``flip`` of labels flipped."""
    g = _gen(seed)
    z = torch.randn(n, latent, generator=g)
    mix = torch.randn(latent, d, generator=g)
    x = z @ mix + 0.5 * torch.randn(n, d, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    w = torch.randn(latent, generator=g)
    logit = 2.5 * (z @ w) / math.sqrt(latent) + 0.8 * (z[:, 0] * z[:, 1])
    y = (logit > 0).float()
    noisy = torch.rand(n, generator=g) < flip
    y[noisy] = 1 - y[noisy]
    return x, y.unsqueeze(1)


def build_tabular_small_bce():
    """Small data: a 30-feature binary classifier on 455 training samples (the size of the Wisconsin
    breast-cancer training split), one hidden layer of 64, BCE with logits, Adam at 1e-3, batches of
    32 reshuffled each epoch (300 steps are ~21 epochs: a long run overfits).

    Source: zealsnair/Breast_Cancer_Detection README.md (sklearn's load_breast_cancer, StandardScaler,
    a 30 -> 64 -> 1 feed-forward net, Adam, binary cross-entropy, 100 epochs). Data generated here:
    correlated features from 6 latent factors, a nonlinear label, 5% of labels flipped."""
    n_train, bs = 455, 32
    x, y = _correlated_tabular(n_train + HELDOUT_BATCHES * 64, 30, 6, seed=1101, flip=0.05)
    data = _loader((x[:n_train], y[:n_train]), bs, shuffle=True, seed=1102)
    heldout = [
        (x[n_train + i * 64 : n_train + (i + 1) * 64], y[n_train + i * 64 : n_train + (i + 1) * 64])
        for i in range(HELDOUT_BATCHES)
    ]
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 1))
    return {
        "model": model,
        "data": data,
        "heldout": heldout,
        "loss": lambda m, b: F.binary_cross_entropy_with_logits(m(b[0]), b[1]),
        "optimizer": _adam,
        "lr": 1e-3,
        "grad_clip": None,
    }


class SELUNet(nn.Module):
    """A deep plain MLP: ``depth`` Linear+SELU layers, LeCun-normal init, log-softmax output; no normalization."""

    def __init__(self, d_in: int, width: int, classes: int, depth: int):
        super().__init__()
        layers, fan = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(fan, width), nn.SELU()]
            fan = width
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, math.sqrt(1.0 / module.weight.shape[0]))
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=-1)


def build_snn_deep_sgd():
    """A deep plain MLP with plain SGD: 8 Linear+SELU layers of width 64 (self-normalizing, no
    normalization layer), LeCun-normal init, NLL on log-softmax, batches of 128, SGD at the source's 1e-5.

    Source: MaximeVandegar/Papers-in-100-Lines-of-Code Self_Normalizing_Neural_Networks/selu.py
    (an 8-deep SELU net of width 784 on standardised MNIST, torch.optim.SGD lr=1e-5, batch 128).
    Data generated here: 10 classes from a teacher network on 32 standardised features."""
    bs = 128
    x, y = _teacher_classes((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 32, 10, seed=1201, flip=0.05)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    return {
        "model": SELUNet(32, 64, 10, 8),
        "data": data,
        "heldout": heldout,
        "loss": lambda m, b: F.nll_loss(m(b[0]), b[1]),
        "optimizer": _sgd,
        "lr": 1e-5,
        "grad_clip": None,
    }


class RowLSTMClassifier(nn.Module):
    """An image read row by row by an LSTM; the last step's output classifies it."""

    def __init__(self, width: int, hidden: int, classes: int):
        super().__init__()
        self.rnn = nn.LSTM(width, hidden, batch_first=True)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.out(out[:, -1, :])


def build_lstm_row_classifier():
    """A recurrent classifier: an LSTM reads each 14x14 image as 14 rows of 14 features and classifies
    it from the last step (10 classes); Adam at the source's 1e-2, batches of 64.

    Source: MorvanZhou/PyTorch-Tutorial tutorial-contents/402_RNN_classifier.py (MNIST rows into an
    LSTM of 64 units, Linear on the last output, Adam lr=0.01, batch 64). Data generated here: shifted,
    scaled class templates in noise."""
    bs = 64
    x, y = _template_images((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 10, 14, seed=1301)
    data, heldout = _split((x.squeeze(1), y), STREAM_BATCHES * bs, bs)
    return {
        "model": RowLSTMClassifier(14, 32, 10),
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_ce,
        "optimizer": _adam,
        "lr": 1e-2,
        "grad_clip": None,
    }


class WordLM(nn.Module):
    """Embedding, a 2-layer LSTM with dropout between and after, a linear decoder."""

    def __init__(self, vocab: int, dim: int, layers: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, layers, dropout=dropout, batch_first=True)
        self.decoder = nn.Linear(dim, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens):
        out, _ = self.rnn(self.drop(self.encoder(tokens)))
        return self.decoder(self.drop(out))


def _zipf_chain_tokens(n_seq: int, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    """Text-like sequences: a first-order chain whose tokens follow a Zipf law (a few are frequent, as
    words are); each token has 3 likely successors, drawn from that law, then 30% the law itself."""
    g = _gen(seed)
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    zipf = (zipf / zipf.sum()).float()
    successors = torch.multinomial(zipf.expand(vocab, vocab), 3, generator=g)
    probs = torch.tensor([0.4, 0.2, 0.1, 0.3])
    seqs = torch.empty(n_seq, seq_len, dtype=torch.long)
    seqs[:, 0] = torch.multinomial(zipf, n_seq, replacement=True, generator=g)
    for t in range(1, seq_len):
        choice = torch.multinomial(probs.expand(n_seq, 4), 1, generator=g).squeeze(1)
        background = torch.multinomial(zipf, n_seq, replacement=True, generator=g)
        follow = successors[seqs[:, t - 1], choice.clamp(max=2)]
        seqs[:, t] = torch.where(choice == 3, background, follow)
    return seqs


def build_word_lm_sgd_clip():
    """A 2-layer LSTM language model trained the classic way: plain SGD at 20 with gradient clipping
    at 0.25, dropout 0.2, batches of 20 sequences of 20 tokens.

    Source: pytorch/examples word_language_model/main.py (RNNModel LSTM, 2 layers, emsize = nhid = 200,
    dropout 0.2, lr 20 applied as p -= lr * grad, clip_grad_norm 0.25, batch 20, bptt 35). Data generated
    here: a first-order chain over 40 Zipf-distributed tokens (the hidden state is not carried across batches)."""
    bs, seq, vocab = 20, 21, 40
    tokens = _zipf_chain_tokens((STREAM_BATCHES + HELDOUT_BATCHES) * bs, seq, vocab, seed=1401)
    data, heldout = _split((tokens,), STREAM_BATCHES * bs, bs)
    return {
        "model": WordLM(vocab, 32, 2, 0.2),
        "data": data,
        "heldout": heldout,
        "loss": _lm_loss,
        "optimizer": _sgd,
        "lr": 20.0,
        "grad_clip": 0.25,
    }


class ExampleMNISTNet(nn.Module):
    """Two 3x3 convolutions, max-pool, dropout 0.25, a hidden linear layer, dropout 0.5, log-softmax."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return F.log_softmax(self.fc2(self.dropout2(x)), dim=1)


def _adadelta(params, lr):
    return torch.optim.Adadelta(params, lr=lr)


def build_mnist_adadelta():
    """The PyTorch MNIST example's CNN and optimizer: Adadelta at lr 1.0, NLL on log-softmax, batch 64,
    on 12x12 single-channel images of 10 classes.

    Source: pytorch/examples mnist/main.py (Net: conv 32, conv 64, max-pool, dropout 0.25, fc 128,
    dropout 0.5; optim.Adadelta lr=1.0, batch 64; its StepLR decay is per epoch, not used in 300 steps).
    Data generated here: shifted, scaled class templates in noise."""
    bs = 64
    x, y = _template_images((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 10, 12, seed=1501)
    data, heldout = _split((x, y), STREAM_BATCHES * bs, bs)
    return {
        "model": ExampleMNISTNet(10),
        "data": data,
        "heldout": heldout,
        "loss": lambda m, b: F.nll_loss(m(b[0]), b[1]),
        "optimizer": _adadelta,
        "lr": 1.0,
        "grad_clip": None,
    }


def _colour_templates(n: int, classes: int, size: int, seed: int):
    """3-channel class templates (smooth random colour patterns), shifted by up to 2 pixels, in noise."""
    g = _gen(seed)
    templates = F.avg_pool2d(torch.randn(classes, 3, size, size, generator=g), 5, 1, 2) * 4
    y = torch.randint(0, classes, (n,), generator=g)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    imgs = templates[y].clone()
    for i in range(n):
        imgs[i] = torch.roll(imgs[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return imgs + 1.0 * torch.randn(n, 3, size, size, generator=g), y


class LeNetTutorial(nn.Module):
    """conv 5x5 (6), pool, conv 5x5 (16), pool, then 120 -> 84 -> classes, ReLU throughout."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 2 * 2, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = torch.flatten(self.pool(F.relu(self.conv2(x))), 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def build_cifar_tutorial_sgd():
    """The PyTorch "training a classifier" tutorial: a LeNet on 3-channel 20x20 images, cross-entropy,
    SGD at 1e-3 with momentum 0.9 and batches of only 4.

    Source: pytorch/tutorials beginner_source/blitz/cifar10_tutorial.py (Net: conv 6 and 16 of 5x5,
    max-pool, fc 120 / 84 / 10; optim.SGD lr=0.001 momentum=0.9; batch_size 4). Data generated here:
    shifted colour templates of 10 classes in noise; held out in batches of 64."""
    bs = 4
    n_train = STREAM_BATCHES * bs
    x, y = _colour_templates(n_train + HELDOUT_BATCHES * 64, 10, 20, seed=1601)
    data = _loader((x[:n_train], y[:n_train]), bs)
    heldout = [
        (x[n_train + i * 64 : n_train + (i + 1) * 64], y[n_train + i * 64 : n_train + (i + 1) * 64])
        for i in range(HELDOUT_BATCHES)
    ]
    return {
        "model": LeNetTutorial(10),
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_ce,
        "optimizer": _sgd_momentum,
        "lr": 1e-3,
        "grad_clip": None,
    }


def _blend_images(n: int, side: int, seed: int):
    """Images in [0, 1] on a 3-dimensional manifold: a sigmoid of a random mix of 3 smooth patterns."""
    g = _gen(seed)
    basis = F.avg_pool2d(torch.randn(3, 1, side, side, generator=g), 3, 1, 1).reshape(3, side * side) * 3
    codes = torch.randn(n, 3, generator=g)
    return torch.sigmoid(codes @ basis + 0.1 * torch.randn(n, side * side, generator=g))


class TanhAutoencoder(nn.Module):
    """Encoder d -> 32 -> 16 -> 3 with tanh, decoder back to d with a sigmoid output."""

    def __init__(self, d: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, d))

    def forward(self, x):
        return torch.sigmoid(self.decoder(self.encoder(x)))


def build_tanh_autoencoder():
    """An autoencoder with a 3-unit bottleneck (tanh layers, sigmoid output), MSE reconstruction,
    Adam at the source's 5e-3, batches of 64, on 8x8 images.

    Source: MorvanZhou/PyTorch-Tutorial tutorial-contents/404_autoencoder.py (784 -> 128 -> 64 -> 12 -> 3
    with tanh and a mirrored decoder ending in a sigmoid, MSELoss, Adam lr=0.005, batch 64). Data
    generated here: images on a 3-dimensional manifold, so the bottleneck can hold them."""
    bs = 64
    x = _blend_images((STREAM_BATCHES + HELDOUT_BATCHES) * bs, 8, seed=1701)
    data, heldout = _split((x, x), STREAM_BATCHES * bs, bs)
    return {
        "model": TanhAutoencoder(64),
        "data": data,
        "heldout": heldout,
        "loss": _xy_loss_mse,
        "optimizer": _adam,
        "lr": 5e-3,
        "grad_clip": None,
    }


SETUPS = {
    name[len("build_") :]: fn for name, fn in list(globals().items()) if name.startswith("build_") and callable(fn)
}
