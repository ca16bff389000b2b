"""Every method on every family works or is refused in one clear sentence: nothing crashes, nothing goes non-finite
(the table the README shows is this matrix, printed by `python -m guidance.pipelines.testing.matrix`)."""

from __future__ import annotations

import pytest

from guidance.pipelines.testing.matrix import METHODS, outcome
from guidance.pipelines.testing.tiny import FAMILIES

# what every family must run: the rules, references and policies that need nothing family-specific
EVERYWHERE = {"cfg", "apg", "icg", "tsg", "ag", "schedule"}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_method_works_or_is_refused_clearly(family: str, method: str) -> None:
    result = outcome(family, method)  # raises on a crash or a non-finite output
    if method in EVERYWHERE:
        assert result == "works", f"{family} × {method}: {result}"
    else:
        assert result == "works" or len(result) > len("refused: ") + 10
