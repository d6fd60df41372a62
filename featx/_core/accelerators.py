"""Whether this machine could have an accelerator, judged without importing torch."""

from __future__ import annotations

import glob
import os
import sys

from .errors import FeatxError


def surely_cpu_only() -> bool:
    """True when device "auto" can only mean the CPU: no NVIDIA, ROCm or WSL GPU device files, not macOS
    (MPS), or CUDA_VISIBLE_DEVICES hiding every GPU. False when in doubt."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return sys.platform != "darwin"
    return sys.platform.startswith("linux") and not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")
                                                     or os.path.exists("/dev/dxg"))


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension), read
    from /proc/cpuinfo without torch; False where that cannot be read (then bfloat16 would be emulated, slower
    than float32)."""
    try:
        with open("/proc/cpuinfo") as info:
            words = set(info.read(200_000).split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def require_cpu_bf16() -> None:
    """One line, where this CPU would only emulate bfloat16 (slower than float32)."""
    if not cpu_has_bf16():
        raise FeatxError("--precision bf16 needs a CPU that computes in bfloat16 natively (AVX512-BF16 or AMX on "
                         "x86, BF16 on Arm); this one would emulate it, slower than float32: use fp32")
