"""The canonical args vectors shared with the Node and Rust suites (node/test/fixtures):
Python's codec makes exactly the bytes the file says, so the file cannot drift from it."""

from __future__ import annotations

import json

import pytest

from cachebackd import encode_args
from conftest import REPO

VECTORS = json.loads(
    (REPO / "node" / "test" / "fixtures" / "canonical-args.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_python_encodes_each_shared_vector_as_written(vector: dict[str, object]) -> None:
    args = json.loads(str(vector["input"]))
    assert encode_args(args).decode("ascii") == vector["expected"]
