"""A CPU budget for the server under test: a cgroup whose processes share at most so many cores.

Scaling is a claim about free cores: N gateways on N cores carry N times what one
process carries on one. A machine with fewer cores than the gateways plus the
load cannot show that with wall-clock throughput, since every process waits
for the same cores. A cgroup's CPU quota gives each configuration the cores it
would have on its own machine, scaled down: one process gets ``cores``, N
gateways with the supervisor and all of Ray's processes share ``N × cores``,
and the rest of the machine runs the load. Saturated with a window of messages
in flight, the throughput each configuration reaches is what its budget buys.

The kernel's CFS bandwidth control does the capping: cgroup v2 (``cpu.max``) or
v1 (``cpu.cfs_quota_us``); children of a process in the group stay in it, so
Ray's processes, started by the server, are counted against the same budget.
Making a cgroup needs the right to write under ``/sys/fs/cgroup`` (root, as
here, or a delegated subtree).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The bandwidth period: short, so that a throttled server is held back in small steps, not 100 ms ones.
PERIOD_US = 20_000


class BudgetUnavailable(RuntimeError):
    pass


class CpuBudget:
    """A cgroup named ``name`` allowing ``cores`` cores to whatever process :meth:`command` starts."""

    def __init__(self, name: str, cores: float) -> None:
        if cores <= 0:
            raise ValueError("a CPU budget is a positive number of cores")
        quota = round(cores * PERIOD_US)
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            if "cpu" not in (CGROUP_ROOT / "cgroup.subtree_control").read_text().split():
                raise BudgetUnavailable(f"cgroup v2 at {CGROUP_ROOT} does not delegate the cpu controller")
            self.path = CGROUP_ROOT / name
            settings = {"cpu.max": f"{quota} {PERIOD_US}"}
        elif (CGROUP_ROOT / "cpu").is_dir():
            self.path = CGROUP_ROOT / "cpu" / name
            settings = {"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota)}
        else:
            raise BudgetUnavailable(f"no cgroup with a cpu controller under {CGROUP_ROOT}")
        try:
            self.path.mkdir(exist_ok=True)
            for setting, value in settings.items():
                (self.path / setting).write_text(value)
        except OSError as exc:
            raise BudgetUnavailable(f"cannot make the cgroup {self.path}: {exc}") from exc
        self.cores = cores

    def command(self, argv: Sequence[str]) -> tuple[str, ...]:
        """``argv`` run inside the budget: a shell joins the group, then becomes ``argv`` (the same process id)."""
        return ("/bin/sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "iothub-budget", *argv)

    def periods(self) -> tuple[int, int]:
        """Bandwidth periods so far, and how many of them the group used up its quota in (v1 and v2 alike)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["nr_periods"]), int(stat["nr_throttled"])

    def used_up_since(self, earlier: tuple[int, int]) -> float:
        """The share of the periods since ``earlier`` (:meth:`periods`) in which the group used its quota up."""
        periods, used_up = self.periods()
        return (used_up - earlier[1]) / (periods - earlier[0]) if periods > earlier[0] else 0.0

    def __enter__(self) -> CpuBudget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, timeout: float = 15.0) -> None:
        """Removes the group once the last of its processes (Ray's may outlive the server by a moment) has ended."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
