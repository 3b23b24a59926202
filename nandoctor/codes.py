"""The table of finding codes, built from what the registered probes declare.

``CODES`` is a live view of the registry: a probe added to ``probes.PROBES`` brings its codes
(meaning, stage in the causal chain, ``explain`` text) with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from nandoctor.findings import CodeDoc
from nandoctor.probes import PROBES, check_registry


def _table() -> dict[str, CodeDoc]:
    check_registry()  # a code declared twice is an error, not one silently dropped
    return {doc.code: doc for probe in PROBES for doc in probe.codes}


class _CodeTable(Mapping):
    """``CODES[code] -> CodeDoc``, read from the registry on every access."""

    def __getitem__(self, code: str) -> CodeDoc:
        return _table()[code]

    def __iter__(self) -> Iterator[str]:
        return iter(_table())

    def __len__(self) -> int:
        return len(_table())


CODES: Mapping[str, CodeDoc] = _CodeTable()


def stage_of(code: str) -> int:
    """Position of a code in the causal chain; unknown codes go last."""
    doc = _table().get(code)
    return doc.stage if doc else 10_000
