"""The command line: `python -m harness run | list | compare | baseline | report | history | ab | bisect | gate`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.ab.cli import add_parsers as add_ab_parsers
from harness.errors import HarnessError
from harness.history.cli import add_history_parser, run_history

DEFAULT_OUT = Path("results/latest.json")
INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT, as a shell reports it)."""


def _batch_sizes(text: str) -> list[int]:
    from harness.preflight import parse_batch_sizes

    try:
        return list(parse_batch_sizes(text))
    except HarnessError as err:
        raise argparse.ArgumentTypeError(f"--batch-sizes: {err}") from err


def build_parser(command_defaults: Mapping[str, Mapping[str, Any]] | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand; `command_defaults` (command -> {dest: value}, the project's
    [tool.resnet-gate] values) replace the built-in defaults, so a flag given still wins."""
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="measure variants and write a results JSON")
    run.add_argument(
        "--variants",
        default="fp32",
        help="comma list of variants (techniques joined by '+', or presets), or 'all' (default: fp32)",
    )
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    run.add_argument("--data", default="digits", help="digits, imagenet:PATH or folder:PATH (default: digits)")
    run.add_argument(
        "--eval-count",
        type=int,
        default=None,
        help="number of eval images (default: 500 for digits, 1000 for imagenet)",
    )
    run.add_argument(
        "--model",
        default="resnet18",
        help="resnet18, resnet50, torchvision:NAME (any torchvision image classifier) or package.module:factory "
        "(your nn.Module factory, imported from the current directory or PYTHONPATH) (default: resnet18)",
    )
    run.add_argument(
        "--weights",
        default=None,
        help="checkpoint PATH or 'imagenet' (default: ImageNet weights for imagenet data, "
        "else a model the harness trains and caches)",
    )
    run.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 32], help="comma list (default: 1,32)")
    run.add_argument(
        "--budget",
        type=float,
        default=4.0,
        help="seconds of timing per case, fp32 and the variant interleaved (default: 4)",
    )
    run.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="TECHNIQUE.NAME=VALUE",
        help="a technique option, e.g. prune_structured.ratio=0.5 (repeatable; `list` shows every option)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of splits and training (default: 0)")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default: {DEFAULT_OUT})")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--threads", type=int, default=None, help="torch threads, fixed (default: the CPUs usable here)")
    run.set_defaults(project_options={})  # [tool.resnet-gate] options: an --option of the same name wins

    sub.add_parser("list", help="list the techniques and their options, the presets, the datasets and the metrics")
    sub.add_parser(
        "gate",
        add_help=False,  # -h goes to pytest, whose help lists the gate's options
        help="run the regression gate with pytest in this project, with its [tool.resnet-gate] defaults; every "
        "argument goes to pytest (e.g. -m quick, --device cuda --require-gpu, --update-baselines)",
    )

    compare = sub.add_parser("compare", help="compare two results JSON files; exit 1 on a regression")
    compare.add_argument("old", type=Path, help="the earlier results JSON")
    compare.add_argument("new", type=Path, help="the later results JSON")
    compare.add_argument("--markdown", type=Path, default=None, help="also write the comparison as markdown here")
    compare.add_argument(
        "--thresholds", type=Path, default=None, help="thresholds file (default: harness/gate/thresholds.json)"
    )

    baseline = sub.add_parser("baseline", help="record a baseline from gate runs, or show what one can detect")
    verbs = baseline.add_subparsers(dest="verb", required=True)
    write = verbs.add_parser("write", help="write this environment's baseline from results JSON of gate runs")
    write.add_argument("results", type=Path, nargs="+", help="results JSON of fresh-process gate runs (--results-json)")
    write.add_argument("--force", action="store_true", help="write even from a dirty tree or a busy machine")
    show = verbs.add_parser("show", help="each timing check's runs, spread and the slowdown it catches")
    show.add_argument("--env-key", default=None, help="the baseline to show (default: this machine's)")
    show.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of this machine's key")
    show.add_argument("--model", default="resnet18", help="the model whose baseline to show (default: resnet18)")
    for verb in (write, show):
        verb.add_argument("--baselines-dir", type=Path, default=Path("baselines"), help="(default: baselines)")
        verb.add_argument("--thresholds", type=Path, default=None, help="(default: harness/gate/thresholds.json)")

    report = sub.add_parser("report", help="write the markdown table and the accuracy-latency plot of a run")
    report.add_argument("results", type=Path, help="a results JSON")
    report.add_argument("--out-dir", type=Path, default=None, help="where to write (default: beside the results)")
    report.add_argument("--batch-size", type=int, default=None, help="batch size to plot (default: the largest)")
    add_history_parser(sub)
    add_ab_parsers(sub)
    for command, defaults in (command_defaults or {}).items():
        subparser(sub, command).set_defaults(**defaults)
    return parser


def subparser(sub: argparse._SubParsersAction, command: str) -> argparse.ArgumentParser:
    """Return the parser of `command`, a command or a command and its verb ("baseline show"): a verb's own
    defaults win over its command's, so the defaults go on the verb's parser."""
    words = command.split()
    parser = sub.choices[words[0]]
    for word in words[1:]:
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = verbs.choices[word]
    return parser


def command_list() -> int:
    """Print the registries: techniques with their devices and options, presets, datasets, metrics."""
    from harness import techniques
    from harness.data_spec import DATASETS
    from harness.model_spec import MODEL_KINDS
    from harness.results import METRICS

    print("techniques (variants join them with '+'):")
    for technique in techniques.all_techniques():
        devices = ",".join(technique.devices) or "none"
        missing = technique.requirement() if technique.requirement else None
        extra = f"  [unavailable here: {missing}]" if missing else ""
        print(f"  {technique.name:<20} {devices:<9} {technique.summary}{extra}")
        for option in technique.options:  # an option whose default is None says its default in its meaning
            default = "" if option.default is None else f" (default: {option.default:g})"
            print(f"      --option {technique.name}.{option.name}=  {option.range_text}; {option.meaning}{default}")
    print("presets:")
    for name, variant in techniques.PRESETS.items():
        print(f"  {name:<20} {variant}")
    print("datasets (--data):")
    for name, description in DATASETS.items():
        print(f"  {name:<20} {description}")
    print("models (--model):")
    for name, description in MODEL_KINDS.items():
        print(f"  {name:<22} {description}")
    print("metrics (per case; `judged`: the gate checks it against the baseline, tolerance in thresholds.json):")
    for metric in METRICS:
        judged = f"judged: {metric.judged}" if metric.judged else "shown"
        print(f"  {metric.name:<22} {metric.unit:<9} {judged:<16} {metric.meaning}")
    return 0


@dataclass(frozen=True)
class RunPlan:
    """`run`'s arguments, every one checked (preflight) before any data is loaded or model built."""

    variants: tuple[str, ...]
    options: dict[str, int | float]
    threads: int
    out: Path
    arch: str = "resnet18"
    """The model spec's canonical name (model_spec.ModelSpec.arch): `torchvision:resnet18` is `resnet18`."""


def check_run(args: argparse.Namespace) -> RunPlan:
    """Return the checked plan of `run`; a wrong argument raises HarnessError with the fix, nothing written."""
    import torch

    from harness import preflight, project_config, techniques
    from harness.data_spec import parse_spec
    from harness.machine import available_cpus
    from harness.model_spec import parse_model
    from harness.models import check_model, check_weights

    parse_model(args.model)  # the syntax first, before torch's device check
    preflight.torch_device(args.device, cuda_count=torch.cuda.device_count())
    kind, _folder = parse_spec(args.data)
    if args.eval_count is not None and args.eval_count < 1:
        raise HarnessError(f"--eval-count must be a positive number of images, e.g. 500, got {args.eval_count}")
    preflight.number_in_range(args.budget, "--budget", minimum=0.0, maximum=3600.0, example="4")
    if not 0 <= args.seed <= preflight.SEED_MAX:
        raise HarnessError(f"--seed must be between 0 and {preflight.SEED_MAX}, got {args.seed}")
    cpus = available_cpus()
    threads = cpus if args.threads is None else preflight.thread_count(args.threads, "--threads", cpus=cpus)
    variants = techniques.select_variants(args.variants)
    configured = project_config.options_for(variants, args.project_options)  # for the techniques this run uses
    options = {**configured, **techniques.parse_options(args.option, variants)}
    arch = check_model(args.model).arch
    check_weights(args.weights, arch, kind)
    out = preflight.output_file(args.out, "--out")
    return RunPlan(variants=variants, options=options, threads=threads, out=out, arch=arch)


def command_run(args: argparse.Namespace) -> int:
    """Measure the variants, print the table and write the results JSON."""
    plan = check_run(args)
    from harness import pipeline
    from harness.machine import fix_threads, pin_allocator
    from harness.results import save_run
    from harness.table import notes_lines, text_table

    setup = {"threads": fix_threads(plan.threads), **pin_allocator()}
    start = time.perf_counter()
    session = pipeline.open_session(
        data=args.data,
        device=args.device,
        weights=args.weights,
        arch=plan.arch,
        seed=args.seed,
        eval_count=args.eval_count,
        options=plan.options,
        progress=not args.quiet,
    )
    print(f"data: {session.data.describe()}", file=sys.stderr)
    print(
        f"model: {session.model.label}{' (cached)' if session.model.cached else ''}; device: {session.device}; "
        f"ready in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )

    def progress(case: object) -> None:
        if not args.quiet:
            print(f"  measured {getattr(case, 'case_id', case)} ({getattr(case, 'status', '')})", file=sys.stderr)

    record = pipeline.run(session, list(plan.variants), args.batch_sizes, budget_s=args.budget, on_case=progress)
    record.environment["timing_setup"] = setup
    print(text_table(record.cases))
    for line in notes_lines(record):
        print(f"  note: {line}")
    save_run(plan.out, record)
    print(
        f"wrote {plan.out} ({len(record.cases)} cases, env {record.env_key}) in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


def check_paths(args: argparse.Namespace) -> None:
    """Check the files and folders of `compare`, `baseline` and `report` before any work (HarnessError if wrong)."""
    from harness import preflight

    if args.command == "compare":
        for path in (args.old, args.new):
            preflight.input_file(path, "results file", "give the results JSON a run wrote (--out or --results-json)")
        if args.markdown is not None:
            preflight.output_file(args.markdown, "--markdown", example="comparison.md")
    if args.command in ("compare", "baseline") and args.thresholds is not None:
        preflight.input_file(
            args.thresholds, "--thresholds", "give a thresholds file, e.g. a copy of harness/gate/thresholds.json"
        )
    if args.command == "baseline" and args.verb == "write":
        for path in args.results:
            preflight.input_file(path, "results file", "give the results JSON of gate runs (--results-json)")
        preflight.output_folder(args.baselines_dir, "--baselines-dir")
    if args.command == "baseline" and args.verb == "show":
        if args.env_key is not None:
            preflight.env_key(args.env_key)
        preflight.input_folder(args.baselines_dir, "--baselines-dir", "give the folder that holds <env-key>.json")
    if args.command == "report":
        preflight.input_file(args.results, "results file", "give the results JSON a run wrote (--out)")
        if args.out_dir is not None:
            preflight.output_folder(args.out_dir, "--out-dir")
        if args.batch_size is not None and args.batch_size < 1:
            raise HarnessError(f"--batch-size must be a positive batch size the run measured, got {args.batch_size}")


START_UP_IMPORTS: dict[str, tuple[str, ...]] = {
    "run": ("harness.pipeline",),
    "compare": ("harness.compare",),
    "baseline": ("harness.gate.baseline_cli",),
    "report": ("harness.report", "matplotlib.figure", "matplotlib.backends.backend_agg"),
    "history": ("harness.history.verdict", "harness.history.ingest", "harness.history.page"),
    "ab": ("torch", "harness.ab.runner", "harness.ab.output"),
    "bisect": ("torch", "harness.ab.runner", "harness.ab.bisect"),
}
"""What each command imports before its work (seconds for torch), under interrupts_deferred."""


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, then raise it as KeyboardInterrupt.

    An import cut halfway is not undone: numpy cut inside its lazy attribute import recurses until RecursionError,
    and a Ctrl-C inside torch's C++ start-up marks the interrupt unhandled even once `main` catches it, so the
    process dies by SIGINT instead of exiting 130 (both seen by interrupting `run` in its first second).
    """
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


PROJECT_CONFIGURED = ("run", "ab", "bisect", "baseline")
"""The commands whose defaults come from the project's [tool.resnet-gate] (harness/project_config.py)."""


def configured_name(args: argparse.Namespace) -> str:
    """Return the name project_config.COMMANDS gives the parsed command: "baseline show" for a verb."""
    verb = getattr(args, "verb", None)
    return args.command if verb is None else f"{args.command} {verb}"


def with_project_defaults(command: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv` again with the project's [tool.resnet-gate] values as `command`'s defaults (a flag given still
    wins), and say on stderr which file they came from."""
    from harness import project_config

    config = project_config.load()
    taken = config.describe(command)
    if taken:
        print(f"{command}: defaults from {taken}", file=sys.stderr)
    return build_parser({command: config.defaults_for(command)}).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one clear line and exit 2; Ctrl-C exits 130, files left whole.

    `gate` hands every argument after it to pytest and returns pytest's exit status."""
    parser = build_parser()
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args and args.command != "gate":
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)}")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        if args.command in PROJECT_CONFIGURED:
            args = with_project_defaults(configured_name(args), argv)
        with interrupts_deferred():
            for module in START_UP_IMPORTS.get(args.command, ()):
                importlib.import_module(module)
        check_paths(args)
        if args.command == "list":
            return command_list()
        if args.command == "gate":
            from harness.pytest_gate.command import gate_command

            return gate_command(pytest_args)
        if args.command == "run":
            return command_run(args)
        if args.command == "compare":
            from harness.compare import compare_command

            return compare_command(args.old, args.new, markdown=args.markdown, thresholds=args.thresholds)
        if args.command == "baseline":
            from harness.gate import baseline_cli

            if args.verb == "write":
                return baseline_cli.write_command(
                    args.results, baselines_dir=args.baselines_dir, thresholds=args.thresholds, force=args.force
                )
            return baseline_cli.show_command(
                baselines_dir=args.baselines_dir, env_key=args.env_key, thresholds=args.thresholds, device=args.device,
                model=args.model,
            )
        if args.command == "report":
            from harness.report import report_command

            return report_command(args.results, out_dir=args.out_dir, batch_size=args.batch_size)
        if args.command == "history":
            return run_history(args)
        if args.command in ("ab", "bisect"):
            from harness.ab import cli

            return cli.ab_command(args) if args.command == "ab" else cli.bisect_command(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this line or the exit
        print(
            f"interrupted: {args.command} stopped; every file it writes is written whole or not at all, "
            "so the old ones are as they were",
            file=sys.stderr,
        )
        return INTERRUPTED
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse only admits the commands above


if __name__ == "__main__":
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done: a late Ctrl-C must not interrupt the exit
    sys.exit(status)
