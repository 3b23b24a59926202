"""Embedded example setups: run ``nandoctor diagnose nandoctor.examples.<name>:build``.

Each mirrors a real failure; ``healthy`` is the same kind of model without a bug.
"""

EXAMPLES = {
    "healthy": "a small token + feature classifier that trains (verdict: healthy)",
    "log_softmax_nan": "log(softmax(logits / 0.01)) hits log(0) = -inf in the head (forward_nonfinite)",
    "norm_grad_nan": "a hand-written norm sqrt(sum(x²)) of padded, all-zero vectors: finite loss, "
    "NaN gradient (backward_nonfinite)",
    "small_vocab": "token ids up to 1,199 fed to an nn.Embedding(1000, ...) (index_out_of_range)",
    "nonfinite_init": "input normalization statistics computed from an empty calibration set (nonfinite_init)",
    "raw_features": "raw pulse times 5,714-77,785 and sensor ids fed to a transformer (unnormalized_input)",
}
