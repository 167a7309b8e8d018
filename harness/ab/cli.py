"""The `ab` and `bisect` commands: their arguments, the checks before any work, and what they print and write."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.ab.runner import Settings

DEFAULT_OUT = Path("results/ab.json")
DEFAULT_BUDGET_S = 30.0
"""The most seconds of interleaved rounds a case gets: it is timed until its change is known to the target precision
(thresholds "ab".target_se), which takes less for most cases."""
EXIT_REGRESSION = 1
EXIT_UNDECIDED = 3
"""bisect: the search ended on a commit that is not, confirmed, worse than its own parent."""


def _shared(parser: argparse.ArgumentParser) -> None:
    """Add the options `ab` and `bisect` share: what to measure and how."""
    add = parser.add_argument
    add("--model", default="resnet18",
        help="resnet18, resnet50, torchvision:NAME or package.module:factory, imported in each side's checkout "
        "(default: resnet18)")
    add("--data", default="digits", help="digits, imagenet:PATH or folder:PATH; a relative PATH is this folder's "
        "(default: digits)")
    add("--weights", default=None, help="checkpoint PATH for both sides (default: each side's model trained by the "
        "harness, or ImageNet weights on imagenet data)")
    add("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    add("--budget", type=float, default=DEFAULT_BUDGET_S,
        help="the most seconds of interleaved timing per case, both sides together: a case is timed until its change "
        f"is known to the target precision, or this long (default: {DEFAULT_BUDGET_S:g})")
    add("--option", action="append", default=[], metavar="TECHNIQUE.NAME=VALUE", help="a technique option")
    add("--seed", type=int, default=0, help="seed of splits and training (default: 0)")
    add("--eval-count", type=int, default=None, help="eval images (default: 500 for digits, 1000 for imagenet)")
    add("--threads", type=int, default=None, help="torch threads of each worker (default: the CPUs usable here)")
    add("--thresholds", type=Path, default=None,
        help="thresholds file (default: the one shipped in harness/gate/thresholds.json)")
    add("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default: {DEFAULT_OUT})")
    parser.set_defaults(project_options={})  # [tool.resnet-gate] options: an --option of the same name wins


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `ab` and `bisect` to the command line."""
    ab = sub.add_parser("ab", help="measure head against base on this machine in one job; exit 1 on a regression")
    ab.add_argument("base", help="the git ref to compare against (a branch, tag or commit, e.g. origin/main)")
    ab.add_argument("head", nargs="?", default=None, help="the git ref to judge (default: the working tree as it is)")
    ab.add_argument("--variants", default="fp32", help="comma list of variants or presets, or all (default: fp32)")
    ab.add_argument("--batch-sizes", default="1,32", help="comma list (default: 1,32)")
    ab.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown (a PR comment)")
    ab.add_argument("--unjudged", choices=("fail", "warn"), default="fail",
                    help="what a case whose latency could not be judged (a machine busy through every wait) does: "
                    "fail the run, or warn and pass on what was judged (default: fail)")
    _shared(ab)
    bisect = sub.add_parser("bisect", help="find the first commit between GOOD and BAD that regressed a case")
    bisect.add_argument("good", help="a git ref where the case was fine")
    bisect.add_argument("bad", help="a later git ref where it regressed")
    bisect.add_argument("--case", required=True, help="the case id, as the gate and ab name it: fp32-cpu-bs1")
    bisect.add_argument("--metric", default="latency",
                        help="latency, top1, size_bytes, compressed_size_bytes, macs or peak_memory_bytes "
                        "(default: latency)")
    _shared(bisect)


def _absolute_data(spec: str) -> str:
    """Return the data spec with its folder made absolute (each side's worker runs in its own checkout)."""
    from harness.data_spec import parse_spec

    kind, folder = parse_spec(spec)
    return spec if folder is None else f"{kind}:{folder.resolve()}"


def settings_of(
    args: argparse.Namespace, variants: str, batch_sizes: str | list[int] | tuple[int, ...]
) -> Settings:
    """Return the ab Settings of the arguments (defaults from the project's [tool.resnet-gate] already in them),
    every one checked (HarnessError naming the fix)."""
    import torch

    from harness import preflight, project_config, techniques
    from harness.ab.runner import Settings
    from harness.gate.thresholds import load_thresholds
    from harness.machine import available_cpus
    from harness.model_spec import parse_model

    spec = parse_model(args.model)
    device = preflight.torch_device(args.device, cuda_count=torch.cuda.device_count())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = techniques.select_variants(variants)
    configured = project_config.options_for(chosen, args.project_options)  # for the techniques these variants use
    options = {**configured, **techniques.parse_options(args.option, chosen)}
    text = batch_sizes if isinstance(batch_sizes, str) else ",".join(str(b) for b in batch_sizes)
    sizes = preflight.parse_batch_sizes(text)
    cpus = available_cpus()
    threads = cpus if args.threads is None else preflight.thread_count(args.threads, "--threads", cpus=cpus)
    if not args.budget > 0:
        raise HarnessError(f"--budget must be positive seconds of timing per case, got {args.budget}")
    if args.eval_count is not None and args.eval_count < 1:
        raise HarnessError(f"--eval-count must be at least 1, got {args.eval_count}")
    if not 0 <= args.seed <= preflight.SEED_MAX:
        raise HarnessError(f"--seed must be between 0 and {preflight.SEED_MAX}, got {args.seed}")
    if args.thresholds is not None:
        preflight.input_file(
            Path(args.thresholds), "--thresholds", "give a file such as harness/gate/thresholds.json"
        )
    weights = args.weights
    if weights not in (None, "imagenet"):
        weights = str(preflight.input_file(Path(weights), "--weights", "give a checkpoint file").resolve())
    preflight.output_file(args.out, "--out")
    return Settings(
        model=spec.arch, data=_absolute_data(args.data), weights=weights, variants=tuple(chosen),
        batch_sizes=tuple(sizes), device=device, threads=threads, budget_s=float(args.budget),
        thresholds=load_thresholds(None if args.thresholds is None else Path(args.thresholds)), seed=args.seed,
        eval_count=args.eval_count, options=options, unjudged=getattr(args, "unjudged", "fail"),
    )


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write(out: Path, obj: object) -> None:
    from harness.jsonio import write_json_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, obj)


def ab_command(args: argparse.Namespace) -> int:
    """Run `ab`: print the table, write the JSON (and markdown), exit 1 on a confirmed regression."""
    from harness import preflight
    from harness.ab import output
    from harness.ab.git import WORKING_TREE, Repository
    from harness.ab.runner import Side, compare

    settings = settings_of(args, args.variants, args.batch_sizes)
    if args.markdown is not None:
        preflight.output_file(args.markdown, "--markdown", example="ab.md")
    repo = Repository.around(Path(os.getcwd()))
    base_commit = repo.commit(args.base)
    head_commit = None if args.head is None else repo.commit(args.head)
    with ExitStack() as stack:
        base = Side("base", args.base, base_commit, repo.describe(base_commit),
                    stack.enter_context(repo.checked_out(base_commit)))
        if head_commit is None:
            dirty = " with uncommitted changes" if repo.dirty() else ""
            head = Side("head", WORKING_TREE, None, f"working tree{dirty}", Path(os.getcwd()))
        else:
            head = Side("head", args.head, head_commit, repo.describe(head_commit),
                        stack.enter_context(repo.checked_out(head_commit)))
        comparison = compare(settings, base, head, report=_report)
    print(output.text(comparison))
    _write(args.out, output.to_json(comparison))
    if args.markdown is not None:
        from harness.jsonio import write_atomic

        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.markdown, lambda f: f.write(output.markdown(comparison).encode("utf-8")))
    _report(f"wrote {args.out}{f' and {args.markdown}' if args.markdown else ''} in {comparison.seconds:.0f} s")
    return EXIT_REGRESSION if comparison.failed else 0


def parse_case(case: str) -> tuple[str, str, int]:
    """Return (variant, device, batch size) of a --case id such as fp32-cpu-bs1."""
    from harness.results import parse_case_id

    try:
        return parse_case_id(case)
    except HarnessError as err:
        raise HarnessError(f"--case {err}") from None


def bisect_command(args: argparse.Namespace) -> int:
    """Run `bisect`: print each step's evidence and the first bad commit; exit 0 when found (and confirmed against its
    parent), 1 when BAD does not regress against GOOD, 3 when it cannot decide (it says why)."""
    from harness.ab.bisect import METRICS, bisect, one_case
    from harness.ab.git import Repository

    variant, device, batch_size = parse_case(args.case)
    if args.metric not in METRICS:
        raise HarnessError(f"--metric {args.metric!r} is not one bisect can chase: choose one of {', '.join(METRICS)}")
    if args.device == "auto":
        args.device = device
    settings = one_case(settings_of(args, variant, str(batch_size)), variant, batch_size)
    if settings.device.split(":")[0] != device:
        raise HarnessError(f"--case {args.case} runs on {device} but --device is {args.device}: drop --device")
    repo = Repository.around(Path(os.getcwd()))
    found = bisect(repo, args.good, args.bad, settings, args.metric, _report)
    for step in found.steps:
        print(f"{'BAD ' if step.bad else 'good'}  {step.label}  {step.evidence}")
    first_bad = found.first_bad if found.verdict == "found" else None
    _write(args.out, {
        "schema": "harness-bisect", "schema_version": 2, "case": args.case, "metric": args.metric,
        "good": repo.commit(args.good), "bad": repo.commit(args.bad), "verdict": found.verdict, "why": found.why,
        "first_bad": None if first_bad is None else first_bad.commit,
        "steps": [{"commit": s.commit, "label": s.label, "bad": s.bad, "evidence": s.evidence, "case": s.outcome}
                  for s in found.steps],
    })
    if found.verdict == "nothing":
        print(f"{args.bad} does not regress {args.case} on {args.metric} against {args.good}: nothing to bisect")
        return EXIT_REGRESSION
    if first_bad is None:
        print(f"bisect cannot decide: {found.why}")
        return EXIT_UNDECIDED
    print(f"first bad commit: {first_bad.label} ({first_bad.commit}), confirmed against its parent")
    return 0
