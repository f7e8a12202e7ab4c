"""``edgesdk build --toolchain tvm``: compile for a board processor with TVM and add the
libraries to the bundle (checked: ELF machine, needed libraries, glibc symbol versions); GPU
processors also get their kernel source and the step to finish on the board."""
from edgesdk.converters.toolchain import Toolchain, parse_batch


class TvmToolchain(Toolchain):
    """TVM builds (see the module docstring)."""

    name = "tvm"
    default_target = "host"
    options = (
        ("--processor", {"help": "the board's processor, cpu (default) or gpu"}),
        ("--batch", {"help": "batch size compiled in (default 1; the runtime runs bigger "
                             "batches in slices), 'any' for a symbolic batch, which cannot be "
                             "tuned"}),
        ("--tuning-db", {"help": "MetaSchedule database folder (from `edgesdk tune`) to apply"}),
        ("--emulate", {"action": "store_true",
                       "help": "aarch64 CPU builds: run them under qemu-user on the bundle's "
                               "reference inputs and compare every exit with ONNX Runtime "
                               "(fails above 1e-4)"}),
    )

    def build(self, draft, target, args):
        from edgesdk.converters.tvm.build import build_tvm
        return build_tvm(draft, target, args.processor or "cpu",
                         batch=parse_batch(args.batch or "1"), database=args.tuning_db)

    def report(self, records, bundle, target, args):
        import json
        from edgesdk.converters.tvm.build import build_name
        from edgesdk.table import format_table
        processor = args.processor or "cpu"
        if args.json:
            print(json.dumps(records, indent=2))
            return 0
        rows = [(r["file"], r["artifact"], (r.get("elf") or {}).get("machine", "-"),
                 (r.get("elf") or {}).get("glibc") or "-",
                 ",".join((r.get("elf") or {}).get("needed") or []) or "-",
                 "yes" if r["tvm"]["tuning_database_sha256"] else "no") for r in records]
        print(format_table(["file", "artifact", "machine", "newest glibc", "needs", "tuned"],
                           rows))
        if records and records[0].get("kernels"):
            print("\nGPU kernels: {}; on the board: {}".format(
                records[0]["kernels"]["file"], records[0]["kernels"]["device_build"]))
        if not args.emulate:
            return 0
        from edgesdk.converters.tvm.emulation import check_emulated
        check = check_emulated(bundle, build_name(target, processor))
        print("\nunder qemu-aarch64 vs ONNX Runtime on {} reference samples: max abs error per "
              "exit {} -> {}".format(check["samples"],
                                     ", ".join("{:.2e}".format(e) for e in check["max_abs_error"]),
                                     "ok" if check["passed"] else
                                     "FAILED (> {})".format(check["atol"])))
        for rel, err in sorted(check["side_graphs"].items()):
            print("  side graph {}: max abs error {:.2e}".format(rel, err))
        return 0 if check["passed"] else 1
