"""The flags of ``serve`` and ``check``, built from the ``Settings`` fields and ``FLAGS``.

Each flag's default and help text are the setting's own, and its ``EXTAUTHZ_*`` variable
follows from its name: nothing here restates one.
"""

from __future__ import annotations

import argparse
from typing import Any

from extauthz.cli import _env
from extauthz.settings import FLAGS, Settings, default_of, flag_name, settings_from_flags

__all__ = ["add_settings_flags", "settings_from_args"]


def _names(command: str) -> list[str]:
    return [name for name, flag in FLAGS.items() if command == "serve" or flag.check]


def add_settings_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """A flag for each setting ``command`` takes: all for serve, the deciding ones else."""
    for name in _names(command):
        flag = FLAGS[name]
        default = default_of(name)
        hidden = default in (None, (), "") or isinstance(default, bool)
        shown = "" if hidden or name == "metrics_listen" else default
        help_text = f"{flag.help} [default: {shown}]" if shown != "" else flag.help
        kw: dict[str, Any] = {"dest": name, "help": help_text}
        if flag.choices:
            kw["choices"] = list(flag.choices)
        if isinstance(default, tuple):
            kw["action"] = "append"
        elif isinstance(default, bool):
            kw["action"] = "store_true"
        _env.add(parser, flag_name(name), **kw)


def settings_from_args(args: argparse.Namespace, command: str) -> Settings:
    """The settings the parsed flags of ``command`` say. Raises SettingsError."""
    return settings_from_flags({name: getattr(args, name) for name in _names(command)})
