"""What the machine does to a timing: fixed threads, the allocator, CPU identity (contention: test_contention.py)."""

from __future__ import annotations

import pytest
import torch

from harness import cpu_memory
from harness.errors import HarnessError
from harness.machine import available_cpus, fix_threads, identity_of, pin_allocator

EMERALD_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile

processor\t: 1
vendor_id\t: SomethingElse
"""
ZEN4 = "vendor_id : AuthenticAMD\ncpu family : 25\nmodel : 17\nflags : avx2 avx512f avx512_vnni avx512_bf16\n"
OLD = "vendor_id : GenuineIntel\ncpu family : 6\nmodel : 85\nflags : avx2 avx512f\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (EMERALD_RAPIDS, ("intel", "6.207", "amx", "amx")),
        (ZEN4, ("amd", "25.17", "vnni512", "avx512")),
        (OLD, ("intel", "6.85", "avx2", "none")),
        ("", ("unknown", "unknown", "unknown", "unknown")),
    ],
)
def test_cpu_identity_tells_instruction_sets_apart(text: str, expected: tuple[str, ...]) -> None:
    found = identity_of(text)
    assert (found["cpu_vendor"], found["cpu_family_model"], found["cpu_int8"], found["cpu_bf16"]) == expected


def test_fix_threads_sets_and_refuses_nonsense() -> None:
    before = torch.get_num_threads()
    try:
        assert fix_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(HarnessError, match="at least 1"):
        fix_threads(0)
    assert available_cpus() >= 1


def test_pin_allocator_says_what_it_set() -> None:
    setup = pin_allocator()
    assert setup["allocator"] in ("glibc, thresholds pinned", "not pinned (no glibc mallopt)")
    assert setup["cpu_allocator"] == "counting" or setup["cpu_allocator"].startswith("default (")


def test_the_counting_allocator_counts_to_the_byte() -> None:
    counter = cpu_memory.tracker()
    if counter is None:
        pytest.skip(f"no counting allocator here: {cpu_memory.unavailable_reason()}")
    before = counter.current()
    block = torch.empty(10_000_000, dtype=torch.uint8)
    assert counter.current() - before == 10_000_000
    start = counter.reset_peak()
    scratch = torch.empty(4_000_000, dtype=torch.uint8)
    del scratch
    assert counter.peak() - start == 4_000_000 and counter.current() == start
    del block
    assert counter.current() == before
