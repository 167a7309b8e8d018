"""The parent's handle on one side's worker process (harness/ab/worker.py): start it, ask it, end it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from harness.errors import HarnessError

STOP_WAIT_S = 10.0


class WorkerError(HarnessError):
    """A side's worker failed: its model did not build, a request failed, or the process died."""

    def __init__(self, side: str, message: str) -> None:
        super().__init__(f"{side}: {message}")
        self.side = side


class SideWorker:
    """One side's worker process, started in `folder` (its checkout's project folder).

    It runs in its own process group, so a Ctrl-C in the terminal reaches only the parent, which stops the workers
    before it removes their worktrees.
    """

    def __init__(self, side: str, folder: Path) -> None:
        self.side = side
        self.folder = folder
        if not folder.is_dir():
            raise WorkerError(side, f"{folder} does not exist in this checkout: run from a folder both refs have")
        # closed in stop(): it outlives this method, so no `with`
        self.log: IO[bytes] = tempfile.TemporaryFile(prefix=f"harness-ab-{side}-")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "harness.ab.worker"],
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )

    def send(self, op: str, **fields: Any) -> None:
        """Send one request (answer it with `receive`)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died(op) from None

    def receive(self, op: str) -> dict[str, Any]:
        """Return the answer to the last request; a failed one raises WorkerError with the side's message."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise self._died(op)
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok", False):
            detail = answer.get("traceback") or ""
            raise WorkerError(self.side, f"{op} failed: {answer.get('error')}{self._tail(detail)}")
        return answer

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its answer."""
        self.send(op, **fields)
        return self.receive(op)

    def _tail(self, text: str, lines: int = 12) -> str:
        kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
        return ("\n  " + "\n  ".join(kept)) if kept else ""

    def stderr_tail(self) -> str:
        """Return the end of what the worker printed on stderr."""
        self.log.seek(0)
        return self._tail(self.log.read().decode("utf-8", "replace"))

    def _died(self, op: str) -> WorkerError:
        code = self.process.poll()
        return WorkerError(
            self.side,
            f"the worker in {self.folder} ended (exit {code}) during {op}; what it printed:"
            f"{self.stderr_tail() or ' nothing'}",
        )

    def stop(self) -> None:
        """Ask the worker to quit; end it when it does not within STOP_WAIT_S."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()
        self.log.close()

    def kill(self) -> None:
        """End the worker now (after Ctrl-C or an error elsewhere)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stop()
