"""Run a Python server with its garbage-collector counts published to a file.

    python bench/gcprobe.py OUT.json -m extauthz serve ...
    python bench/gcprobe.py OUT.json bench/bare_server.py --listen ...

A daemon thread rewrites OUT.json four times a second with ``gc.get_stats()`` (collections,
collected and uncollectable per generation, cumulative since start); ``accounting.py`` reads
it before and after a load run. The thread sleeps between writes, so the server's own CPU
time is not changed measurably. Everything after OUT.json is what ``python`` would get.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path


def publish(path: Path, interval: float = 0.25) -> None:
    tmp = path.with_suffix(".tmp")
    while True:
        tmp.write_text(json.dumps(gc.get_stats()))
        os.replace(tmp, path)
        time.sleep(interval)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    threading.Thread(target=publish, args=(out,), name="gcprobe", daemon=True).start()
    if sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
