"""Path normalization: never raises, and each mode's result is in its normal form.

Input: the raw ``:path`` (UTF-8, invalid bytes replaced).
"""

from __future__ import annotations

import atheris

from tests.fuzz.common import check, main

with atheris.instrument_imports(include=["extauthz"]):
    from extauthz.pathnorm import PathNormalization, normalize_path

MODES = list(PathNormalization)


def test_one_input(data: bytes) -> None:
    raw = data.decode("utf-8", "replace")
    for mode in MODES:
        path = normalize_path(raw, mode)
        check("?" not in path and "#" not in path, f"{mode}: query kept in {path!r} from {raw!r}")
        if mode is PathNormalization.NONE:
            continue
        segments = path.split("/")
        check(
            "." not in segments[1:] and ".." not in segments[1:],
            f"{mode}: dot segment left in {path!r} from {raw!r}",
        )
        check("%2e" not in path.lower(), f"{mode}: encoded dot left in {path!r} from {raw!r}")
        if mode is not PathNormalization.BASE:
            check("//" not in path, f"{mode}: '//' left in {path!r} from {raw!r}")
        again = normalize_path(path, mode)
        check(again == path, f"{mode}: not idempotent: {raw!r} -> {path!r} -> {again!r}")


if __name__ == "__main__":
    main("pathnorm", test_one_input)
