"""Run a Python server with the cyclic GC's time per generation printed when it exits.

Why a plain python-socketio server falls over at fleet scale (README,
Performance): a full collection walks every tracked object, and thousands of
connections make hundreds of thousands of them. Start the server under this
script, drive it with ``iothub bench --server URL --pid PID``, stop it with
SIGTERM, and read the last line of its output::

    python bench/gc_time.py bench/baseline_server.py --port 6163
    python bench/gc_time.py --no-gc bench/baseline_server.py --port 6163   # the same, GC off

    GC generation 0: 3917 runs, 1.48 s, …; generation 1: 356 runs, 2.60 s, …; generation 2: 28 runs, 14.16 s, …

Each generation's figures also give its longest collection (on the clock, and
in CPU time), and the
unreachable objects its collections found ("N collected"): cyclic garbage,
which reference counting did not free.
"""

from __future__ import annotations

import atexit
import gc
import runpy
import sys
import time

runs = [0, 0, 0]
seconds = [0.0, 0.0, 0.0]
#: Unreachable objects each generation's collections found: cyclic garbage, which reference counting cannot free.
collected = [0, 0, 0]
#: The longest collection of each generation (the longest stall it caused), and the most CPU one took: the
#: difference is time the collecting thread was not running (another process had the CPU).
longest = [0.0, 0.0, 0.0]
longest_cpu = [0.0, 0.0, 0.0]
#: When the collection under way started, on the clock and in its thread's CPU time.
started = [0.0, 0.0]


def on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        started[:] = time.perf_counter(), time.thread_time()
    else:
        generation = info["generation"]
        took, cpu = time.perf_counter() - started[0], time.thread_time() - started[1]
        runs[generation] += 1
        seconds[generation] += took
        collected[generation] += info["collected"]
        longest[generation] = max(longest[generation], took)
        longest_cpu[generation] = max(longest_cpu[generation], cpu)


def report() -> None:
    generations = "; ".join(
        f"generation {g}: {runs[g]} runs, {seconds[g]:.2f} s (longest {longest[g] * 1000:.1f} ms, {longest_cpu[g] * 1000:.1f} ms of CPU), "
        f"{collected[g]} collected"
        for g in range(3)
    )
    print(f"GC {generations}", file=sys.stderr, flush=True)


def main() -> None:
    arguments = sys.argv[1:]
    if arguments[:1] == ["--no-gc"]:
        gc.disable()
        arguments = arguments[1:]
    if not arguments:
        raise SystemExit(__doc__)
    gc.callbacks.append(on_gc)
    atexit.register(report)
    sys.argv = arguments
    runpy.run_path(arguments[0], run_name="__main__")


if __name__ == "__main__":
    main()
