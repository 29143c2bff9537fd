"""The committed stubs are what scripts/gen_protos.py makes from proto/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gen_protos.py"


def test_committed_stubs_match_the_proto() -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    assert spec and spec.loader
    gen_protos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_protos)
    problems = gen_protos.check(gen_protos.generate())
    assert problems == [], "stubs drifted; run python/scripts/gen_protos.py\n" + "\n".join(problems)


def test_stubs_import_as_part_of_the_package() -> None:
    from cachebackd._proto import cacheback_pb2, cacheback_pb2_grpc

    assert cacheback_pb2.DESCRIPTOR.name == "cacheback/v1/cacheback.proto"
    assert cacheback_pb2.GetRequest.__module__ == "cachebackd._proto.cacheback_pb2"
    assert hasattr(cacheback_pb2_grpc, "CachebackStub")
