"""Measure every stage and exit head of a bundle on this machine inside real runs: latency
(mean, 10% trimmed mean, p10/p50/p90/p99, spread p90/p50 with a noisy flag), the engine's own
work per call, stage step and head, peak memory and, where a power sensor exists, energy with
the idle baseline; --list-sensors shows the sensors found."""
from edgesdk.runtime.cli import add_profile_arguments as add_arguments  # noqa: F401
from edgesdk.runtime.cli import cmd_profile as run  # noqa: F401
