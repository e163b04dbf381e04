"""A corpus of malformed and hostile checkpoints, generated here (never committed as binaries).

Each case must be refused with its own one-line error: by ``Checkpoint.open`` (CheckpointError with a
specific message) and by ``mxmix inspect`` / ``mxmix audit`` (exit 2, exactly one stderr line, no
traceback).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mxmix.checkpoint.layout import Checkpoint
from mxmix.checkpoint.safetensors_header import MAX_HEADER_BYTES
from mxmix.cli.main import main
from mxmix.errors import CheckpointError

GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def st_bytes(header: dict | list | str | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict/list → JSON, str/bytes → raw text) and data bytes."""
    if isinstance(header, bytes):
        raw = header
    elif isinstance(header, str):
        raw = header.encode("utf-8")
    else:
        raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def good_file(name: str = "w") -> bytes:
    return st_bytes({name: GOOD_ENTRY}, b"\0" * 8)


def one_file(content: bytes) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / "config.json").write_text(json.dumps(CONFIG))
        (d / "model.safetensors").write_bytes(content)
    return make


def with_index(weight_map: object, files: dict[str, bytes] | None = None, raw_index: str | None = None):
    def make(d: Path) -> None:
        (d / "config.json").write_text(json.dumps(CONFIG))
        for name, content in (files or {}).items():
            (d / name).write_bytes(content)
        text = raw_index if raw_index is not None else json.dumps({"metadata": {}, "weight_map": weight_map})
        (d / "model.safetensors.index.json").write_text(text)
    return make


def config_text(text: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / "config.json").write_text(text)
        (d / "model.safetensors").write_bytes(good_file())
    return make


def escaping_symlink(via_index: bool) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        outside = d.parent / f"outside-{d.name}.safetensors"
        outside.write_bytes(good_file())
        (d / "config.json").write_text(json.dumps(CONFIG))
        (d / "model.safetensors").symlink_to(outside)
        if via_index:
            (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model.safetensors"}}))
    return make


def fifo(name: str, index: bool = False) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / "config.json").write_text(json.dumps(CONFIG))
        if name != "config.json":
            os.mkfifo(d / name)
        else:
            (d / "config.json").unlink()
            os.mkfifo(d / "config.json")
            (d / "model.safetensors").write_bytes(good_file())
        if index:
            (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name}}))
    return make


def two_shards_same_tensor(d: Path) -> None:
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "a.safetensors").write_bytes(good_file("w"))
    (d / "b.safetensors").write_bytes(good_file("w"))


def index_wrong_shard(d: Path) -> None:
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "a.safetensors").write_bytes(good_file("x"))
    (d / "b.safetensors").write_bytes(good_file("y"))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "b.safetensors", "y": "b.safetensors"}}))


def shard_is_directory(d: Path) -> None:
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "x.safetensors").mkdir()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "x.safetensors"}}))


def only_pickle(d: Path) -> None:
    (d / "config.json").write_text(json.dumps(CONFIG))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")   # a pickle: must never be opened


def hf_quant_config_list(d: Path) -> None:
    cfg = dict(CONFIG, quantization_config={"quant_method": "modelopt", "quant_algo": "MXFP8", "ignore": []})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "hf_quant_config.json").write_text("[1, 2]")
    (d / "model.safetensors").write_bytes(good_file())


def skip_list_not_a_list(d: Path) -> None:
    cfg = dict(CONFIG, quantization_config={"quant_method": "mxfp8", "ignored_layers": "lm_head"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(good_file())


F32x2 = b"\0" * 8
ENTRY = json.dumps(GOOD_ENTRY)
EMPTY_U8 = json.dumps({"dtype": "U8", "shape": [0], "data_offsets": [0, 0]})
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    # --- one safetensors file: framing --------------------------------------------------------------
    "zero-length file": (one_file(b""), "shorter than the 8-byte header length"),
    "five-byte file": (one_file(b"\x05\0\0\0\0"), "shorter than the 8-byte header length"),
    "header length beyond the limit": (one_file(st_bytes({}, length=MAX_HEADER_BYTES + 1)), "exceeds the"),
    "header length 2**64-1": (one_file(struct.pack("<Q", 2**64 - 1) + b"{}"), "exceeds the"),
    "header longer than the file": (one_file(st_bytes({}, length=1000)), "header claims 1000 bytes"),
    # --- header JSON ---------------------------------------------------------------------------------
    "header not JSON": (one_file(st_bytes("{not json")), "header is not valid JSON"),
    "header not UTF-8": (one_file(st_bytes(b'{"\xff\xfe": 1}')), "header is not valid JSON"),
    "header is a list": (one_file(st_bytes([1, 2])), "header is not a JSON object"),
    "header is a string": (one_file(st_bytes('"abc"')), "header is not a JSON object"),
    "duplicate tensor name in one header": (
        one_file(st_bytes(f'{{"w": {ENTRY}, "w": {ENTRY}}}', F32x2)),
        "duplicate key 'w'"),
    "duplicate key inside an entry": (
        one_file(st_bytes('{"w": {"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}', F32x2)),
        "duplicate key 'dtype'"),
    "duplicate name hidden by a non-object first value": (
        one_file(st_bytes(f'{{"w": 5, "w": {ENTRY}}}', F32x2)), "duplicate key 'w'"),
    "duplicate name disguised by escaped colons": (
        one_file(st_bytes('{"a\\u003a\\u003a\\u003a\\u003a": %s, "b": %s, "b": %s}' % ((EMPTY_U8,) * 3))),
        "duplicate key 'b'"),
    "NaN in data_offsets": (
        one_file(st_bytes('{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, NaN]}}', F32x2)),
        "NaN is not allowed in strict JSON"),
    "nesting deep enough to overflow the parser": (one_file(st_bytes("[" * 200000 + "]" * 200000)),
                                                    "header is not valid JSON"),
    "metadata with a non-string value": (
        one_file(st_bytes({"__metadata__": {"format": 1}, "w": GOOD_ENTRY}, F32x2)),
        "__metadata__ must map strings to strings"),
    "metadata is a list": (one_file(st_bytes({"__metadata__": [], "w": GOOD_ENTRY}, F32x2)),
                           "__metadata__ must map strings to strings"),
    # --- header entries ------------------------------------------------------------------------------
    "entry not an object": (one_file(st_bytes({"w": [1, 2]})), "entry for tensor 'w' is not an object"),
    "unknown dtype": (one_file(st_bytes({"w": dict(GOOD_ENTRY, dtype="Q4")}, F32x2)), "unknown dtype 'Q4'"),
    "dtype not a string": (one_file(st_bytes({"w": dict(GOOD_ENTRY, dtype=["F32"])}, F32x2)), "unknown dtype"),
    "negative dimension": (one_file(st_bytes({"w": dict(GOOD_ENTRY, shape=[-2])}, F32x2)), "invalid shape"),
    "float dimension": (one_file(st_bytes({"w": dict(GOOD_ENTRY, shape=[2.0])}, F32x2)), "invalid shape"),
    "boolean dimension": (one_file(st_bytes({"w": dict(GOOD_ENTRY, shape=[True, 2])}, F32x2)), "invalid shape"),
    "shape not a list": (one_file(st_bytes({"w": dict(GOOD_ENTRY, shape="2")}, F32x2)), "invalid shape"),
    "negative offset": (one_file(st_bytes({"w": dict(GOOD_ENTRY, data_offsets=[-8, 0])}, F32x2)),
                        "invalid data_offsets"),
    "float offsets": (one_file(st_bytes({"w": dict(GOOD_ENTRY, data_offsets=[0.0, 8.0])}, F32x2)),
                      "invalid data_offsets"),
    "begin after end": (one_file(st_bytes({"w": dict(GOOD_ENTRY, data_offsets=[8, 0])}, F32x2)),
                        "invalid data_offsets"),
    "three offsets": (one_file(st_bytes({"w": dict(GOOD_ENTRY, data_offsets=[0, 4, 8])}, F32x2)),
                      "invalid data_offsets"),
    "missing data_offsets": (one_file(st_bytes({"w": {"dtype": "F32", "shape": [2]}}, F32x2)),
                             "invalid data_offsets"),
    "shape disagrees with byte count": (one_file(st_bytes({"w": dict(GOOD_ENTRY, shape=[3])}, F32x2)),
                                        "needs 12"),
    "shape whose size overflows int64": (
        one_file(st_bytes({"w": dict(GOOD_ENTRY, shape=[2**40, 2**40, 2**40])}, F32x2)), "claims 8 bytes"),
    "NUL in a tensor name": (one_file(st_bytes({"w\u0000x": GOOD_ENTRY}, F32x2)), "control characters"),
    "raw DEL in a tensor name": (one_file(st_bytes('{"w\x7f": ' + ENTRY + "}", F32x2)), "control characters"),
    "empty tensor name": (one_file(st_bytes({"": GOOD_ENTRY}, F32x2)), "is empty or contains control"),
    # --- data region ---------------------------------------------------------------------------------
    "overlapping tensors": (one_file(st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                               "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}},
                                              b"\0" * 6)), "overlaps"),
    "two tensors on the same bytes": (one_file(st_bytes({"a": GOOD_ENTRY, "b": GOOD_ENTRY}, F32x2)), "overlaps"),
    "gap between tensors": (one_file(st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                                              F32x2)), "gap in the data"),
    "data shorter than the offsets": (one_file(st_bytes({"w": GOOD_ENTRY}, b"\0" * 4)),
                                      "tensor data needs 8 bytes, file holds 4"),
    "unexplained trailing bytes": (one_file(st_bytes({"w": GOOD_ENTRY}, b"\0" * 12)), "4 unexplained bytes"),
    # --- directory and index -------------------------------------------------------------------------
    "index weight_map is a list": (with_index(["w"]), "'weight_map' must map tensor names to file names"),
    "index is a JSON list": (with_index(None, raw_index="[]"), "'weight_map' must map"),
    "index not JSON": (with_index(None, raw_index="{weight_map"), "not valid JSON"),
    "index file name not a string": (with_index({"w": 3}), "'weight_map' must map"),
    "index file name a list": (with_index({"w": ["model.safetensors"]}), "'weight_map' must map"),
    "index file name an object": (with_index({"w": {"f": 1}, "v": "model.safetensors"}), "'weight_map' must map"),
    "index file names mixed": (with_index({"w": "model.safetensors", "v": True, "u": 1}), "'weight_map' must map"),
    "index weight_map empty": (with_index({}), "'weight_map' lists no tensors"),
    "index entry climbs out with ..": (with_index({"w": "../x.safetensors"}), "points outside the checkpoint"),
    "index entry is an absolute path": (with_index({"w": "/etc/passwd"}), "is not a plain relative name"),
    "index entry names a missing shard": (with_index({"w": "gone.safetensors"}), "which does not exist"),
    "index entry names a directory": (shard_is_directory, "is not a regular file"),
    "index entry is a FIFO": (fifo("p.safetensors", index=True), "is not a regular file"),
    "index says the wrong shard": (index_wrong_shard, "is not in shard 'b.safetensors' as the index says"),
    "symlinked shard escaping the directory": (escaping_symlink(False), "resolves outside the checkpoint"),
    "symlinked shard escaping via the index": (escaping_symlink(True), "resolves outside the checkpoint"),
    "same tensor in two shards": (two_shards_same_tensor, "appears in both a.safetensors and b.safetensors"),
    "only a pickle": (only_pickle, "mxmix never unpickles"),
    "config.json not JSON": (config_text("{'a': 1}"), "config.json: not valid JSON"),
    "config.json is a list": (config_text("[]"), "config.json: not a JSON object"),
    "config.json with Infinity": (config_text('{"a": Infinity}'), "Infinity is not allowed in strict JSON"),
    "config.json is a FIFO": (fifo("config.json"), "config.json: not a regular file"),
    "hf_quant_config.json is a list": (hf_quant_config_list, "hf_quant_config.json"),
    "skip list is a string": (skip_list_not_a_list, "must be a list of strings"),
}


# Malformed for a reader that must interpret the config, but still displayable by `inspect`.
AUDIT_ONLY = frozenset({"skip list is a string"})


@pytest.fixture
def case_dir(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    make, message = CASES[request.param]
    d = tmp_path / request.param
    d.mkdir()
    make(d)
    return d, message


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case_dir", list(CASES), indirect=True)
def test_refused_with_its_own_error(case_dir, capsys):
    d, message = case_dir
    commands = [["audit", str(d)]] if d.name in AUDIT_ONLY else [["inspect", str(d)], ["audit", str(d)]]
    for command in commands:
        code = main(command)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (command, captured.err)
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("mxmix: error: ")
        assert message in lines[0], lines[0]
        assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("case_dir", ["header length beyond the limit", "symlinked shard escaping the directory",
                                      "duplicate tensor name in one header"], indirect=True)
def test_library_raises_checkpoint_error(case_dir):
    d, message = case_dir
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Checkpoint.open(d)


def test_oversized_header_is_refused_before_allocating(tmp_path, monkeypatch):
    """The length check happens before any read of that size: only the first 8 bytes are read."""
    import mxmix.checkpoint.safetensors_header as sh

    p = tmp_path / "big.safetensors"
    p.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    reads: list[int] = []
    real_read = os.read

    def spy(fd, n):
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(sh.os, "read", spy)
    with pytest.raises(CheckpointError, match="exceeds"):
        Checkpoint.open(p)
    assert reads == [8]


def test_real_binary_prints_one_line_and_exits_2(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    CASES["overlapping tensors"][0](d)
    proc = subprocess.run([sys.executable, "-m", "mxmix.cli.main", "audit", str(d)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "overlaps" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_directory_named_like_a_shard_is_not_a_file(tmp_path, capsys):
    d = tmp_path / "model.safetensors"
    d.mkdir()
    assert main(["inspect", str(d)]) == 2
    assert "no .safetensors weights" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


# --- the fast duplicate-key proof agrees with the strict, hook-checked parse ---------------------------

def _strict(text: str):
    from mxmix.checkpoint.safetensors_header import _no_duplicate_keys

    def reject(name):
        raise ValueError(name)

    obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=reject)
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    meta = obj.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("bad metadata")
    return obj, meta


def _pairs_text(pairs, sep: str) -> str:
    """Keys are JSON-encoded, except "RAW:..." keys, written as given (to plant escapes like \\u003a)."""
    def key(k: str) -> str:
        return k[4:] if k.startswith("RAW:") else json.dumps(k)
    return "{" + ("," + sep).join(f"{key(k)}{sep}:{sep}{v}" for k, v in pairs) + "}"


def test_fast_duplicate_check_matches_strict_parse():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mxmix.checkpoint.safetensors_header import _tensor_info, parse_header_bytes, read_entries

    names = st.one_of(st.text(alphabet='ab:."\\\u00e9{}\x00\x7f', min_size=0, max_size=4),
                      st.sampled_from(['RAW:"a\\u003a"', 'RAW:"\\u003a"', 'RAW:"b\\\\"']))
    valid = st.builds(lambda n: json.dumps({"dtype": "U8", "shape": [n], "data_offsets": [0, n]}), st.integers(0, 3))
    entry = st.builds(lambda d, s, o, extra: json.dumps({"dtype": d, "shape": s, "data_offsets": o, **extra}),
                      st.sampled_from(["F32", "BF16", "U8", "x:y"]),
                      st.lists(st.integers(0, 4), max_size=2), st.lists(st.integers(0, 9), min_size=2, max_size=2),
                      st.dictionaries(st.sampled_from(["k", "k:"]), st.sampled_from(["v", "v:", 1]), max_size=1))
    raw_entry = st.one_of(valid, valid, entry, st.sampled_from(['{"dtype": "F32", "dtype": "F32"}', "5", '"s:t"', "[1, 2]",
                                                  '{"a": {"b": "c:"}}']))
    meta = st.dictionaries(st.sampled_from(["format", "a:b", "c"]), st.sampled_from(["pt", "x:y", ""]), max_size=2)
    pair = st.one_of(st.tuples(names, raw_entry),
                     st.tuples(st.just("__metadata__"), meta.map(json.dumps)))

    @settings(max_examples=250, deadline=None, derandomize=True)
    @given(st.lists(pair, max_size=5), st.sampled_from(["", " "]), st.booleans())
    def check(pairs, sep, dup_last):
        if dup_last and pairs:
            pairs = [*pairs, pairs[0]]
        text = _pairs_text(pairs, sep)
        try:
            expected = _strict(text)
        except ValueError:
            expected = None
        if expected is None:
            with pytest.raises(CheckpointError):
                parse_header_bytes(text.encode(), "x")
        else:
            assert parse_header_bytes(text.encode(), "x") == expected
        # the fused hot path (parse + validate + duplicate proof) agrees with strict parse + per-entry checks
        try:
            ref = None if expected is None else (
                {n: _tensor_info(n, e, "x") for n, e in expected[0].items()}, expected[1])
        except CheckpointError:
            ref = None
        if ref is None:
            with pytest.raises(CheckpointError):
                read_entries(text.encode(), "x")
        else:
            assert read_entries(text.encode(), "x") == ref

    check()
