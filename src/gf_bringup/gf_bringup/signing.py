"""Signed action chunks: only holders of an enrolled key can move the arm (ROS-free).

Why: on the robot network (``GF_NETWORK=robot``) every process that can reach the DDS domain can
publish on the action topic, and the stock ROS 2 wheels have no DDS-Security. So the signer
(policy or teleop node) attaches to each chunk a key id, a per-key sequence number and an
HMAC-SHA256 over a canonical encoding of every field that decides what the arm does; the driver
verifies it before any other check and refuses:

* ``unsigned``: no key id or no signature,
* ``unknown_key``: a key id the driver was not given,
* ``bad_signature``: the HMAC does not match (forged or altered chunk, or another key's secret),
* ``stale``: stamped more than ``max_age_s`` away from the driver's clock (a replay from
  earlier, possibly across a driver restart, or a badly synchronised clock),
* ``replayed``: sequence not strictly above the last one accepted for that key.

Keys live in small JSON files, mode 0600, one secret each (``gf-keys create``); the same file
goes to the signing computer and to the driver's computer. The secret never leaves the file in
any output of this module.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

KEY_BYTES = 32
SIGNATURE_BYTES = 32  # HMAC-SHA256
KEY_FILE_FORMAT = "gf-signing-key-v1"
CANONICAL_PREFIX = b"gf-action-chunk-v1\0"  # domain separation: a signature over a chunk is no other message's
DEFAULT_MAX_AGE_S = 2.0
REASONS = ("unsigned", "unknown_key", "bad_signature", "stale", "replayed")
# require_signed values: "auto" means required exactly in robot network mode.
REQUIRE_SETTINGS = ("auto", "true", "false")


class KeyFileError(ValueError):
    """A key file that is missing, malformed or readable by others."""


class SignatureRejected(Exception):
    """A chunk whose signature does not authorise it; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    secret: bytes
    created: str = ""

    def __repr__(self) -> str:  # the secret must not end up in logs or tracebacks
        return f"SigningKey(key_id={self.key_id!r}, fingerprint={self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """A short, non-secret identifier of the secret (to compare two computers' copies)."""
        return hashlib.sha256(b"gf-key-fingerprint\0" + self.secret).hexdigest()[:16]


@dataclass(frozen=True)
class ChunkFields:
    """Everything of an ActionChunk the signature covers (all fields but the signature itself)."""

    trial_id: str
    step_index: int
    horizon: int
    execute_steps: int
    action_dim: int
    action_space: str
    data: object  # float32 values, row-major
    stamp_ns: int
    frame_id: str = ""


# --- key files ------------------------------------------------------------------------------


def new_key_id() -> str:
    return f"gf-{datetime.now(timezone.utc):%Y%m%d}-{secrets.token_hex(3)}"


def write_key_file(path: str | Path, key_id: str | None = None, *, overwrite: bool = False) -> SigningKey:
    """Create a key file with a fresh random secret (mode 0600 from the start, never wider)."""
    path = Path(path)
    key = SigningKey(key_id=key_id or new_key_id(), secret=secrets.token_bytes(KEY_BYTES),
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    data = {"format": KEY_FILE_FORMAT, "key_id": key.key_id, "created": key.created, "secret": key.secret.hex()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    if path.exists() and not overwrite:
        tmp.unlink()
        raise KeyFileError(f"{path} exists (use rotate to replace its key)")
    os.replace(tmp, path)
    return key


def load_key(path: str | Path) -> SigningKey:
    """Read a key file; refuses one that group or others may read (the secret would be shared)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {path} does not exist (create one with `gf-keys create {path}`)") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} is accessible to other users (mode {stat.S_IMODE(mode):o}); "
                           f"run `chmod 600 {path}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != KEY_FILE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {KEY_FILE_FORMAT!r}")
        secret = bytes.fromhex(data["secret"])
        if len(secret) != KEY_BYTES or not data["key_id"]:
            raise ValueError(f"need a key id and a {KEY_BYTES}-byte secret")
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a gf signing key: {exc}") from exc
    return SigningKey(key_id=str(data["key_id"]), secret=secret, created=str(data.get("created", "")))


# --- signing and verification ---------------------------------------------------------------


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def canonical_bytes(fields: ChunkFields, key_id: str, sequence: int) -> bytes:
    """The byte string that is signed: every field, length-prefixed, fixed little-endian widths.

    Floats are taken as float32 (what travels in the message), so signer and verifier agree
    whatever container (list, array.array, numpy) holds them.
    """
    data = np.asarray(fields.data, dtype="<f4").reshape(-1).tobytes()
    return b"".join((
        CANONICAL_PREFIX, _text(key_id), struct.pack("<Q", sequence), struct.pack("<q", int(fields.stamp_ns)),
        _text(fields.trial_id), struct.pack("<IIII", fields.step_index, fields.horizon, fields.execute_steps,
                                            fields.action_dim),
        _text(fields.action_space), _text(fields.frame_id), struct.pack("<I", len(data)), data,
    ))


def signature_of(key: SigningKey, fields: ChunkFields, sequence: int) -> bytes:
    return hmac.new(key.secret, canonical_bytes(fields, key.key_id, sequence), hashlib.sha256).digest()


class ChunkSigner:
    """Signs chunks with one key; sequence numbers strictly increase, also across restarts.

    The sequence starts from the wall clock in nanoseconds, so a restarted signer continues above
    the numbers the driver has already seen instead of being refused as a replay.
    """

    def __init__(self, key: SigningKey, clock_ns: Callable[[], int] = time.time_ns):
        self.key = key
        self._last = 0
        self._clock_ns = clock_ns

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def next_sequence(self) -> int:
        self._last = max(self._last + 1, self._clock_ns())
        return self._last

    def sign(self, fields: ChunkFields) -> tuple[str, int, bytes]:
        """(key_id, sequence, signature) to put into the chunk."""
        sequence = self.next_sequence()
        return self.key.key_id, sequence, signature_of(self.key, fields, sequence)


class ChunkVerifier:
    """Accepts chunks signed with one of ``keys``, fresh and in sequence; see the module docstring."""

    def __init__(self, keys: Iterable[SigningKey], max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock_ns: Callable[[], int] = time.time_ns):
        self.keys = {k.key_id: k for k in keys}
        if not self.keys:
            raise ValueError("a verifier needs at least one key")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_age_ns = int(max_age_s * 1e9)
        self._clock_ns = clock_ns
        self._last_sequence: dict[str, int] = {}

    def verify(self, fields: ChunkFields, key_id: str, sequence: int, signature: bytes) -> None:
        """Return when the chunk is authorised, else raise ``SignatureRejected``.

        Sequence numbers are only remembered after the signature matched, so forged chunks
        cannot push the expected sequence out of the real signer's reach.
        """
        signature = bytes(signature)
        if not key_id or not signature:
            raise SignatureRejected("unsigned", "unsigned chunk (no key id or signature)")
        key = self.keys.get(key_id)
        if key is None:
            raise SignatureRejected("unknown_key", f"chunk signed with unknown key {key_id[:64]!r}")
        if not hmac.compare_digest(signature, signature_of(key, fields, sequence)):
            raise SignatureRejected("bad_signature", f"signature does not match key {key_id!r}")
        age_ns = self._clock_ns() - int(fields.stamp_ns)
        if abs(age_ns) > self.max_age_ns:
            raise SignatureRejected("stale", f"chunk stamped {age_ns / 1e9:+.3f} s from the driver's clock "
                                             f"(limit {self.max_age_ns / 1e9:g} s; replay or unsynchronised clocks)")
        last = self._last_sequence.get(key_id, -1)
        if sequence <= last:
            raise SignatureRejected("replayed", f"sequence {sequence} of key {key_id!r} is not above {last}")
        self._last_sequence[key_id] = sequence


def fields_of_message(msg) -> ChunkFields:
    """The signed fields of a gf_interfaces/ActionChunk (any object with its attributes)."""
    stamp = msg.header.stamp
    return ChunkFields(trial_id=msg.trial_id, step_index=int(msg.step_index), horizon=int(msg.horizon),
                       execute_steps=int(msg.execute_steps), action_dim=int(msg.action_dim),
                       action_space=msg.action_space, data=msg.data,
                       stamp_ns=int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), frame_id=msg.header.frame_id)


def sign_message(signer: ChunkSigner, msg) -> None:
    """Fill an ActionChunk's key_id, sequence and signature (call it last: later edits void it)."""
    msg.key_id, msg.sequence, signature = signer.sign(fields_of_message(msg))
    msg.signature = signature


def load_signer(key_file: str) -> ChunkSigner | None:
    """The signer of a node's ``key_file`` parameter ('' = the node does not sign)."""
    return ChunkSigner(load_key(key_file)) if key_file else None


def signing_required(setting: str, network: str) -> bool:
    """Whether the driver demands signed chunks: ``auto`` = exactly in robot network mode."""
    setting = str(setting).strip().lower()
    if setting not in REQUIRE_SETTINGS:
        raise ValueError(f"require_signed: expected one of {', '.join(REQUIRE_SETTINGS)}, got {setting!r}")
    if setting == "auto":
        return network != "loopback"
    return setting == "true"


# --- gf-keys --------------------------------------------------------------------------------


def _describe(path: Path, key: SigningKey) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    return f"{path}: key id {key.key_id}, created {key.created or '?'}, fingerprint {key.fingerprint}, mode {mode:o}"


def main(argv: list[str] | None = None) -> int:
    """`gf-keys`: create, rotate and show action-chunk signing keys (the secret is never printed), and
    create the SROS2 keystore of network:=robot-secure."""
    parser = argparse.ArgumentParser(prog="gf-keys", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="write a new key file (mode 0600)")
    c.add_argument("path")
    c.add_argument("--key-id", default=None, help="key id (default gf-YYYYMMDD-random)")
    r = sub.add_parser("rotate", help="replace the key in a key file with a new one (new key id)")
    r.add_argument("path")
    r.add_argument("--key-id", default=None)
    s = sub.add_parser("show", help="key id, creation time and fingerprint (not the secret)")
    s.add_argument("path")
    from gf_bringup.keystore import add_keystore_command, keystore_command

    add_keystore_command(sub)
    args = parser.parse_args(argv)
    if args.command == "keystore":
        return keystore_command(args)
    path = Path(args.path)
    try:
        if args.command == "create":
            key = write_key_file(path, args.key_id)
            print(f"created {_describe(path, key)}")
        elif args.command == "rotate":
            old = load_key(path)
            key = write_key_file(path, args.key_id, overwrite=True)
            print(f"rotated {path}: {old.key_id} -> {key.key_id} (fingerprint {key.fingerprint}); copy the file to "
                  "the driver's and the signers' computers and restart them: the old key is no longer accepted")
        else:
            print(_describe(path, load_key(path)))
    except KeyFileError as exc:
        print(f"gf-keys {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
