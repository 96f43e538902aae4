"""Signed action chunks (gf_bringup.signing): key files, signer, verifier refusals, gf-keys."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from gf_bringup.signing import (
    ChunkFields,
    ChunkSigner,
    ChunkVerifier,
    KeyFileError,
    SignatureRejected,
    load_key,
    signing_required,
    write_key_file,
)

NOW = 1_800_000_000_000_000_000


def fields(**changes) -> ChunkFields:
    base = ChunkFields(trial_id="Touch-0001-0", step_index=3, horizon=2, execute_steps=1, action_dim=7,
                       action_space="ee_delta_pose", data=np.linspace(-1, 1, 14, dtype=np.float32), stamp_ns=NOW,
                       frame_id="base_link")
    return dataclasses.replace(base, **changes)


@pytest.fixture
def key(tmp_path):
    return write_key_file(tmp_path / "policy.key", "lab-1")


def clock(value=NOW):
    return lambda: value


def refusal(verifier, f, key_id, sequence, signature) -> str:
    with pytest.raises(SignatureRejected) as info:
        verifier.verify(f, key_id, sequence, signature)
    return info.value.reason


def test_key_file_is_private_and_round_trips(tmp_path, key):
    path = tmp_path / "policy.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key(path)
    assert loaded == key and len(loaded.secret) == 32
    assert key.secret.hex() not in repr(loaded)
    with pytest.raises(KeyFileError, match="exists"):
        write_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "missing.key")


def test_signed_chunks_verify_in_sequence(key):
    signer = ChunkSigner(key, clock_ns=clock())
    verifier = ChunkVerifier([key], clock_ns=clock())
    for step in range(5):
        f = fields(step_index=step)
        verifier.verify(f, *signer.sign(f))
    # The data may arrive as a list or array.array: the float32 values are what is signed.
    f = fields()
    key_id, seq, sig = signer.sign(f)
    verifier.verify(fields(data=[float(v) for v in f.data]), key_id, seq, sig)


def test_each_refusal_has_its_reason(tmp_path, key):
    other = write_key_file(tmp_path / "intruder.key", "lab-1")  # same id, different secret
    stranger = write_key_file(tmp_path / "stranger.key", "someone")
    signer = ChunkSigner(key, clock_ns=clock())
    verifier = ChunkVerifier([key], max_age_s=2.0, clock_ns=clock())
    f = fields()
    assert refusal(verifier, f, "", 0, b"") == "unsigned"
    assert refusal(verifier, f, "lab-1", 5, b"") == "unsigned"
    assert refusal(verifier, f, *ChunkSigner(stranger).sign(f)) == "unknown_key"
    assert refusal(verifier, f, *ChunkSigner(other).sign(f)) == "bad_signature"
    key_id, seq, sig = signer.sign(f)
    for changed in (fields(trial_id="Touch-0002-0"), fields(step_index=4), fields(execute_steps=2),
                    fields(action_space="joint"), fields(data=f.data + np.float32(0.01)), fields(stamp_ns=NOW + 1),
                    fields(frame_id="tool")):
        assert refusal(verifier, changed, key_id, seq, sig) == "bad_signature"
    assert refusal(verifier, f, key_id, seq + 1, sig) == "bad_signature"  # the sequence is signed too
    verifier.verify(f, key_id, seq, sig)
    assert refusal(verifier, f, key_id, seq, sig) == "replayed"
    older = fields(stamp_ns=NOW - 3_000_000_000)
    assert refusal(verifier, older, *signer.sign(older)) == "stale"
    future = fields(stamp_ns=NOW + 3_000_000_000)
    assert refusal(verifier, future, *signer.sign(future)) == "stale"


def test_forged_chunks_do_not_advance_the_sequence(tmp_path, key):
    """An intruder's huge sequence number must not lock the real signer out."""
    other = write_key_file(tmp_path / "intruder.key", "lab-1")
    verifier = ChunkVerifier([key], clock_ns=clock())
    f = fields()
    forged = ChunkSigner(other, clock_ns=clock(2**63))
    assert refusal(verifier, f, *forged.sign(f)) == "bad_signature"
    verifier.verify(f, *ChunkSigner(key, clock_ns=clock()).sign(f))


def test_a_restarted_signer_continues_above_its_old_sequence(key):
    now = [NOW]
    first = ChunkSigner(key, clock_ns=lambda: now[0])
    verifier = ChunkVerifier([key], clock_ns=clock())
    f = fields()
    for _ in range(3):
        verifier.verify(f, *first.sign(f))
    now[0] += 1_000_000  # 1 ms later the node restarts
    verifier.verify(f, *ChunkSigner(key, clock_ns=lambda: now[0]).sign(f))


def test_required_by_default_exactly_on_the_robot_network():
    assert signing_required("auto", "robot") and not signing_required("auto", "loopback")
    assert not signing_required("false", "robot") and signing_required("true", "loopback")
    with pytest.raises(ValueError, match="require_signed"):
        signing_required("maybe", "robot")


def test_gf_keys_never_prints_the_secret(tmp_path):
    path = tmp_path / "keys" / "driver.key"

    def run(*args):
        return subprocess.run([sys.executable, "-c", "import sys; from gf_bringup.signing import main; sys.exit(main())",
                               *args], capture_output=True, text=True, timeout=60)

    created = run("create", str(path), "--key-id", "lab-a")
    assert created.returncode == 0, created.stderr
    first = load_key(path)
    shown = run("show", str(path))
    rotated = run("rotate", str(path))
    second = load_key(path)
    assert rotated.returncode == 0 and second.key_id != "lab-a" and second.secret != first.secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "lab-a" in shown.stdout and first.fingerprint in shown.stdout
    for out in (created, shown, rotated):
        text = out.stdout + out.stderr
        assert first.secret.hex() not in text and second.secret.hex() not in text
    assert run("create", str(path)).returncode == 2


def test_doctor_reports_whether_fast_dds_has_security(tmp_path, monkeypatch):
    from gf_bringup import doctor

    for value, expected in (("0", False), ("1", True)):
        prefix = tmp_path / f"prefix{value}"
        (prefix / "include" / "fastdds").mkdir(parents=True)
        (prefix / "include" / "fastdds" / "config.hpp").write_text(f"#ifndef HAVE_SECURITY\n#define HAVE_SECURITY {value}\n#endif\n")
        monkeypatch.setattr(doctor.sys, "prefix", str(prefix))
        supported, where = doctor.fastdds_security_support()
        assert supported is expected and where.startswith(str(prefix))
        assert ("SROS2 enclaves can be used" in doctor.check_dds_security()) is expected
