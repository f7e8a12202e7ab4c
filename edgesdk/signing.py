"""Signed bundles: Ed25519 over the manifest, which hashes every file.

``manifest_sha256`` only detects accidents: anyone who swaps a graph can recompute it. A
signature made with a secret key, checked against public keys the user trusts, says who
wrote the bundle. The signed message is the sha256 of the canonical manifest without its
``signature`` and ``manifest_sha256`` fields; the manifest lists every file's sha256, so the
signature covers every byte of the bundle.

Ed25519 (RFC 8032) is written out here in pure Python so that boards verify with nothing but
the standard library (Python 3.6): about 10 ms per verification on a desktop CPU, once per
load. Signing runs on the host. A manifest changed after signing (``calibrate``) loses its
signature when it is written, since it no longer holds; sign it again.
"""
import hashlib
import os

from edgesdk.errors import InputError, IntegrityError
from edgesdk.manifest import canonical_json

ALGORITHM = "ed25519"

# Curve25519 in twisted Edwards form (RFC 8032, section 5.1).
_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _inv(x):
    return pow(x, _P - 2, _P)


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * _inv(_D * y * y + 1) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


_GY = 4 * _inv(5) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)          # extended coordinates (X, Y, Z, T)
_ZERO = (0, 1, 1, 0)


def _add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s, p):
    q = _ZERO
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _equal(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % _P == 0 and (p[1] * q[2] - q[1] * p[2]) % _P == 0


def _compress(p):
    zinv = _inv(p[2])
    x, y = p[0] * zinv % _P, p[1] * zinv % _P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _decompress(data):
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _hash_int(data):
    return int.from_bytes(hashlib.sha512(data).digest(), "little") % _L


def _expand(secret):
    if len(secret) != 32:
        raise InputError("an Ed25519 secret key is 32 bytes, got {}".format(len(secret)))
    h = hashlib.sha512(secret).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(secret):
    """The 32-byte public key of a 32-byte secret key."""
    return _compress(_mul(_expand(secret)[0], _G))


def sign(secret, message):
    """The 64-byte Ed25519 signature of ``message`` (bytes)."""
    a, prefix = _expand(secret)
    pub = _compress(_mul(a, _G))
    r = _hash_int(prefix + message)
    rs = _compress(_mul(r, _G))
    s = (r + _hash_int(rs + pub + message) * a) % _L
    return rs + int.to_bytes(s, 32, "little")


def verify(public, message, signature):
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public``."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= _L:
        return False
    h = _hash_int(signature[:32] + public + message)
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


def signed_digest(manifest):
    """The message a bundle's signature signs: the hex sha256 of the canonical manifest
    without ``signature`` and ``manifest_sha256``."""
    body = dict((k, v) for k, v in manifest.items() if k not in ("signature", "manifest_sha256"))
    return hashlib.sha256(canonical_json(body)).hexdigest()


def signature_record(manifest, secret):
    """The manifest's ``signature`` entry for ``secret``."""
    digest = signed_digest(manifest)
    return {"algorithm": ALGORITHM, "public_key": public_key(secret).hex(), "digest": digest,
            "value": sign(secret, digest.encode("ascii")).hex()}


def drop_stale_signature(manifest):
    """Remove a signature the manifest no longer matches (it was changed after signing);
    returns whether one was removed."""
    sig = manifest.get("signature")
    if isinstance(sig, dict) and sig.get("digest") == signed_digest(manifest):
        return False
    return manifest.pop("signature", None) is not None


def _key_bytes(key, what):
    """A key given as bytes, hex text, or a file holding hex text."""
    if isinstance(key, bytes):
        return key
    text = key
    if isinstance(key, str) and os.path.isfile(key):
        with open(key) as f:
            text = f.read()
    try:
        return bytes.fromhex(str(text).strip())
    except ValueError:
        raise InputError("{} must be hex text (or a file holding it), got {!r}".format(
            what, str(key)[:80]))


def check_signature(manifest, trusted_keys, where="the bundle"):
    """Refuse (:class:`IntegrityError`) a manifest without a valid signature by one of
    ``trusted_keys`` (public keys: 32 bytes, hex text, or files holding hex text)."""
    keys = [_key_bytes(k, "a trusted key") for k in trusted_keys]
    if not keys:
        raise InputError("no trusted keys given")
    sig = manifest.get("signature")
    if not isinstance(sig, dict):
        raise IntegrityError("{} is not signed; trusted keys were given, so it is refused "
                             "(sign it with `edgesdk sign`)".format(where))
    try:
        pub = bytes.fromhex(sig.get("public_key", ""))
        value = bytes.fromhex(sig.get("value", ""))
    except (TypeError, ValueError):
        raise IntegrityError("{}: its signature record is malformed".format(where))
    if sig.get("algorithm") != ALGORITHM or pub not in keys:
        raise IntegrityError("{} is signed by a key that is not trusted ({}); refused".format(
            where, sig.get("public_key", "?")[:16]))
    if not verify(pub, signed_digest(manifest).encode("ascii"), value):
        raise IntegrityError("{}: the signature does not match its manifest (changed after "
                             "signing, or forged); refused".format(where))


def generate_key(path):
    """Write a new secret key to ``path`` (hex, mode 0600; refused if it exists) and its
    public key to ``path + '.pub'``; returns the public key's hex."""
    secret = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InputError("cannot create the key file '{}': {}".format(path, exc))
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    pub = public_key(secret).hex()
    with open(path + ".pub", "w") as f:
        f.write(pub + "\n")
    return pub


def read_secret_key(path):
    """The secret key in the file ``path`` (as :func:`generate_key` writes it)."""
    if not os.path.isfile(path):
        raise InputError("no key file '{}' (make one with `edgesdk sign --generate-key`)".format(path))
    return _key_bytes(path, "the secret key file '{}'".format(path))
