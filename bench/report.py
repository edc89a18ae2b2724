"""The fleet benchmark's outputs: a table on stdout, a JSON file and a PNG chart."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import msgspec

from .fleet import Result, Scenario


def table(results: list[Result]) -> str:
    """One column per server; with two, a third for the second's figure over the first's where a ratio means something."""
    rows: list[tuple[str, Callable[[Result], str], Callable[[Result], float | None] | None]] = [
        ("acknowledged msg/s", lambda r: f"{r.acked_per_second:,.0f}", None),
        ("delivered msg/s", lambda r: f"{r.delivered_per_second:,.0f}", None),
        ("server CPU µs/msg, steady", lambda r: _maybe(r.server_cpu_us_per_message, "{:.1f}"), lambda r: r.server_cpu_us_per_message),
        ("server CPU µs/msg, connecting included", lambda r: _maybe(r.total_cpu_us_per_message, "{:.1f}"), lambda r: r.total_cpu_us_per_message),
        (
            "CPU µs per connection established",
            lambda r: _maybe(r.connect_cpu_us_per_connection, "{:.0f}"),
            lambda r: r.connect_cpu_us_per_connection,
        ),
        (
            "idle CPU µs per socket per second",
            lambda r: _maybe(r.idle_cpu_us_per_socket_second, "{:.2f}"),
            lambda r: r.idle_cpu_us_per_socket_second,
        ),
        ("CPU µs per connection closed", lambda r: _maybe(r.close_cpu_us_per_connection, "{:.0f}"), lambda r: r.close_cpu_us_per_connection),
        ("server CPU share, steady", lambda r: _maybe(r.server_cpu_share, "{:.0%}"), None),
        ("load generator CPU share, steady", lambda r: f"{r.load_cpu_share:.0%}", None),
        ("latency p50 / p99 / max ms", lambda r: "{p50:.1f} / {p99:.1f} / {max:.1f}".format(**r.latency_ms), None),
        ("ack latency p50 / p99 ms", lambda r: "{p50:.1f} / {p99:.1f}".format(**r.ack_latency_ms), None),
        ("largest event-loop lag ms, all / busy", _largest_lag, None),
        ("lag by phase, at most ms: " + " / ".join(STALL_PHASES), lambda r: _stalls(r, busy=False), None),
        ("busy lag by phase, at most ms", lambda r: _stalls(r, busy=True), None),
        ("sent / acknowledged / refused", lambda r: f"{r.sent} / {r.acknowledged} / {r.refused}", None),
        ("unacknowledged at end", lambda r: str(r.unacknowledged), None),
        ("lost / duplicated / out of order", lambda r: f"{r.lost} / {r.duplicated} / {r.out_of_order}", None),
        ("alerts expected / received", lambda r: f"{sum(r.alerts_expected.values())} / {sum(r.alerts_received.values())}", None),
        ("server RSS MiB", lambda r: _maybe(r.server_rss_mib, "{:.1f}"), lambda r: r.server_rss_mib),
        ("memory per connection KiB", lambda r: _maybe(r.memory_per_connection_kib, "{:.1f}"), lambda r: r.memory_per_connection_kib),
    ]
    header = ["", *(r.server for r in results)]
    lines = [[label, *(cell(r) for r in results)] for label, cell, _ in rows]
    if len(results) == 2:
        first, second = results
        header.append(f"{second.server} / {first.server}")
        for line, (_, _, value) in zip(lines, rows):
            a, b = (value(first), value(second)) if value else (None, None)
            line.append(f"{b / a:.2f}×" if a and b is not None else "")
    return "\n".join([_title(results[0].scenario), _render(header, lines)])


#: The phases whose largest stall the table shows.
STALL_PHASES = ("connect", "idle", "steady", "close")


def _largest_lag(result: Result) -> str:
    return f"{_maybe(result.loop_lag_max_ms, '{:.1f}')} / {_maybe(result.loop_busy_lag_max_ms, '{:.1f}')}"


def _stalls(result: Result, *, busy: bool) -> str:
    stalls = {phase.name: phase.largest_busy_stall_ms if busy else phase.largest_stall_ms for phase in result.phases}
    return " / ".join(_maybe(stalls.get(name), "{:g}") for name in STALL_PHASES)


def rounds(results: list[Result], servers: list[str]) -> str:
    """Each round's acknowledged msg/s and CPU per message by server, and the first server's throughput
    over each other's in that round; then the medians (of the ratios, for the ratio columns)."""
    width = len(servers)
    runs = [results[start : start + width] for start in range(0, len(results), width)]
    ratios = [[_ratio(run[0], other) for other in run[1:]] for run in runs]
    header = ["round", *servers, *(f"{servers[0]} / {server}" for server in servers[1:])]
    lines = [
        [str(number), *map(_throughput, run), *(_maybe(ratio, "{:.3f}") for ratio in run_ratios)]
        for number, (run, run_ratios) in enumerate(zip(runs, ratios), 1)
    ]
    medians = [
        f"{statistics.median(r.acked_per_second for r in column):,.0f} msg/s, "
        + _maybe(_median([r.server_cpu_us_per_message for r in column]), "{:.1f} µs/msg")
        for column in zip(*runs)
    ]
    lines.append(["median", *medians, *(_maybe(_median(list(column)), "{:.3f}") for column in zip(*ratios))])
    return "\n".join([f"{_title(results[0].scenario)}, {len(runs)} rounds", _render(header, lines)])


def _title(scenario: Scenario) -> str:
    return (
        f"scenario {scenario.name}: {scenario.devices} devices, {scenario.dashboards} dashboards, "
        + (f"{scenario.window} in flight per device" if scenario.window else f"{scenario.rate:g} msg/s in all")
        + f", {scenario.duration:g} s measured"
    )


def _render(header: list[str], lines: list[list[str]]) -> str:
    """A Markdown table."""
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    render = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(render, lines)])


def _throughput(result: Result) -> str:
    return f"{result.acked_per_second:,.0f} msg/s, " + _maybe(result.server_cpu_us_per_message, "{:.1f} µs/msg")


def _ratio(result: Result, other: Result) -> float | None:
    return result.acked_per_second / other.acked_per_second if other.acked_per_second else None


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def _maybe(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def write_json(results: list[Result], path: Path) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(results)))


def write_chart(results: list[Result], path: Path) -> bool:
    """Throughput over time and the latency distribution; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        seconds = [second for second, _, _ in result.timeline]
        throughput.plot(seconds, [acked for _, acked, _ in result.timeline], label=f"{result.server} acknowledged")
        throughput.plot(seconds, [delivered for _, _, delivered in result.timeline], linestyle="--", label=f"{result.server} delivered")
        quantiles = result.latency_ms
        latency.bar(
            [f"{result.server}\np50", f"{result.server}\np99", f"{result.server}\nmax"],
            [quantiles["p50"], quantiles["p99"], quantiles["max"]],
        )
    throughput.set_xlabel("seconds")
    throughput.set_ylabel("messages per second")
    throughput.set_title("throughput over time")
    throughput.legend(fontsize="small")
    latency.set_yscale("log")
    latency.set_ylabel("device → dashboard latency, ms (log)")
    latency.set_title("latency distribution")
    figure.suptitle(f"iothub bench — {results[0].scenario.name}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
