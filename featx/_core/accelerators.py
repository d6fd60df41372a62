"""Whether this machine could have an accelerator, judged without importing torch."""

from __future__ import annotations

import glob
import os
import sys


def surely_cpu_only() -> bool:
    """True when device "auto" can only mean the CPU: no NVIDIA, ROCm or WSL GPU device files, not macOS
    (MPS), or CUDA_VISIBLE_DEVICES hiding every GPU. False when in doubt."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return sys.platform != "darwin"
    return sys.platform.startswith("linux") and not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")
                                                     or os.path.exists("/dev/dxg"))
