"""The converters' cost model: measured per-stage and per-head latency or energy from a profile
store (read by :mod:`edgesdk.costs`, the same reader the runtime's deadlines and budgets use).

The expected cost of a bundle under thresholds is sum over stages of P(sample reaches stage k)
x (cost of stage k + its head when the head runs): :class:`ExitSimulator` computes exactly that
from the tables :func:`cost_table` builds, which include the engine's own measured work.

Which latency statistic: :data:`LATENCY_STATISTIC`, the per-graph statistic whose sum along
the runtime's path predicted the measured mean latency of real early-exit runs best
(``benchmarks/profiler.py`` measures every statistic against real runs; docs/results.md).
"""
from edgesdk.costs import (  # noqa: F401 (re-exported: the converters' API)
    ENGINE_ROWS, CostTable, cost_table, is_engine_row, per_sample, selected_builds,
    table_from_rows)
from edgesdk.profiles import COST_STATISTIC

LATENCY_STATISTIC = COST_STATISTIC
METRICS = {"latency": LATENCY_STATISTIC, "latency-p99": "p99_ms", "energy": "energy_mj"}


def build_costs(rows, metric, batch=1):
    """``{(graph, format, precision): per-sample cost}`` of every measured build at ``batch``,
    and whether any value was interpolated."""
    points = {}
    for r in rows:
        if r["metric"] == metric and r["value"] is not None and not is_engine_row(r["graph"]):
            points.setdefault((r["graph"], r["build"], r["precision"]), {})[r["batch"]] = r["value"]
    out, interpolated = {}, False
    for key, values in points.items():
        out[key], interp = per_sample(values, batch, "{} ({} {})".format(*key))
        interpolated = interpolated or interp
    return out, interpolated
