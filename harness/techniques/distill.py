"""distill: fine-tune with a ResNet50 teacher (the article's loss), next to a no-teacher baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.techniques import _fine_tune
from harness.techniques.base import ApplyContext, Evaluator, Judgement, ModelState, conv_and_linear_names

if TYPE_CHECKING:
    from torch import nn

    from harness.evaluate import EvalResult

TEACHER_ARCH = "resnet50"
VERSION = 1
# The article's loss (T=5, alpha=0.7), not its optimizer: the fine-tune recipe is _fine_tune.RECIPES (SGD with a
# cosine decay), under which the no-teacher baseline does its best, so a gain over it is the teacher's.


def teacher_for(ctx: ApplyContext) -> nn.Module:
    """Return the teacher: torchvision's ResNet50 for ImageNet data, else one trained on the train split."""
    from harness import models

    if ctx.data.is_imagenet:
        loaded = models.load_model(TEACHER_ARCH, ctx.data, weights="imagenet", device=ctx.device)
        return loaded.module.eval()
    module, _ = models.train_on_data(TEACHER_ARCH, ctx.data, device=ctx.device, progress=ctx.progress)
    return module.eval()


def apply(state: ModelState, ctx: ApplyContext) -> ModelState:
    """Return the state with the distilled student; the teacher and the no-teacher baseline go in `extra`."""
    from harness import models, train

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
        module=student, float_module=student, covered=layers, note=note, extra=extra
    )


def judge(state: ModelState, result: EvalResult, evaluate: Evaluator) -> Judgement:
    """Evaluate the teacher and the no-teacher baseline on the eval set, and say what the student's result means.

    The gain counts only if the teacher is measurably better than the student trained with the same budget
    without it (one-sided McNemar at 5%); otherwise the result is labeled not meaningful.
    """
    from harness.stats import paired_accuracy

    teacher = evaluate(state.extra.pop("distill_teacher"))
    baseline = evaluate(state.extra.pop("distill_baseline"))
    teacher_vs_baseline = paired_accuracy(teacher.correct.tolist(), baseline.correct.tolist())
    meaningful = teacher_vs_baseline.drop > 0 and teacher_vs_baseline.p_value < 0.05
    gain = paired_accuracy(baseline.correct.tolist(), result.correct.tolist())
    extra = {
        "distill_teacher_top1": teacher.top1,
        "distill_baseline_top1": baseline.top1,
        "distill_gain_vs_baseline": -gain.drop,
        "distill_gain_p_value": gain.p_value,
        "distill_meaningful": meaningful,
    }
    if meaningful:
        note = (
            f"distillation: student {result.top1:.2%} vs {baseline.top1:.2%} trained without the teacher "
            f"(teacher {teacher.top1:.2%})"
        )
    else:
        note = (
            f"distillation NOT MEANINGFUL: the teacher ({teacher.top1:.2%}) is not measurably better than the "
            f"student trained without it ({baseline.top1:.2%}), so no gain or loss is claimed"
        )
    return extra, [note]


TECHNIQUE = _fine_tune.retraining_technique(
    "distill", "distillation from ResNet50 (T=5, alpha=0.7) on the train split, with a no-teacher baseline",
    apply, judge=judge,
    epochs=_fine_tune.epochs_option("fine-tune epochs of the student and of its no-teacher baseline", minimum=1),
)
