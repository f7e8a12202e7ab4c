"""Sign a bundle with an Ed25519 key, so boards can load only bundles you signed
(`edgesdk run --trusted-key KEY.pub`, `load_bundle(..., trusted_keys=[...])`).

`--generate-key KEY` writes a new secret key to KEY (mode 0600) and its public key to
KEY.pub. Keep KEY on the machine that signs; copy only KEY.pub to the boards. Changing the
bundle afterwards (calibrate, build) removes the signature: sign again.
"""
import json

from edgesdk.runtime.cli.options import add_wait_argument


def add_arguments(p):
    p.add_argument("bundle", nargs="?", help="path to NAME.edgebundle (its manifest gains the "
                                             "signature)")
    p.add_argument("--key", help="secret key file to sign with")
    p.add_argument("--generate-key", metavar="KEY", help="write a new key pair KEY and KEY.pub")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_wait_argument(p)


def run(args):
    """Generate a key pair and/or sign the bundle."""
    from edgesdk.errors import InputError
    from edgesdk import signing
    out = {}
    if args.generate_key:
        out["public_key"] = signing.generate_key(args.generate_key)
        out["key"], out["public_key_file"] = args.generate_key, args.generate_key + ".pub"
    if args.bundle:
        if not (args.key or args.generate_key):
            raise InputError("give --key (the secret key file) to sign with")
        from edgesdk.bundle import update_manifest
        secret = signing.read_secret_key(args.key or args.generate_key)
        manifest = update_manifest(args.bundle, lambda m: m.update(
            signature=signing.signature_record(m, secret))).manifest
        out.update(bundle=args.bundle, signed_by=manifest["signature"]["public_key"],
                   digest=manifest["signature"]["digest"])
    elif not args.generate_key:
        raise InputError("give a bundle to sign, or --generate-key KEY")
    if args.json:
        print(json.dumps(out))
        return 0
    if "public_key_file" in out:
        print("wrote the secret key {} (keep it private) and the public key {}".format(
            out["key"], out["public_key_file"]))
    if "bundle" in out:
        print("signed {} with key {}".format(out["bundle"], out["signed_by"]))
    return 0
