"""Tests of harness.env: the fingerprint's contents and the stability and safety of env_key."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import env
from harness.errors import HarnessError

KEY_RE = re.compile(r"^[a-z0-9.-]+$")


def base_fp(**overrides: object) -> dict[str, object]:
    fp: dict[str, object] = {
        "torch": "2.14.1+cu130",
        "cuda_version": "13.0",
        "gpu_name": "NVIDIA H200",
        "cpu_model": "AMD EPYC 9654 96-Core Processor",
        "cpu_family_model": "25.17",
        "cpu_int8": "vnni512",
        "cpu_bf16": "avx512",
        "torch_threads": 2,
        "python": "3.11.7",
        "git_commit": "0" * 40,
    }
    fp.update(overrides)
    return fp


@pytest.fixture(scope="module")
def fingerprint() -> dict[str, object]:
    """Take the fingerprint once: it runs git (and nvidia-smi where present) in subprocesses."""
    return env.fingerprint()


def test_fingerprint_has_the_documented_fields_and_is_json(fingerprint: dict[str, object]) -> None:
    expected = {
        "torch", "torchvision", "python", "platform", "cuda_available", "cuda_version", "cudnn_version",
        "gpu_name", "gpu_count", "gpu_capability", "gpu_multiprocessors", "gpu_memory_bytes", "gpu_driver",
        "cpu_model", "cpu_vendor", "cpu_family_model", "cpu_int8", "cpu_bf16", "cpu_count", "torch_threads",
        "xdist_workers", "tf32_matmul", "tf32_cudnn", "cudnn_benchmark", "float32_matmul_precision", "git_commit",
        "git_dirty",
    }  # fmt: skip
    assert set(fingerprint) == expected
    json.dumps(fingerprint)
    assert fingerprint["torch"] == torch.__version__
    assert fingerprint["torch_threads"] == torch.get_num_threads()
    assert fingerprint["cuda_available"] == torch.cuda.is_available()
    assert isinstance(fingerprint["cpu_model"], str) and fingerprint["cpu_model"]
    commit = fingerprint["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", str(commit))
    if not torch.cuda.is_available():
        assert fingerprint["gpu_name"] is None and fingerprint["gpu_count"] == 0


def test_fingerprint_leaves_out_the_hostname(fingerprint: dict[str, object]) -> None:
    host = socket.gethostname()
    assert "hostname" not in fingerprint and "node" not in fingerprint
    if len(host) >= 6:  # a very short name could occur by chance inside a version string
        assert host not in json.dumps(fingerprint)


def test_git_state_outside_a_checkout_is_none(tmp_path: Path) -> None:
    assert env._git_state(tmp_path) == (None, None)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_git_state_reports_commit_and_dirty_flag(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
            cwd=tmp_path, check=True, capture_output=True,
        )  # fmt: skip

    git("init", "-q")
    assert env._git_state(tmp_path) == (None, None)  # no commits yet
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    commit, dirty = env._git_state(tmp_path)
    assert commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit) and dirty is False
    (tmp_path / "a.txt").write_text("b")
    assert env._git_state(tmp_path) == (commit, True)


def test_env_key_examples() -> None:
    assert env.env_key(base_fp(), "cpu") == "cpu-amd-epyc-9654-25.17-i8vnni512-bf16avx512-2t-torch2.14"
    assert env.env_key(base_fp(), "cuda") == "cuda-nvidia-h200-torch2.14-cu13.0"
    assert env.env_key(base_fp(), "cuda:3") == env.env_key(base_fp(), "cuda")
    intel = base_fp(cpu_model="Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", cpu_family_model="6.143",
                    cpu_int8="amx", cpu_bf16="amx")
    assert env.env_key(intel) == "cpu-intel-xeon-platinum-8480-6.143-i8amx-bf16amx-2t-torch2.14"


def test_env_key_tells_instruction_sets_and_cpu_generations_apart() -> None:
    """The same marketing name runs other kernels (and trains other weights) without AMX or VNNI."""
    assert env.env_key(base_fp(cpu_int8="avx2")) != env.env_key(base_fp())
    assert env.env_key(base_fp(cpu_bf16="none")) != env.env_key(base_fp())
    assert env.env_key(base_fp(cpu_family_model="25.1")) != env.env_key(base_fp())


def test_env_key_of_this_machine_is_safe(fingerprint: dict[str, object]) -> None:
    key = env.env_key(fingerprint, "cpu")
    assert KEY_RE.match(key) and len(key) <= env.MAX_KEY_LENGTH
    assert key == env.env_key(None, "cpu")


def test_env_key_ignores_git_python_patch_and_cpu_fields_on_cuda() -> None:
    fp = base_fp()
    same = base_fp(git_commit="f" * 40, python="3.11.9", torch="2.14.3")
    assert env.env_key(fp, "cpu") == env.env_key(same, "cpu")
    assert env.env_key(fp, "cuda") == env.env_key(base_fp(cpu_model="other", torch_threads=64), "cuda")


def test_env_key_errors_name_the_fix() -> None:
    with pytest.raises(HarnessError, match="gpu_name"):
        env.env_key(base_fp(gpu_name=None), "cuda")
    with pytest.raises(HarnessError, match="use 'cpu' or 'cuda'"):
        env.env_key(base_fp(), "mps")
    with pytest.raises(HarnessError, match="torch"):
        env.env_key(base_fp(torch="unknown"), "cpu")


names = st.text(min_size=0, max_size=200)
slugs = st.from_regex(r"[a-z0-9]{1,120}", fullmatch=True)


@settings(deadline=None, max_examples=100)
@given(cpu=names, gpu=names, threads=st.integers(0, 512), torch_v=names, cuda_v=names)
def test_env_key_is_deterministic_safe_and_bounded(
    cpu: str, gpu: str, threads: int, torch_v: str, cuda_v: str
) -> None:
    fp = base_fp(cpu_model=cpu, gpu_name=gpu, torch_threads=threads, cuda_version=cuda_v)
    fp["torch"] = f"2.{len(torch_v)}.0{torch_v}"
    for device in ("cpu", "cuda"):
        try:
            key = env.env_key(fp, device)
        except HarnessError:
            assert device == "cuda" and not env.slugify(gpu)
            continue
        assert key == env.env_key(dict(fp), device)
        assert KEY_RE.match(key) and len(key) <= env.MAX_KEY_LENGTH
        assert key.startswith(f"{device}-") and not key.endswith(("-", "."))


@settings(deadline=None, max_examples=60)
@given(a=slugs, b=slugs, minor=st.integers(0, 99))
def test_env_key_changes_with_gpu_cpu_and_torch_minor(a: str, b: str, minor: int) -> None:
    fp = base_fp(torch=f"2.{minor}.1")
    bumped = base_fp(torch=f"2.{minor + 1}.0")
    for device in ("cpu", "cuda"):
        assert env.env_key(fp, device) != env.env_key(bumped, device)
    if a != b:
        assert env.env_key(base_fp(gpu_name=a), "cuda") != env.env_key(base_fp(gpu_name=b), "cuda")
        # A prefix keeps a name like "cpu" from being dropped as a noise word.
        assert env.env_key(base_fp(cpu_model=f"m{a}")) != env.env_key(base_fp(cpu_model=f"m{b}"))
    assert env.env_key(base_fp(torch_threads=1)) != env.env_key(base_fp(torch_threads=2))
    assert env.env_key(base_fp(cuda_version="12.8"), "cuda") != env.env_key(base_fp(), "cuda")


def test_long_names_are_cut_with_a_hash() -> None:
    long_a = "x" * 200 + "a"
    long_b = "x" * 200 + "b"
    key_a = env.env_key(base_fp(cpu_model=long_a))
    key_b = env.env_key(base_fp(cpu_model=long_b))
    assert len(key_a) == len(key_b) == env.MAX_KEY_LENGTH
    assert key_a != key_b and re.search(r"-[0-9a-f]{8}$", key_a)


def test_cpu_model_is_never_empty() -> None:
    assert env.cpu_model()
