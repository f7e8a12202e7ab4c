"""Signed bundles: Ed25519 (checked against RFC 8032), refused unsigned, by an untrusted key,
or changed after signing, when the loader is given trusted keys."""
import json
import os

import pytest

from conftest import cli
from edgesdk import bundle as bundle_io
from edgesdk import signing
from edgesdk.errors import IntegrityError
from edgesdk.runtime import load_bundle


def test_ed25519_matches_rfc8032_test_1():
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = signing.public_key(secret)
    assert public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    sig = signing.sign(secret, b"")
    assert sig.hex() == ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
                         "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert signing.verify(public, b"", sig)


def test_a_signature_holds_only_for_its_message_and_key():
    a, b = os.urandom(32), os.urandom(32)
    sig = signing.sign(a, b"manifest digest")
    assert signing.verify(signing.public_key(a), b"manifest digest", sig)
    assert not signing.verify(signing.public_key(a), b"manifest digesT", sig)
    assert not signing.verify(signing.public_key(b), b"manifest digest", sig)
    forged = sig[:32] + int.to_bytes(int.from_bytes(sig[32:], "little") + signing._L, 32, "little")
    assert not signing.verify(signing.public_key(a), b"manifest digest", forged)  # s >= L


def test_sign_then_run_with_the_trusted_key(bundle, tmp_path, capsys):
    key = str(tmp_path / "me.key")
    code, out, _ = cli(capsys, "sign", bundle, "--generate-key", key, "--json")
    assert code == 0 and oct(os.stat(key).st_mode & 0o777) == "0o600"
    signed_by = json.loads(out)["signed_by"]
    assert open(key + ".pub").read().strip() == signed_by
    model = load_bundle(bundle, trusted_keys=[key + ".pub"])
    assert model.bundle.manifest["signature"]["public_key"] == signed_by
    code, out, _ = cli(capsys, "validate", bundle, "--trusted-key", key + ".pub", "--json")
    assert code == 0 and json.loads(out)["signed_by"] == signed_by
    other = str(tmp_path / "other.key")
    signing.generate_key(other)
    with pytest.raises(IntegrityError, match="not trusted"):
        load_bundle(bundle, trusted_keys=[other + ".pub"])


def test_unsigned_bundles_are_refused_when_keys_are_given(bundle, tmp_path, capsys):
    key = str(tmp_path / "k")
    signing.generate_key(key)
    with pytest.raises(IntegrityError, match="is not signed"):
        load_bundle(bundle, trusted_keys=[key + ".pub"])
    code, _, err = cli(capsys, "validate", bundle, "--trusted-key", key + ".pub")
    assert code == 4 and "not signed" in err
    load_bundle(bundle)                                   # without keys nothing is required


def test_a_graph_swapped_with_every_checksum_recomputed_is_refused(bundle, tmp_path, capsys):
    key = str(tmp_path / "k")
    assert cli(capsys, "sign", bundle, "--generate-key", key)[0] == 0
    # What an attacker can do without the key: change a file, then fix its sha256 and the
    # manifest's own checksum. Only the signature still tells.
    with open(os.path.join(bundle, "heads", "exit0.onnx"), "ab") as f:
        f.write(b"\0")
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    m["files"].update(bundle_io.hash_files(bundle, ["heads/exit0.onnx"]))
    m["manifest_sha256"] = bundle_io.mf.content_digest(m)
    with open(os.path.join(bundle, "manifest.json"), "w") as f:
        json.dump(m, f)
    bundle_io.read_bundle(bundle)                         # the checksums agree again
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        load_bundle(bundle, trusted_keys=[key + ".pub"])


def test_changing_a_signed_bundle_removes_its_signature(bundle, tmp_path, capsys):
    key = str(tmp_path / "k")
    assert cli(capsys, "sign", bundle, "--generate-key", key)[0] == 0
    bundle_io.update_manifest(bundle, lambda m: m["exits"][0].update(threshold=0.5))
    assert "signature" not in bundle_io.read_bundle(bundle).manifest
    with pytest.raises(IntegrityError, match="is not signed"):
        load_bundle(bundle, trusted_keys=[key + ".pub"])
    assert cli(capsys, "sign", bundle, "--key", key)[0] == 0
    load_bundle(bundle, trusted_keys=[key + ".pub"])
