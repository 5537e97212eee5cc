"""Decision-log masking time vs crafted input size: backtracking expressions vs extauthz's scan.

    python bench/redos.py [--sizes 1024,4096,16384,65536] [--budget 3]

For each crafted input (built to make a backtracking engine try every start and every
split) and each size, the table gives the seconds one ``mask_path`` takes, best of three,
for the regular expressions the decision log first used ("regex") and for
``extauthz.decisionlog.mask_path`` ("scan"). A "regex" column stops once one call takes
more than ``--budget`` seconds (the next size would take 16x or more longer).
Linear growth: each 4x in size costs about 4x in time.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from extauthz.decisionlog import MASK, mask_path

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.?[A-Za-z0-9_-]*")
_SECRET_PARAM = re.compile(
    r"([?&;][^=&;#]*(?:token|jwt|secret|password|session|key|code|auth)[^=&;#]*=)[^&;#]*",
    re.IGNORECASE,
)


def regex_mask_path(path: str) -> str:
    if "?" not in path and "eyJ" not in path:
        return path
    return _JWT.sub(MASK, _SECRET_PARAM.sub(r"\1" + MASK, path))


CRAFTED: dict[str, Callable[[int], str]] = {
    "?token repeated, no '='": lambda n: ("?token" * (n // 6 + 1))[:n],
    "'?' repeated": lambda n: "/?" + "?" * (n - 2),
    "eyJ repeated, no '.'": lambda n: ("eyJ" * (n // 3 + 1))[:n],
}


def best_of(fn: Callable[[str], str], text: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384,65536")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per regex call cap")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print("| input | bytes | regex s | scan s |")
    print("|---|---:|---:|---:|")
    for label, build in CRAFTED.items():
        regex_done = False
        for size in sizes:
            text = build(size)
            scan = best_of(mask_path, text)
            if regex_done:
                regex = "(skipped)"
            else:
                seconds = best_of(regex_mask_path, text, runs=1)
                assert mask_path(text) == regex_mask_path(text)
                regex = f"{seconds:.4f}"
                regex_done = seconds > args.budget
            print(f"| {label} | {size} | {regex} | {scan:.6f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
