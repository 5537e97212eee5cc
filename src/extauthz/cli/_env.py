"""Flags that fall back to ``EXTAUTHZ_*`` environment variables."""

from __future__ import annotations

import argparse
import os
from typing import Any

from extauthz.settings import env_name

__all__ = ["add"]


def add(
    parser: argparse.ArgumentParser | argparse._ActionsContainer,
    flag: str,
    *,
    default: Any = None,
    scope: str = "",
    **kw: Any,
) -> None:
    """``parser.add_argument(flag)`` whose default comes from the flag's variable.

    Flags that mean the same in several commands (``--policies``) share one variable; a
    command whose flags mean something else gives a ``scope`` (``EXTAUTHZ_ENVOY_LISTEN``).
    """
    var = env_name(f"{scope}-{flag.lstrip('-')}" if scope else flag)
    value = os.environ.get(var)
    if value is not None:
        if kw.get("action") == "append":
            default = [v.strip() for v in value.split(",") if v.strip()]
        elif kw.get("action") == "store_true":
            default = value.lower() in ("1", "true", "yes", "on")
        else:
            default = value
    help_text = kw.pop("help", "")
    parser.add_argument(flag, default=default, help=f"{help_text} [env {var}]".strip(), **kw)
