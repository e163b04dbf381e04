from __future__ import annotations

import pytest

from mxmix.errors import MxmixError
from mxmix.eval.corpus import default_text, load_text, read_texts, token_windows, windows_digest


def test_default_corpus_is_substantial_and_deterministic() -> None:
    a, b = default_text(), default_text()
    assert a == b and len(a) > 300_000
    text, desc = load_text(None)
    assert text == a and "pydoc" in desc


def test_windows_are_consecutive_chunks_spread_over_the_text() -> None:
    ids = list(range(1000))
    w = token_windows(ids, 100, 3)
    assert [x[0] for x in w] == [0, 300, 600] and all(len(x) == 100 for x in w)
    assert w[1] == list(range(300, 400))
    assert len(token_windows(ids, 100)) == 10  # all chunks; the 0-token remainder is dropped
    assert len(token_windows(ids, 100, 50)) == 10  # never more than the text holds
    assert windows_digest(w) != windows_digest(token_windows(ids, 100, 2))


def test_bad_inputs_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(MxmixError, match="fewer than one"):
        token_windows(list(range(10)), 64)
    with pytest.raises(MxmixError, match="--windows"):
        token_windows(list(range(1000)), 64, 0)
    with pytest.raises(MxmixError, match="no such file"):
        read_texts([tmp_path / "missing.txt"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MxmixError, match="UTF-8"):
        read_texts([bad])
    good = tmp_path / "a.txt"
    good.write_text("hello")
    (tmp_path / "b.txt").write_text("world")
    assert read_texts([good, tmp_path / "b.txt"]) == "hello\n\nworld"
