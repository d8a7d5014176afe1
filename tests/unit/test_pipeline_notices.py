"""Pipelines: a deprecation notice reaches the pipeline's caller."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_pipeline import Harness, pipeline, step


def test_a_deprecated_pipeline_or_step_warns_the_pipelines_caller() -> None:
    pipe = replace(pipeline("pipe", "parse", "model"), notice="demo/pipe@1 is deprecated: use @2")
    h = Harness(step("parse", notice="demo/parse@1 is deprecated: use @3"), step("model"), pipe)
    h.worker("parse")
    h.worker("model")
    h.call("r1", "x")
    h.run_step("parse", lambda s: s + "!")
    h.run_step("model", len)
    [(_, reply)] = h.replies
    assert reply.ok and reply.value == 2
    assert reply.warning is not None
    assert "demo/pipe@1 is deprecated" in reply.warning
    assert "demo/parse@1 is deprecated" in reply.warning
