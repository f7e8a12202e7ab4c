"""Compile a bundle's stages and heads for a board processor with TVM and add the libraries to
the bundle (checked: ELF machine, needed libraries, glibc symbol versions). GPU processors
also get their kernel source and the step to finish on the board."""


def add_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle (rewritten in place, atomically)")
    p.add_argument("--toolchain", default="tvm", choices=["tvm"], help="compiler (default: tvm)")
    p.add_argument("--target", default="host", help="board (see `edgesdk targets`; default: host)")
    p.add_argument("--processor", default="cpu", help="the board's processor: cpu or gpu")
    p.add_argument("--batch", default="1",
                   help="batch size compiled in (default 1; the runtime runs bigger batches in "
                        "slices); 'any' compiles a symbolic batch, which cannot be tuned")
    p.add_argument("--tuning-db",
                   help="MetaSchedule database folder (from `edgesdk tune`) to apply")
    p.add_argument("--emulate", action="store_true",
                   help="aarch64 CPU builds: run them under qemu-user on the bundle's reference "
                        "inputs and compare every exit with ONNX Runtime (fails above 1e-4)")
    p.add_argument("--json", action="store_true", help="print the build records as JSON")


def parse_batch(text):
    """``--batch``: a positive integer or ``any`` (None)."""
    from edgesdk.errors import InputError
    if text == "any":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError("--batch takes a positive integer or 'any', got '{}'".format(text))
    return value


def run(args):
    """Call :func:`edgesdk.converters.tvm_build.build_tvm` and print what was built."""
    import json
    from edgesdk.converters.tvm_build import build_tvm
    from edgesdk.table import format_table
    records = build_tvm(args.bundle, args.target, args.processor, batch=parse_batch(args.batch),
                        database=args.tuning_db)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    rows = [(r["file"], r["artifact"], (r.get("elf") or {}).get("machine", "-"),
             (r.get("elf") or {}).get("glibc") or "-",
             ",".join((r.get("elf") or {}).get("needed") or []) or "-",
             "yes" if r["tvm"]["tuning_database_sha256"] else "no") for r in records]
    print(format_table(["file", "artifact", "machine", "newest glibc", "needs", "tuned"], rows))
    if records and records[0].get("kernels"):
        print("\nGPU kernels: {}; on the board: {}".format(records[0]["kernels"]["file"],
                                                        records[0]["kernels"]["device_build"]))
    if args.emulate:
        from edgesdk.converters.tvm_build import build_name
        from edgesdk.converters.tvm_emulation import check_emulated
        check = check_emulated(args.bundle, build_name(args.target, args.processor))
        print("\nunder qemu-aarch64 vs ONNX Runtime on {} reference samples: max abs error per "
              "exit {} -> {}".format(check["samples"],
                                     ", ".join("{:.2e}".format(e) for e in check["max_abs_error"]),
                                     "ok" if check["passed"] else
                                     "FAILED (> {})".format(check["atol"])))
        return 0 if check["passed"] else 1
    return 0
