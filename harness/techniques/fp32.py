"""fp32: the eager float32 model as loaded, the reference every other variant is compared with."""

from __future__ import annotations

from harness.techniques.base import ApplyContext, ModelState, Technique


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state unchanged (the pipeline runs every variant with TF32 off unless `tf32` turns it on)."""
    return state


TECHNIQUE = Technique(name="fp32", summary="eager float32: the reference for every comparison", apply=apply)
