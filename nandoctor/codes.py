"""The one table of finding codes (CONTRACT.md §2): meaning, stage in the causal chain, docs.

``stage`` orders findings cause-first: what is wrong before training starts (devices, init,
inputs) explains what goes wrong in the forward pass, which explains the backward pass, which
explains the training dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodeDoc:
    code: str
    stage: int
    meaning: str
    why: str
    example: str
    fix: str


_DOCS = [
    CodeDoc("device_mismatch", 0,
            "parameters, buffers or batch tensors sit on different devices",
            "Ops on tensors from two devices raise, or silently copy every step.",
            "A buffer created in forward() on the CPU while the model lives on the GPU.",
            "Create tensors with device=x.device; register them as buffers so .to() moves them."),
    CodeDoc("nonfinite_init", 1,
            "a parameter or buffer holds NaN/Inf before any step",
            "Every output that touches it is NaN from the first step.",
            "Normalization statistics computed from an empty calibration set (mean of nothing = NaN).",
            "Re-initialize the named tensor; check the statistics it was computed from."),
    CodeDoc("nonfinite_input", 2,
            "a batch holds NaN or Inf",
            "NaN inputs make every downstream activation, loss and gradient NaN.",
            "A feature column with missing values that were never imputed.",
            "Impute or drop missing values in the data pipeline; assert torch.isfinite on batches."),
    CodeDoc("index_out_of_range", 2,
            "integer ids in a batch fall outside an embedding's num_embeddings (or below 0)",
            "On the CPU the forward raises IndexError; on CUDA a device-side assert kills the process.",
            "A tokenizer with 35,000 ids feeding nn.Embedding(32000, d).",
            "Set num_embeddings to max id + 1 (vocabulary size), or remap the ids."),
    CodeDoc("unnormalized_input", 3,
            "an input feature's scale is far from unit (raw times, counts, ids fed as floats)",
            "Large inputs give large activations and gradients; the first layer's weights "
            "see one feature and ignore the rest.",
            "Pulse times of 5,000-78,000 fed raw to a transformer.",
            "Standardize each feature with its mean and std (or log-transform heavy tails); "
            "embed integer ids instead of feeding them as floats."),
    CodeDoc("forward_error", 4,
            "the model's forward (or the loss function) raised an exception",
            "Training cannot start; the message and the module that raised say why.",
            "A shape mismatch between an encoder's output and a head's Linear.",
            "Fix the module named in the finding; the message is the one torch raised."),
    CodeDoc("forward_nonfinite", 5,
            "a module's forward turns finite inputs into NaN/Inf; where.module is the first such module",
            "Once an activation is NaN the loss and every gradient are NaN.",
            "torch.log(torch.softmax(x)) where softmax underflows to 0, giving log(0) = -inf.",
            "Use the numerically stable op (log_softmax, logsumexp), clamp or add eps before "
            "log/div/sqrt, keep exp arguments bounded."),
    CodeDoc("amp_overflow", 6,
            "finite in float32, but overflows or turns NaN under the user's autocast precision",
            "float16 tops out at 65,504: large logits or attention scores become Inf, then NaN.",
            "Contrastive logits divided by a temperature of 0.07 under fp16 autocast.",
            "Use bf16, keep the named module in float32, scale the logits down, or use a GradScaler."),
    CodeDoc("activation_explosion", 7,
            "activations stay finite but their scale grows large through the layers",
            "Large activations saturate nonlinearities, overflow in half precision and "
            "make gradients explode.",
            "A deep MLP initialized with N(0, 1) weights and no normalization.",
            "Add LayerNorm/BatchNorm, use a fan-in scaled init (kaiming/xavier), normalize inputs."),
    CodeDoc("saturation", 8,
            "outputs pinned at a clamp bound or saturated nonlinearity, so gradients die",
            "A clamped or saturated output has zero gradient: the layers behind it stop learning.",
            "A critic score clamped at ±1000 from the first batch.",
            "Replace hard clamps with a smooth bound (c * tanh(x / c)); fix the scale feeding it."),
    CodeDoc("dead_units", 9,
            "a large share of ReLU-like units never activate",
            "A unit that is zero for every input gets no gradient and never recovers.",
            "Linear layers whose biases start at -5 before a ReLU.",
            "Re-initialize biases at zero, use LeakyReLU/GELU, lower the learning rate."),
    CodeDoc("loss_component_nonfinite", 10,
            "one named loss component produces NaN/Inf (value or gradient)",
            "One bad term poisons the total loss and every gradient.",
            "A contrastive term dividing embeddings by a norm that is zero for some rows.",
            "Add eps to the named component's divisions/norms (F.normalize(x, eps=1e-6))."),
    CodeDoc("backward_nonfinite", 11,
            "the forward pass is finite but gradients turn NaN/Inf",
            "The optimizer step writes NaN into the weights; the next forward is NaN.",
            "x.norm() of an all-zero vector: finite value, NaN gradient (0/0).",
            "Add eps inside the op named in the finding (sqrt(x + eps), clamp before acos)."),
    CodeDoc("backward_error", 11,
            "loss.backward() raised an exception",
            "No gradient, no step: usually an in-place op modified a tensor autograd saved.",
            "x += 1 on the output of a sigmoid that backward needs.",
            "Replace the in-place op named in the message with its out-of-place form."),
    CodeDoc("loss_component_explosion", 12,
            "one named loss component's gradient dwarfs the rest",
            "The other components' signal is lost; clipping scales it away.",
            "An acyclicity term trace(A³) at weight 0.1 beside a reconstruction loss.",
            "Lower that component's weight by the ratio in the finding, or rescale the term."),
    CodeDoc("exploding_gradients", 13,
            "gradient norms are very large at the user's settings",
            "Huge updates throw the weights far away; Adam's state fills with extremes.",
            "qkv_proj.weight with grad_norm=432,542,528 at LR 1e-3.",
            "Normalize inputs and targets, add normalization layers, lower the LR; clip as a guard."),
    CodeDoc("vanishing_gradients", 14,
            "gradients are zero or vanishingly small for all or most parameters",
            "Parameters without gradient never change: the model cannot learn.",
            "A 20-layer sigmoid MLP: gradients shrink by 4x per layer.",
            "Use ReLU-family activations, residual connections, normalization, a proper init."),
    CodeDoc("lr_too_high", 16,
            "the learning rate sweep shows the user's rate diverges or is unstable where a lower one trains",
            "Each step overshoots; the loss climbs or goes NaN.",
            "AdamW at 1e-3 on a transformer whose gradients reach 4e8.",
            "Use the recommended rate from the sweep."),
    CodeDoc("lr_too_low", 17,
            "the loss barely moves at the user's rate where a higher one trains stably",
            "Training wastes compute or never leaves the initial plateau.",
            "SGD at 1e-5.",
            "Use the recommended rate from the sweep."),
    CodeDoc("grad_clip_too_aggressive", 15,
            "clipping scales nearly every step's gradient down by a large factor",
            "Every update is shrunk to max_norm: effectively a much smaller LR.",
            "clip_grad_norm_(max_norm=1.0) where gradient norms are in the thousands.",
            "Raise max_norm to about the observed median norm, and fix what makes norms large."),
    CodeDoc("loss_plateau", 18,
            "the loss stays at its random-guess baseline and does not decrease",
            "The model learns nothing: often labels disconnected from inputs, or a dead signal path.",
            "An angular loss stuck at ~1.5 rad (pi/2, random directions).",
            "Check that labels match inputs, the LR, and the findings ranked above this one."),
]

CODES: dict[str, CodeDoc] = {doc.code: doc for doc in _DOCS}


def stage_of(code: str) -> int:
    """Position of a code in the causal chain; unknown codes go last."""
    doc = CODES.get(code)
    return doc.stage if doc else len(CODES)
