"""Hugging Face architectures built from tiny configs (no downloads): BERT, GPT-2, ViT, ResNet.

transformers is imported inside each builder, so this module imports without it. Batches are
dicts whose keys the model's forward takes by name; the loss is the model's own
(``model(**batch).loss``), Hugging Face's default-loss convention.

Every builder takes ``fault`` (None: the healthy twin) and ``explicit_loss``: with True (the
default) the spec's ``loss`` is ``model(**batch).loss``; with False the spec has no ``loss`` key and
relies on CONTRACT §1's ``model(**batch)`` for dict batches. ``fault="model_output_loss"`` is a
healthy variant whose ``loss`` returns the whole ``ModelOutput``.
"""

from __future__ import annotations

import torch

from tests.zoo.common import (
    ADAM_LOW_LR,
    BATCH_SIZE,
    BATCHES,
    HEAD_SCALE,
    IMAGE,
    SEQ_LEN,
    SGD_LOW_LR,
    VOCAB,
    common_faults,
    gen,
    hf_loss,
    hf_output,
    scale_weight_,
    sgd,
    zero_,
)


def _finish(spec: dict, fault: str | None, explicit_loss: bool, low: tuple = (SGD_LOW_LR, sgd)) -> dict:
    if fault == "model_output_loss":  # a healthy setup whose loss returns the whole ModelOutput
        spec["loss"] = hf_output
    elif explicit_loss:
        spec["loss"] = hf_loss
    if fault == "float64":  # a healthy setup in double precision
        spec["model"].double()
        for batch in spec["data"]:
            for key, value in batch.items():
                if value.is_floating_point():
                    batch[key] = value.double()
    return common_faults(spec, fault, *low)


# --- BERT sequence classifier ---------------------------------------------------------------


def _text_batches(seed: int, rule):
    g = gen(seed)
    batches = []
    for _ in range(BATCHES):
        ids = torch.randint(2, VOCAB, (BATCH_SIZE, SEQ_LEN), generator=g)
        lengths = torch.randint(SEQ_LEN - 6, SEQ_LEN + 1, (BATCH_SIZE,), generator=g)
        mask = (torch.arange(SEQ_LEN)[None, :] < lengths[:, None]).long()
        ids = ids * mask  # padding id 0 after each sequence's length
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": rule(ids)})
    return batches


def bert(fault: str | None = None, explicit_loss: bool = True) -> dict:
    """Binary sequence classification: the label is whether the first token is in the upper half of
    the vocabulary (BERT pools position 0, so a healthy model learns it in a few steps)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    data = _text_batches(1, lambda ids: (ids[:, 0] >= VOCAB // 2).long())
    spec = {"model": model, "data": data, "lr": 1e-3, "config": {"num_labels": 2, "vocab_size": VOCAB}}
    if fault == "ids_beyond_vocab":  # a tokenizer with more ids than the model's vocab_size
        data[0]["input_ids"][:4, 3] = VOCAB + 5
    elif fault == "labels_out_of_range":  # a third class the 2-label head does not have
        data[1]["labels"][:3] = 2
    elif fault == "amp_overflow":
        spec["amp"] = "fp16"
        scale_weight_(model.classifier, 10 * HEAD_SCALE)  # its input is a tanh (|x| <= 1): 10x more
    return _finish(spec, fault, explicit_loss, (ADAM_LOW_LR, None))


# --- GPT-2 language model ---------------------------------------------------------------------


def gpt2(fault: str | None = None, explicit_loss: bool = True) -> dict:
    """Causal LM on arithmetic sequences: each sequence counts up (mod the vocabulary) by a step of
    1 or 3, so the next token follows from the previous two."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ_LEN,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        loss_type="ForCausalLM",
        tie_word_embeddings=fault != "amp_overflow",
    )
    model = GPT2LMHeadModel(config)
    g = gen(2)
    data = []
    for _ in range(BATCHES):
        start = torch.randint(0, VOCAB, (BATCH_SIZE, 1), generator=g)
        step = 1 + 2 * torch.randint(0, 2, (BATCH_SIZE, 1), generator=g)
        ids = (start + step * torch.arange(SEQ_LEN)[None, :]) % VOCAB
        data.append({"input_ids": ids, "labels": ids.clone()})
    spec = {"model": model, "data": data, "lr": 1e-3, "config": {"vocab_size": VOCAB}}
    if fault == "ids_beyond_vocab":  # ids of a larger tokenizer fed to the embedding
        data[0]["input_ids"][:4, 5] = VOCAB + 7
        data[0]["labels"][:4, 5] = -100
    elif fault == "labels_out_of_range":  # an end-of-text id appended to the labels only, beyond vocab_size
        data[1]["labels"][:, -1] = VOCAB
    elif fault == "amp_overflow":  # untied head with a scaled-up init: logits beyond float16's range
        spec["amp"] = "fp16"
        scale_weight_(model.lm_head, HEAD_SCALE)
    return _finish(spec, fault, explicit_loss)


# --- images: ViT and ResNet -------------------------------------------------------------------


def image_batches(seed: int, channels: int = 3, classes: int = 3, raw: bool = False):
    """Noise images; class c brightens channel c. ``raw``: 0..255 pixel values, never normalized."""
    g = gen(seed)
    batches = []
    for _ in range(BATCHES):
        labels = torch.randint(0, classes, (BATCH_SIZE,), generator=g)
        x = torch.randn(BATCH_SIZE, channels, IMAGE, IMAGE, generator=g)
        x[torch.arange(BATCH_SIZE), labels] += 1.0
        if raw:
            x = (x * 40 + 110).clamp(0, 255).round()
        batches.append({"pixel_values": x, "labels": labels})
    return batches


def _image_faults(spec: dict, fault: str | None, classes: int) -> None:
    data = spec["data"]
    if fault == "nan_sample":  # one corrupt image: a NaN pixel
        data[0]["pixel_values"][5, 1, 7, 3] = float("nan")
    elif fault == "labels_out_of_range":  # labels numbered 1..C instead of 0..C-1
        for batch in data:
            batch["labels"] = batch["labels"] + 1


def vit(fault: str | None = None, explicit_loss: bool = True) -> dict:
    from transformers import ViTConfig, ViTForImageClassification

    classes = 3
    config = ViTConfig(
        image_size=IMAGE,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViTForImageClassification(config)
    spec = {
        "model": model,
        "data": image_batches(3, raw=fault == "unnormalized"),
        "lr": 1e-3,
        "config": {"num_labels": classes},
    }
    _image_faults(spec, fault, classes)
    if fault == "amp_overflow":
        spec["amp"] = "fp16"
        scale_weight_(model.classifier, HEAD_SCALE)
    return _finish(spec, fault, explicit_loss)


def resnet(fault: str | None = None, explicit_loss: bool = True) -> dict:
    from transformers import ResNetConfig, ResNetForImageClassification

    classes = 3
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=classes
    )
    model = ResNetForImageClassification(config)
    spec = {
        "model": model,
        "data": image_batches(4, raw=fault == "unnormalized"),
        "lr": 1e-3,
        "config": {"num_labels": classes},
    }
    _image_faults(spec, fault, classes)
    if fault == "zero_init":  # the stem conv zeroed: after BatchNorm every stem ReLU input is 0
        zero_(model.resnet.embedder.embedder.convolution)
    elif fault == "amp_overflow":
        spec["amp"] = "fp16"
        scale_weight_(model.classifier[1], HEAD_SCALE)
    return _finish(spec, fault, explicit_loss)
