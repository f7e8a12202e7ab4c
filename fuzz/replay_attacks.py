"""Replay every attack of the hardening round against this checkout and say which held.

Each attack is one or more regression tests that perform it (a swapped graph, a trigger in
an imported store, a sparse archive member, ...) and assert the defence. This script runs
them in one pytest session and prints one line per attack::

    python fuzz/replay_attacks.py            # exit 0 when every attack is refused

It needs the test dependencies (``make test`` installs them). See docs/hardening.md.
"""
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E, R, C = "tests/edgesdk/", "tests/runtime/", "tests/cli/"

# (what the attacker does, the tests that do it and check the defence)
ATTACKS = [
    ("swap a graph or library between the hash check and the load",
     [E + "test_verified_loading.py"]),
    ("point ONNX external data outside the bundle or at unlisted files",
     [E + "test_external_data.py"]),
    ("swap a graph and recompute every checksum, or strip the signature",
     [E + "test_signing.py"]),
    ("hide lines and spoof the printed digest with terminal escapes",
     [C + "test_cli.py::test_printers_escape_control_characters_from_the_bundle"]),
    ("import a store with triggers, recursive views, huge indices, bad JSON, a failing merge",
     [E + "test_profile_import.py"]),
    ("upload compressed, sparse, oversized or 200k-member archives; crash the board side",
     [E + "test_bundle_archive.py",
      R + "test_rpc.py::test_the_board_side_answers_any_failure_and_keeps_serving"]),
    ("understate activation memory, expand a head to gigabytes, broadcast 3M samples",
     [R + "test_memory.py", R + "test_engine.py::test_a_huge_broadcast_input_is_refused_before_it_is_copied"]),
    ("plant links to /etc, /dev/zero and FIFOs in a bundle being rewritten",
     [E + "test_writers.py::test_a_rewrite_copies_only_listed_regular_files",
      E + "test_writers.py::test_a_listed_file_turned_into_a_link_is_refused"]),
    ("run two writers on one bundle at once",
     [E + "test_writers.py::test_a_second_writer_fails_clearly_and_changes_nothing",
      E + "test_writers.py::test_a_waiting_writer_starts_from_what_the_first_one_wrote"]),
    ("kill a writer, then change the hostname",
     [E + "test_crash_safety.py::test_while_a_writer_holds_the_lock_recovery_touches_only_dead_writers_directories",
      E + "test_crash_safety.py::test_with_no_writer_at_work_leftovers_of_any_host_are_recovered",
      E + "test_crash_safety.py::test_killed_between_the_two_renames_the_reader_restores_the_old_bundle"]),
    ("feed inputs that used to escape as tracebacks (1e400, 0-d arrays, bombs, broken pipes)",
     [C + "test_input_traps.py::test_numbers_and_names_no_reader_expects_are_one_line_errors",
      C + "test_input_traps.py::test_bounds_that_are_not_finite_numbers_are_input_errors",
      C + "test_input_traps.py::test_an_infinite_memory_limit_and_a_0d_input_are_user_errors",
      C + "test_input_traps.py::test_image_bombs_are_user_errors",
      C + "test_cli.py::test_a_closed_pipe_ends_a_verb_quietly",
      C + "test_cli.py::test_internal_errors_exit_70_without_a_traceback",
      R + "test_engine.py::test_a_reference_file_that_does_not_fit_the_bundle_is_an_integrity_error",
      R + "test_engine.py::test_a_manifest_whose_shapes_do_not_describe_the_graphs_is_refused_at_load",
      R + "test_engine.py::test_a_huge_broadcast_input_is_refused_before_it_is_copied"]),
]


def _outcomes(report):
    """``{(file, test name without parameters): [passed?, ...]}`` from a JUnit XML report."""
    out = {}
    for case in ElementTree.parse(report).iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        name = case.get("name", "").split("[")[0]
        failed = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        out.setdefault((path, name), []).append(None if skipped else not failed)
    return out


def _results(node, outcomes):
    path, _, name = node.partition("::")
    return [r for (p, n), rs in outcomes.items() if p.endswith(path[len("tests/"):])
            and (not name or n == name) for r in rs]


def main():
    nodes = sorted({n for _, tests in ATTACKS for n in tests})
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.xml")
        subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "--junitxml", report, "--basetemp", os.path.join(tmp, "t")] + nodes,
                        cwd=ROOT, stdout=subprocess.DEVNULL)
        if not os.path.exists(report):
            print("pytest did not run (are the test dependencies installed? `make test`)")
            return 2
        outcomes = _outcomes(report)
    held_all = True
    for attack, tests in ATTACKS:
        results = [r for n in tests for r in _results(n, outcomes)]
        ran = [r for r in results if r is not None]
        held = bool(ran) and all(ran) and all(_results(n, outcomes) for n in tests)
        held_all &= held
        print("{:8} {:3d} tests  {}".format("held" if held else "FAILED", len(ran), attack))
    print("every attack was refused" if held_all else "an attack got through (or did not run)")
    return 0 if held_all else 1


if __name__ == "__main__":
    sys.exit(main())
