"""Optional libraries: imported when a feature needs one, or one line naming the extra that installs it."""

from __future__ import annotations

from importlib import import_module

from .errors import FeatxError


def library(module: str, package: str, extra: str):
    """`module`, from `package` of featx's extra `extra`, or one line saying how to install it."""
    try:
        return import_module(module)
    except ImportError:
        raise FeatxError(f"this needs {package}: pip install 'featx[{extra}]'") from None
