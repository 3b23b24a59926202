"""A zoo of public architectures with faults injected only through config or data (issue 12, item 4).

Every case is a build function (CONTRACT §1) with one fault and the finding nandoctor should put
among its first two: ``code`` and ``where`` (the keys of the finding's ``where`` to check; None:
the fault has no location, e.g. a learning rate). ``fault``/``code`` None is the healthy twin;
``code`` None with a fault (``float64``, ``no_loss_key``, ``model_output_loss``) is a variant that
must also be healthy.

``hf_loss``: the setup's loss is Hugging Face's default-loss convention: the batch dict holds
``labels`` and the model computes its own cross-entropy, returned as ``ModelOutput.loss``. Those
specs pass ``loss=lambda model, batch: model(**batch).loss`` explicitly, except two healthy
variants that exercise the contract's conventions: ``model_output_loss`` returns the whole
``ModelOutput`` (a Mapping with ``loss`` and ``logits``), and ``no_loss_key`` leaves ``loss`` out
and relies on CONTRACT §1's ``model(**batch)`` for dict batches.
``requires``: packages beyond torch (the case is skipped without them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from tests.zoo import hf_models, torch_models


@dataclass(frozen=True)
class ZooCase:
    arch: str
    fault: str | None
    build: Callable[[], dict]
    code: str | None
    where: dict | None
    hf_loss: bool = False
    requires: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.fault or 'healthy'}"


# fault -> (expected code); the expected where is per architecture below
CODES = {
    "lr_too_high": "lr_too_high",  # AdamW at 1.0
    "lr_too_low": "lr_too_low",  # plain SGD at 1e-4
    "grad_clip_tiny": "grad_clip_too_aggressive",  # grad_clip = 1e-4
    "amp_overflow": "amp_overflow",  # amp="fp16", head init scaled so logits pass 65,504
    "ids_beyond_vocab": "index_out_of_range",  # token ids >= vocab_size
    "labels_out_of_range": "label_out_of_range",  # class targets >= classes, or -1 / 255
    "unnormalized": "unnormalized_input",  # raw 0..255 pixels, income in dollars
    "nan_sample": "nonfinite_input",  # one NaN value in one sample
    "zero_init": "dead_units",  # a Linear/Conv zeroed (weight and bias) before a ReLU
    "float64": None,  # model.double() and double data: healthy
    "no_loss_key": None,  # no `loss`: model(**batch).loss per the contract; healthy
    "model_output_loss": None,  # `loss` returns the ModelOutput (has .loss); healthy
}

HF = {"bert": hf_models.bert, "gpt2": hf_models.gpt2, "vit": hf_models.vit, "resnet": hf_models.resnet}
TORCH = {"lstm": torch_models.lstm, "unet": torch_models.unet, "mlp": torch_models.mlp}

# arch -> {fault: expected where}
PLAN: dict[str, dict[str, dict | None]] = {
    "bert": {
        "lr_too_high": None,
        "lr_too_low": None,
        "grad_clip_tiny": None,
        "ids_beyond_vocab": {"module": "bert.embeddings.word_embeddings"},
        "labels_out_of_range": {"feature": "labels"},
        "amp_overflow": {"module": "classifier"},
        "float64": None,
        "no_loss_key": None,
        "model_output_loss": None,
    },
    "gpt2": {
        "lr_too_high": None,
        "lr_too_low": None,
        "grad_clip_tiny": None,
        "ids_beyond_vocab": {"module": "transformer.wte"},
        "labels_out_of_range": {"feature": "labels"},
        "amp_overflow": {"module": "lm_head"},
        "float64": None,
        "no_loss_key": None,
        "model_output_loss": None,
    },
    "vit": {
        "lr_too_high": None,
        "lr_too_low": None,
        "unnormalized": {"feature": "pixel_values"},
        "nan_sample": {"feature": "pixel_values"},
        "labels_out_of_range": {"feature": "labels"},
        "amp_overflow": {"module": "classifier"},
        "float64": None,
    },
    "resnet": {
        "lr_too_high": None,
        "lr_too_low": None,
        "unnormalized": {"feature": "pixel_values"},
        "zero_init": {"module": "resnet.embedder.embedder.activation"},
        "labels_out_of_range": {"feature": "labels"},
        "amp_overflow": {"module": "classifier.1"},
        "float64": None,
    },
    "lstm": {
        "lr_too_high": None,
        "lr_too_low": None,
        "grad_clip_tiny": None,
        "ids_beyond_vocab": {"module": "embedding"},
        "labels_out_of_range": {"feature": "label"},
        "float64": None,
    },
    "unet": {
        "lr_too_high": None,
        "lr_too_low": None,
        "unnormalized": {"feature": "0"},
        "nan_sample": {"feature": "0"},
        "zero_init": {"module": "enc1.1"},
        "labels_out_of_range": {"feature": "1"},
        "float64": None,
    },
    "mlp": {
        "lr_too_high": None,
        "lr_too_low": None,
        "grad_clip_tiny": None,
        "unnormalized": {"feature": "income"},
        "nan_sample": {"feature": "age"},
        "zero_init": {"module": "net.1"},
        "float64": None,
    },
}


def _case(arch: str, fault: str | None, where: dict | None) -> ZooCase:
    hf = arch in HF
    builder = HF[arch] if hf else TORCH[arch]
    if fault == "no_loss_key":
        build = partial(builder, None, explicit_loss=False)
    else:
        build = partial(builder, fault)
    return ZooCase(
        arch, fault, build, CODES[fault] if fault else None, where, hf_loss=hf, requires=("transformers",) if hf else ()
    )


ZOO: list[ZooCase] = [
    case
    for arch, faults in PLAN.items()
    for case in [_case(arch, None, None)] + [_case(arch, f, w) for f, w in faults.items()]
]

ARCHS = list(PLAN)
FAULTS = list(dict.fromkeys(f for faults in PLAN.values() for f in faults))
