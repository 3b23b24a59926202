"""Hugging Face models with no glue: tiny BERT and GPT-2 built from configs (nothing downloaded)."""

import tempfile

import pytest
import torch

import nandoctor

transformers = pytest.importorskip("transformers")


def tiny_bert(vocab=100):
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def token_batches(vocab, high, count=4, size=16):
    """The label is which third of the ids below ``high`` a sentence's tokens mostly come from."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 3, (size,), generator=g)
        ids = labels[:, None] * (high // 3) + torch.randint(0, high // 3, (size, 12), generator=g)
        noise = torch.rand(size, 12, generator=g) < 0.2
        ids = torch.where(noise, torch.randint(0, high, (size, 12), generator=g), ids)
        batches.append({"input_ids": ids, "attention_mask": torch.ones(size, 12, dtype=torch.long), "labels": labels})
    return batches


def test_a_bert_classifier_needs_no_glue_and_ids_past_its_vocabulary_are_named():
    healthy = nandoctor.diagnose({"model": tiny_bert(), "data": token_batches(100, 100)}, progress=False)
    assert healthy.verdict == "healthy", str(healthy)
    broken = nandoctor.diagnose({"model": tiny_bert(), "data": token_batches(100, 130)}, progress=False)
    first = broken.findings[0]
    assert first.code == "index_out_of_range", str(broken)
    assert first.where.module == "bert.embeddings.word_embeddings"
    assert all("site-packages" not in (f.where.source or "") for f in broken.findings)


def test_an_output_without_loss_asks_for_labels():
    batches = [{"input_ids": b["input_ids"]} for b in token_batches(100, 100, count=2)]
    with pytest.raises(nandoctor.UsageError, match="labels"):
        nandoctor.diagnose({"model": tiny_bert(), "data": batches}, progress=False)


class ShiftedTokens(torch.utils.data.Dataset):
    """Sequences where the next token is the current one plus one: something a model can learn."""

    def __init__(self, count=64, vocab=50, length=16):
        start = torch.randint(0, vocab, (count, 1), generator=torch.Generator().manual_seed(1))
        self.ids = (start + torch.arange(length)) % vocab

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def gpt2_trainer(learning_rate, **arguments):
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        learning_rate=learning_rate,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        max_grad_norm=1.0,
        weight_decay=0.01,
        **arguments,
    )
    return transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=ShiftedTokens())


def test_spec_from_trainer_reads_training_arguments_and_leaves_the_trainer_as_found():
    from nandoctor.integrations.hf import spec_from_trainer

    trainer = gpt2_trainer(3e-4, adam_beta2=0.98)
    spec = spec_from_trainer(trainer)
    assert trainer.optimizer is None  # train() still builds its own
    assert (spec["lr"], spec["grad_clip"], spec["amp"]) == (3e-4, 1.0, None)
    assert spec["config"]["learning_rate"] == 3e-4 and spec["model"] is trainer.model
    batch = next(iter(spec["data"]))
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (8, 16)
    optimizer = spec["optimizer"](list(trainer.model.parameters()), 1e-2)
    assert type(optimizer).__name__ == "AdamW"
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.01]  # no decay on biases/norms
    assert all(g["betas"] == (0.9, 0.98) and g["lr"] == 1e-2 for g in optimizer.param_groups)
    assert spec_from_trainer(gpt2_trainer(3e-4, bf16=True))["amp"] == "bf16"


def test_a_gpt2_trainer_healthy_at_its_rate_and_a_rate_far_too_high_is_named():
    from nandoctor.integrations.hf import spec_from_trainer

    healthy = nandoctor.diagnose(spec_from_trainer(gpt2_trainer(1e-3)), progress=False)
    assert healthy.verdict == "healthy", str(healthy)
    broken = nandoctor.diagnose(spec_from_trainer(gpt2_trainer(10.0)), progress=False)
    first = broken.findings[0]
    assert first.code == "lr_too_high" and first.severity == nandoctor.Severity.CRITICAL, str(broken)
    assert 0 < first.fix.config["learning_rate"] < 10.0  # the fix names TrainingArguments' field
