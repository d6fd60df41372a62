"""Versions recorded with every cache and artifact: of a module already loaded (torch's names its build,
e.g. 2.14.1+cu130), else from package metadata, so that nothing is imported to be named."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

# record key -> distribution name
DISTRIBUTIONS = {"sklearn": "scikit-learn", "joblib": "joblib", "numpy": "numpy", "lightgbm": "lightgbm",
                 "torch": "torch", "timm": "timm"}


def featx_version() -> str:
    try:
        return version("featx")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+unknown"


def installed_version(name: str) -> str:
    """A package's installed version from its metadata, whether or not it is imported (torch: no build tag)."""
    try:
        return version(DISTRIBUTIONS.get(name, name))
    except PackageNotFoundError:
        return "not installed"


def package_versions(*names: str) -> dict[str, str]:
    """{"python", "featx", and each of `names`: its version}."""
    out = {"python": platform.python_version(), "featx": featx_version()}
    for name in names:
        loaded = getattr(sys.modules.get(name), "__version__", None)
        if loaded:
            out[name] = str(loaded)
            continue
        out[name] = installed_version(name)
    return out
