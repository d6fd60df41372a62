"""Whether this machine could have an accelerator, judged without importing torch."""

from __future__ import annotations

import glob
import os
import platform
import sys

from .errors import FeatxError


def surely_cpu_only() -> bool:
    """True when device "auto" can only mean the CPU: no NVIDIA, ROCm or WSL GPU device files, not macOS
    (MPS), or CUDA_VISIBLE_DEVICES hiding every GPU. False when in doubt."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return sys.platform != "darwin"
    return sys.platform.startswith("linux") and not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")
                                                     or os.path.exists("/dev/dxg"))


def _cpuinfo() -> str:
    """The start of /proc/cpuinfo ("" where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            return info.read(200_000)
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension), read
    from /proc/cpuinfo without torch; False where that cannot be read (then bfloat16 would be emulated, slower
    than float32)."""
    return bool(set(_cpuinfo().split()) & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else the platform's)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def require_cpu_bf16() -> None:
    """One line, where this CPU would only emulate bfloat16 (slower than float32)."""
    if not cpu_has_bf16():
        raise FeatxError("--precision bf16 needs a CPU that computes in bfloat16 natively (AVX512-BF16 or AMX on "
                         "x86, BF16 on Arm); this one would emulate it, slower than float32: use fp32")


def threads_asked() -> int | None:
    """The threads a process was given (OMP_NUM_THREADS, as a study's worker sets it), or None: the libraries'
    own default. For libraries that read no variable themselves (LightGBM's scikit-learn face takes every core)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
