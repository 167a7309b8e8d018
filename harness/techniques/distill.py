"""distill: fine-tune with a ResNet50 teacher (the article's loss), next to a no-teacher baseline."""

from __future__ import annotations

from torch import nn

from harness import models, train
from harness.errors import TechniqueError
from harness.techniques import _fine_tune
from harness.techniques.base import ApplyContext, ModelState, Technique, conv_and_linear_names

TEACHER_ARCH = "resnet50"
VERSION = 1
# The article's loss (T=5, alpha=0.7), not its optimizer: the fine-tune recipe is _fine_tune.RECIPES (SGD with a
# cosine decay), under which the no-teacher baseline does its best, so a gain over it is the teacher's.


def teacher_for(ctx: ApplyContext) -> nn.Module:
    """Return the teacher: torchvision's ResNet50 for ImageNet data, else one trained on the train split."""
    if ctx.data.kind == "imagenet":
        loaded = models.load_model(TEACHER_ARCH, ctx.data, weights="imagenet", device=ctx.device)
        return loaded.module.eval()
    module, _ = models.train_on_data(TEACHER_ARCH, ctx.data, device=ctx.device, progress=ctx.progress)
    return module.eval()


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with the distilled student; the teacher and the no-teacher baseline go in `extra`."""
    if not state.is_eager_float:
        raise TechniqueError(
            "distill retrains the float model, so it must come first (or after float techniques such as "
            "prune_structured): e.g. distill+dynamic_int8"
        )
    ctx.data.training_split("distill")
    config = _fine_tune.recipe(ctx, "distill")
    teacher = teacher_for(ctx)
    base_key = {
        "input": models.weights_fingerprint(state.module),
        "recipe": config.to_dict(),
        "data": models.data_identity(ctx.data),
        "version": VERSION,
    }
    kd = train.DistillConfig()
    teacher_id = {"teacher": models.weights_fingerprint(teacher), "loss": [kd.temperature, kd.alpha]}
    student_key = {**base_key, **teacher_id}
    student = _fine_tune.fine_tuned("distilled", student_key, state.module, ctx, config, purpose="distill",
                                    teacher=teacher)
    baseline = _fine_tune.fine_tuned("distill-baseline", base_key, state.module, ctx, config, purpose="distill")
    layers = {"distill": conv_and_linear_names(student)}
    note = (
        f"distill: {config.epochs} epochs with a {TEACHER_ARCH} teacher (T={kd.temperature:g}, "
        f"alpha={kd.alpha:g}) on the train split; compare distill_baseline, the same fine-tune without it"
    )
    extra = {**state.extra, "distill_teacher": teacher.cpu().eval(), "distill_baseline": baseline.cpu()}
    return state.evolve(
        module=student, float_module=student, covered=layers, notes=[*state.notes, note], extra=extra
    )


TECHNIQUE = Technique(
    name="distill",
    summary="distillation from ResNet50 (T=5, alpha=0.7) on the train split, with a no-teacher baseline",
    apply=apply,
    trains=True,
    options=(
        _fine_tune.epochs_option("fine-tune epochs of the student and of its no-teacher baseline", minimum=1),
    ),
)
