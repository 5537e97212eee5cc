"""Run ``extauthz serve`` with a probe of its event loop publishing to a file.

    python bench/loopprobe.py OUT.txt -m extauthz serve ...

A task on the server's loop sleeps 1 ms again and again. Each 100 ms it appends a line to
OUT.txt: ``monotonic-time wall-overshoot-ms loop-cpu-ms gc-ms``, the largest of the period.
The wall overshoot is how late the loop woke the task (a stall, or the process not scheduled
on a busy machine); the CPU time is what the loop thread ran between two wake-ups (at most one
sleep apart): the longest stretch of work that kept the loop from anything else, whatever
the scheduler did; gc-ms the longest garbage collection (CPU time). Everything after OUT.txt is what
``python`` would get.
"""

from __future__ import annotations

import asyncio
import gc
import runpy
import sys
import time
from pathlib import Path
from typing import Any

import extauthz.server


async def probe(out: Path, interval: float = 0.001, period: float = 0.1) -> None:
    collections: list[float] = []  # CPU seconds of each garbage collection since the last line
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            collections.append(time.thread_time() - started[0])

    gc.callbacks.append(timed)
    with out.open("a", buffering=1) as f:
        worst_wall = worst_cpu = 0.0
        mark = time.monotonic()
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(interval)
            worst_wall = max(worst_wall, time.perf_counter() - wall - interval)
            worst_cpu = max(worst_cpu, time.thread_time() - cpu)
            now = time.monotonic()
            if now - mark >= period:
                worst_gc = max(collections, default=0.0)
                collections.clear()
                f.write(
                    f"{now:.4f} {worst_wall * 1000:.2f} {worst_cpu * 1000:.2f} "
                    f"{worst_gc * 1000:.2f}\n"
                )
                worst_wall = worst_cpu = 0.0
                mark = now


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    run_loop = extauthz.server.run_loop

    def with_probe(main: Any) -> None:
        async def both() -> None:
            task = asyncio.create_task(probe(out))
            try:
                await main
            finally:
                task.cancel()

        run_loop(both())

    extauthz.server.run_loop = with_probe
    sys.argv = [sys.argv[3], *sys.argv[4:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
