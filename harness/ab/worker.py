"""One side of `ab`: a process that loads its checkout's model, builds variants and times them on request.

The parent (harness/ab/client.py) starts it with its checkout's project folder as the current folder, so
`--model package.module:factory` imports that side's code, and with `python -P`, so the harness itself is the
installed one on both sides. It reads one JSON request per line on stdin and answers one JSON line on the pipe
that was stdout; anything else the process prints (training progress, library warnings) goes to stderr.

Requests: open (data, model, weights, seed, eval count, options, device, threads), build (a variant: its
accuracy on the eval images, sizes, MACs), memory (a case's peak memory), warm and time (a case: `pairs` calls of
the model and of the fixed yardstick network, alternating, in the order the parent says), quit. While the parent
has the other side time its round this process waits on its stdin, doing nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import IO, Any

from harness.errors import HarnessError

SETTLE_S = 0.01
"""Seconds a worker waits after its burst of timed calls before it answers, so its own OpenMP threads stop spinning
before the other side starts timing (libgomp spins a little after each parallel region)."""


class Worker:
    """The state of one side: its session and what it has built."""

    def __init__(self) -> None:
        self.session: Any = None
        self.inputs: dict[tuple[int, int], Any] = {}

    def open(self, request: dict[str, Any]) -> dict[str, Any]:
        """Load the data and the fp32 model (training the model when it is not cached)."""
        from harness import pipeline
        from harness.env import env_key, fingerprint
        from harness.machine import fix_threads, pin_allocator

        threads = fix_threads(int(request["threads"]))
        setup = pin_allocator()
        self.session = pipeline.open_session(
            data=request["data"],
            device=request["device"],
            weights=request.get("weights"),
            arch=request["model"],
            seed=int(request.get("seed", 0)),
            eval_count=request.get("eval_count"),
            options=request.get("options") or {},
            progress=False,
        )
        device = self.session.device_kind
        return {
            "model": self.session.model.label,
            "identity": self.session.identity(),
            "env_key": env_key({**fingerprint(), "torch_threads": threads}, device),
            "environment": {**fingerprint(), "timing_setup": {"threads": threads, **setup}},
            "folder": os.getcwd(),
        }

    def build(self, request: dict[str, Any]) -> dict[str, Any]:
        """Build a variant and evaluate it; a variant that cannot run here answers `skipped` with the reason."""
        from harness import techniques
        from harness.pipeline import build_variant

        variant = request["variant"]
        reason = techniques.variant_skip_reason(variant, self.session.device_kind)
        if reason:
            return {"skipped": reason}
        try:
            built = build_variant(self.session, variant)
        except HarnessError as err:  # e.g. a technique that cannot transform this model: say why
            return {"error": str(err)}
        return {
            "top1": built.eval.top1,
            "correct": "".join("1" if c else "0" for c in built.eval.correct),
            "size_bytes": built.size.size_bytes,
            "compressed_size_bytes": built.size.compressed_size_bytes,
            "params": built.size.params,
            "nonzero_params": built.size.nonzero_params,
            "macs": built.macs,
            "build_seconds": built.build_seconds,
            "notes": list(built.notes),
        }

    def _input(self, batch_size: int, size: int = 224) -> Any:
        from harness.measure import timing_input

        if (batch_size, size) not in self.inputs:
            self.inputs[(batch_size, size)] = timing_input(batch_size, self.session.device, size=size)
        return self.inputs[(batch_size, size)]

    def _calls(self, variant: str, batch_size: int, yardstick_size: int = 224, yardstick_calls: int = 1) -> tuple[
            Any, Any]:
        """Return the case's model call and the yardstick's: torchvision's ResNet18 on images of `yardstick_size`
        pixels, called `yardstick_calls` times, so that it costs about what the model does (the parent matches it)."""
        from harness.techniques import ModelState

        built = self.session.built[variant]
        x, y = self._input(batch_size), self._input(batch_size, yardstick_size)
        yardstick = ModelState.of(self.session.yardstick)

        def yardsticks() -> Any:
            for _ in range(yardstick_calls):
                out = yardstick(y)
            return out

        return (lambda: built.state(x)), yardsticks

    def memory(self, request: dict[str, Any]) -> dict[str, Any]:
        """Return the case's peak memory: the weights plus one call's activation peak (None where unmeasured)."""
        from harness.measure import activation_peak_bytes

        model, _ = self._calls(request["variant"], int(request["batch_size"]))
        peak = activation_peak_bytes(model, self.session.device)
        built = self.session.built[request["variant"]]
        return {"peak_memory_bytes": None if peak is None else built.size.tensor_bytes + peak}

    def warm(self, request: dict[str, Any]) -> dict[str, Any]:
        """Call the case's model and the full-size yardstick `calls` times each (the first call at a shape may
        compile), and return how long each took at its fastest (the parent matches the yardstick's cost to it)."""
        import torch

        from harness.measure import Timer

        model, yardstick = self._calls(request["variant"], int(request["batch_size"]))
        timer = Timer(self.session.device)
        start = time.perf_counter()
        model_ms, yardstick_ms = [], []
        with torch.inference_mode():
            model()
            yardstick()
            for _ in range(int(request.get("calls", 2))):
                model_ms.append(timer.time_ms(model))
                yardstick_ms.append(timer.time_ms(yardstick))
        return {"seconds": time.perf_counter() - start, "model_ms": min(model_ms), "yardstick_ms": min(yardstick_ms)}

    def time(self, request: dict[str, Any]) -> dict[str, Any]:
        """Time `pairs` calls of the model and of the yardstick, alternating, the model first when `model_first`.

        With `rewarm`, one untimed call of each comes first: the other side's burst has just evicted this
        process's weights from the caches, and the first call after it would time that.
        """
        import torch

        from harness.measure import Timer

        model, yardstick = self._calls(request["variant"], int(request["batch_size"]),
                                       int(request.get("yardstick_size", 224)), int(request.get("yardstick_calls", 1)))
        timer = Timer(self.session.device)
        model_ms: list[float] = []
        yardstick_ms: list[float] = []
        model_first = bool(request.get("model_first", True))
        with torch.inference_mode():
            if request.get("rewarm", False):
                model()
                yardstick()
                timer.synchronize()
            for i in range(int(request["pairs"])):
                if (i % 2 == 0) == model_first:
                    model_ms.append(timer.time_ms(model))
                    yardstick_ms.append(timer.time_ms(yardstick))
                else:
                    yardstick_ms.append(timer.time_ms(yardstick))
                    model_ms.append(timer.time_ms(model))
        time.sleep(SETTLE_S)
        return {"model_ms": model_ms, "yardstick_ms": yardstick_ms}


OPERATIONS = ("open", "build", "memory", "warm", "time")


def serve(requests: IO[str], answers: IO[str]) -> int:
    """Answer requests until `quit` or the end of the input; return the exit status."""
    worker = Worker()
    for line in requests:
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "quit":
                return 0
            if op not in OPERATIONS:
                raise HarnessError(f"unknown request {op!r}: expected one of {', '.join(OPERATIONS)} or quit")
            if op != "open" and worker.session is None:
                raise HarnessError(f"request {op!r} before open")
            answer = {"ok": True, **getattr(worker, op)(request)}
        except HarnessError as err:
            answer = {"ok": False, "error": str(err)}
        except Exception as err:  # anything else is a bug or the user's model failing: send the whole story
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


def main() -> int:
    """Serve on stdin and the original stdout; everything else printed goes to stderr."""
    import warnings

    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not break the protocol
    try:
        return serve(sys.stdin, answers)
    except KeyboardInterrupt:  # the parent was interrupted too and will end us: leave quietly
        return 130


if __name__ == "__main__":
    sys.exit(main())
