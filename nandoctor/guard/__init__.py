"""The NaN guard for long runs: ``Guard`` in a training loop, its capture file, and replay.

``guard.py`` keeps the cheap always-on records and writes a capture on the first failure;
``capture.py`` is the file format (loaded with ``weights_only=True``); ``replay.py`` re-runs a
capture to its failing step and diagnoses it; ``callbacks.py`` wraps the guard for Lightning and
Hugging Face ``Trainer``.
"""

from nandoctor.guard.guard import Guard, GuardTripped

__all__ = ["Guard", "GuardTripped"]
