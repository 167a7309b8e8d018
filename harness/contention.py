"""Who else held the CPU while a case was timed: pressure stall information, cgroup throttling, the host's steal.

Timing is judged only where the machine let the timed process run. `Contention` measures, over a `with` block, the
share of the time this process could not run because of others, from what the kernel offers:

- **CPU pressure** (PSI, Linux 4.20 and later): the share of the time at least one runnable task waited for a CPU
  ("some"), read from the process's own cgroup (v2 `cpu.pressure`: in a container, the container's tasks, not the
  host's) else from the machine's `/proc/pressure/cpu`. A task waits only when the CPUs are taken: a busy loop beside a
  gate that uses every CPU reads nearly 1, while the gate's own work, its threads and child processes, reads nothing
  as long as it does not outnumber its CPUs. So this counts what slowed the timing, not who used the CPU.
- **Throttling**: the time the cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`) held its tasks back.
- **Steal**: the share of the process's CPUs' time the hypervisor gave to other guests (`/proc/stat`).

share = min(1, max(stall, throttled) + steal). Without PSI (an older kernel, or `psi=0`) the stall part falls back
to the share of the process's CPUs' time used by processes other than this one and its descendants (`/proc/stat`,
`/proc/<pid>/stat`), which overstates it in a container that reads the host's `/proc/stat`; the reading says which
source it used. Without `/proc` (macOS) the share is None: not measured, and the gate says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Jiffies per second in /proc/stat and /proc/<pid>/stat."""


@dataclass(frozen=True)
class Proc:
    """Where the kernel's files are: the real / by default; tests point it at a fake tree."""

    root: Path = Path("/")
    pid: int | str = "self"

    def read(self, *parts: str) -> str | None:
        """Return the text of root/parts, or None when it cannot be read (missing, or PSI turned off)."""
        try:
            return self.root.joinpath(*parts).read_text(encoding="ascii", errors="replace")
        except (OSError, ValueError):
            return None

    def cgroup_paths(self) -> dict[str, str]:
        """Return {controller: path} of this process's cgroups ("" is the v2 unified hierarchy)."""
        text = self.read("proc", str(self.pid), "cgroup") or ""
        paths = {}
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(",") if parts[1] else [""]:
                    paths[controller] = parts[2].lstrip("/")
        return paths

    def pressure(self) -> tuple[str, int] | None:
        """Return (source, microseconds some task waited for a CPU, cumulative), own cgroup v2 first."""
        v2 = self.cgroup_paths().get("")
        candidates = []
        if v2 is not None:
            candidates += [("sys", "fs", "cgroup", v2, "cpu.pressure"), ("sys", "fs", "cgroup", "unified", v2,
                                                                          "cpu.pressure")]
        candidates.append(("proc", "pressure", "cpu"))
        for parts in candidates:
            total = _some_total(self.read(*(p for p in parts if p)))
            if total is not None:
                return "psi:/" + "/".join(p for p in parts if p), total
        return None

    def throttled_us(self) -> int | None:
        """Return the microseconds the process's cgroup was throttled by its CPU quota (v2, else v1), or None."""
        paths = self.cgroup_paths()
        v2 = paths.get("")
        if v2 is not None:
            for parts in (("sys", "fs", "cgroup", v2, "cpu.stat"), ("sys", "fs", "cgroup", "unified", v2, "cpu.stat")):
                found = _stat_field(self.read(*(p for p in parts if p)), "throttled_usec")
                if found is not None:
                    return found
        for controller in ("cpu", "cpuacct"):
            v1 = paths.get(controller)
            if v1 is None:
                continue
            for folder in ("cpu,cpuacct", "cpu", "cpuacct"):
                found = _stat_field(self.read(*(p for p in ("sys", "fs", "cgroup", folder, v1, "cpu.stat") if p)),
                                    "throttled_time")
                if found is not None:
                    return found // 1000  # nanoseconds in v1
        return None

    def cpu_jiffies(self, cpus: Iterable[int]) -> tuple[int, int, int] | None:
        """Return (steal, busy, total) jiffies of `cpus` from /proc/stat (busy: everything but idle and iowait)."""
        text = self.read("proc", "stat")
        if text is None:
            return None
        wanted = {f"cpu{c}" for c in cpus}
        steal = busy = total = 0
        seen = False
        for line in text.splitlines():
            name, *values = line.split()
            if name not in wanted:
                continue
            seen = True
            user, nice, system, idle, iowait, irq, softirq, stolen = ([int(v) for v in values] + [0] * 8)[:8]
            steal += stolen
            busy += user + nice + system + irq + softirq + stolen
            total += user + nice + system + idle + iowait + irq + softirq + stolen
        return (steal, busy, total) if seen else None

    def family_jiffies(self) -> int | None:
        """Return the user + system jiffies of this process, its reaped children and its live descendants."""
        me = self.read("proc", str(self.pid), "stat")
        if me is None:
            return None
        fields = _stat_fields(me)
        own = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        pid = os.getpid() if self.pid == "self" else int(self.pid)
        return own + self._descendants_jiffies(pid)

    def processes(self) -> dict[int, tuple[int, int]]:
        """Return {pid: (parent pid, user + system jiffies)} of every live process /proc lists."""
        try:
            entries = [p for p in (self.root / "proc").iterdir() if p.name.isdigit()]
        except OSError:
            return {}
        table = {}
        for entry in entries:
            text = self.read("proc", entry.name, "stat")
            if text is None:
                continue
            fields = _stat_fields(text)
            table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        return table

    def descendants(self, pid: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
        """Return the live descendants of `pid` (children, their children, ...), from `table` (default: processes())."""
        children: dict[int, list[int]] = {}
        for child, (parent, _) in (self.processes() if table is None else table).items():
            children.setdefault(parent, []).append(child)
        found, stack = [], list(children.get(pid, []))
        while stack:
            child = stack.pop()
            found.append(child)
            stack += children.get(child, [])
        return found

    def _descendants_jiffies(self, pid: int) -> int:
        table = self.processes()
        return sum(table[child][1] for child in self.descendants(pid, table))


def _some_total(text: str | None) -> int | None:
    """Return the total= of the "some" line of a PSI file, or None."""
    for line in (text or "").splitlines():
        if line.startswith("some "):
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if key == "total" and value.isdigit():
                    return int(value)
    return None


def _stat_field(text: str | None, name: str) -> int | None:
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value.strip())
    return None


def _stat_fields(text: str) -> list[str]:
    """Return the fields of /proc/<pid>/stat after the command name: [state, ppid, ..., utime at 11, stime at 12,
    cutime at 13, cstime at 14, ...] (proc(5) numbers them from 3)."""
    return text.rpartition(")")[2].split()


@dataclass(frozen=True)
class Snapshot:
    """The counters contention is computed from, at one moment (None: not available here)."""

    wall: float
    stall: tuple[str, int] | None
    throttled_us: int | None
    jiffies: tuple[int, int, int] | None
    family: int | None

    @classmethod
    def take(cls, proc: Proc, cpus: Iterable[int], *, fallback: bool) -> Snapshot:
        """Return the counters now; the descendants' jiffies only when `fallback` (no PSI) needs them."""
        stall = proc.pressure()
        return cls(
            wall=time.perf_counter(),
            stall=stall,
            throttled_us=proc.throttled_us(),
            jiffies=proc.cpu_jiffies(cpus),
            family=proc.family_jiffies() if fallback or stall is None else None,
        )


@dataclass(frozen=True)
class Reading:
    """What contention was over one window: `share` (None: not measured) and its parts, with their source."""

    share: float | None
    seconds: float
    source: str
    stall: float | None = None
    throttled: float | None = None
    steal: float | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the reading for a case's record."""
        return {"share": self.share, "seconds": round(self.seconds, 3), "source": self.source, "stall": self.stall,
                "throttled": self.throttled, "steal": self.steal}

    def describe(self) -> str:
        """Return the share and what it was made of, for a check's message."""
        if self.share is None:
            return f"not measured ({self.source})"
        parts = [f"{name} {value:.0%}" for name, value in (("stall", self.stall), ("throttled", self.throttled),
                                                           ("steal", self.steal)) if value]
        return f"{self.share:.0%}" + (f" ({', '.join(parts)}; {self.source})" if parts else f" ({self.source})")


def reading_between(start: Snapshot, end: Snapshot) -> Reading:
    """Return the contention between two snapshots of the same process."""
    seconds = max(end.wall - start.wall, 1e-9)
    steal = throttled = stall = None
    if start.jiffies and end.jiffies:
        d_steal, d_busy, d_total = (b - a for a, b in zip(start.jiffies, end.jiffies, strict=True))
        steal = min(1.0, max(0.0, d_steal / d_total)) if d_total > 0 else 0.0
    if start.throttled_us is not None and end.throttled_us is not None:
        throttled = min(1.0, max(0.0, (end.throttled_us - start.throttled_us) / (seconds * 1e6)))
    if start.stall is not None and end.stall is not None and start.stall[0] == end.stall[0]:
        stall = min(1.0, max(0.0, (end.stall[1] - start.stall[1]) / (seconds * 1e6)))
        source = end.stall[0]
    elif start.jiffies and end.jiffies and start.family is not None and end.family is not None:
        d_steal, d_busy, d_total = (b - a for a, b in zip(start.jiffies, end.jiffies, strict=True))
        others = d_busy - d_steal - (end.family - start.family)
        stall = min(1.0, max(0.0, others / d_total)) if d_total > 0 else 0.0
        source = "cpu time of other processes (/proc/stat: no CPU pressure information here)"
    else:
        return Reading(None, seconds, "no /proc/pressure or /proc/stat on this platform")
    share = min(1.0, max(stall, throttled or 0.0) + (steal or 0.0))
    return Reading(share, seconds, source, stall, throttled, steal)


def own_cpus() -> list[int]:
    """Return the CPUs this process may run on (its affinity mask), else every CPU."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


@dataclass
class Contention:
    """The contention over a `with` block: `reading` (a Reading) once the block has ended; `share` for short."""

    proc: Proc = field(default_factory=Proc)
    reading: Reading | None = None

    def __enter__(self) -> Contention:
        self._cpus = own_cpus()
        self._start = Snapshot.take(self.proc, self._cpus, fallback=False)
        return self

    def __exit__(self, *exc: object) -> None:
        end = Snapshot.take(self.proc, self._cpus, fallback=self._start.stall is None)
        self.reading = reading_between(self._start, end)

    @property
    def share(self) -> float | None:
        """Return the share of the block's time the process was held back by others (None: not measured)."""
        return None if self.reading is None else self.reading.share


def measure_for(seconds: float, proc: Proc | None = None) -> Reading:
    """Return the contention of a `seconds` window in which this process sleeps."""
    with Contention(proc or Proc()) as window:
        time.sleep(seconds)
    assert window.reading is not None
    return window.reading


@dataclass(frozen=True)
class BusyRule:
    """When a timing counts as disturbed and what is done about it (thresholds.json timing.busy_*): others held the
    process back more than `limit` of the time; then wait up to `wait_s` for a quiet machine and time it again, up
    to `retries` times."""

    limit: float
    wait_s: float
    retries: int


@dataclass(frozen=True)
class Wait:
    """How a wait for a quiet machine ended: quiet or not, after how long, and the last window's reading."""

    quiet: bool
    waited_s: float
    last: Reading


def wait_until_quiet(limit: float, *, max_wait_s: float, window_s: float = 2.0, proc: Proc | None = None) -> Wait:
    """Return once a `window_s` window in which this process sleeps reads contention at most `limit`, or after
    `max_wait_s`; a machine without the counters counts as quiet at once (nothing to wait for)."""
    start = time.perf_counter()
    while True:
        last = measure_for(window_s, proc)
        waited = time.perf_counter() - start
        if last.share is None or last.share <= limit:
            return Wait(True, waited, last)
        if waited + window_s > max_wait_s:
            return Wait(False, waited, last)
