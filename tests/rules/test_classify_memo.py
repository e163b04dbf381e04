"""``classify`` (memoised across the plan and lint) against the plain classification, also when the
memo fills up and is cleared."""

from __future__ import annotations

import random

import pytest

from mxmix.rules import canonical
from mxmix.rules.canonical import _classify, classify


@pytest.mark.parametrize("limit", [1 << 16, 3])
def test_classify_memo_equals_the_plain_classification(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canonical, "_FORMS_LIMIT", limit)
    monkeypatch.setattr(canonical, "_FORMS", {})
    rng = random.Random(limit)
    alphabet = ["model", ".", "layers", "3", " ", "re:", "*", "?", "[", "(", "", "mlp.gate"]
    rules = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5))) for _ in range(300)]
    for rule in rules + rules[::-1]:          # the second time from the memo (or after clearing it)
        assert classify(rule) == _classify(rule), rule
    assert len(canonical._FORMS) <= max(limit, 1) + 1
    assert {classify(r).kind for r in rules} == {"plain", "regex", "glob", "invalid"}
