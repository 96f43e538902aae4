"""Signing overhead: time to sign and to verify one action chunk, next to the time rclpy takes to serialise it.

The reference (rclpy's ``serialize_message`` of the same ActionChunk, measured in the same run)
is work every chunk already costs on its way to the driver; the control period (50 ms at 20 Hz)
is the budget both fit in.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gf_bringup.constants import CONTROL_RATE_HZ
from gf_bringup.signing import ChunkFields, ChunkSigner, ChunkVerifier, SigningKey


def _per_call_us(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gf-bench signing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20000, help="chunks per measurement")
    parser.add_argument("--horizon", type=int, default=8, help="rows per chunk")
    args = parser.parse_args(argv)
    from rclpy.serialization import serialize_message

    from gf_interfaces.msg import ActionChunk

    key = SigningKey(key_id="bench", secret=bytes(range(32)))
    data = np.random.default_rng(0).uniform(-1, 1, args.horizon * 7).astype(np.float32)
    now = time.time_ns()
    fields = ChunkFields(trial_id="Touch-0000-0", step_index=12, horizon=args.horizon, execute_steps=4, action_dim=7,
                         action_space="ee_delta_pose", data=data, stamp_ns=now, frame_id="base_link")
    signer = ChunkSigner(key)
    signed = [signer.sign(fields) for _ in range(args.chunks)]
    verifier = ChunkVerifier([key], max_age_s=3600.0)
    it = iter(signed)

    def verify_next():
        key_id, sequence, signature = next(it)
        verifier.verify(fields, key_id, sequence, signature)

    msg = ActionChunk(trial_id=fields.trial_id, step_index=12, horizon=args.horizon, execute_steps=4, action_dim=7,
                      action_space="ee_delta_pose", data=data)
    sign_us = _per_call_us(lambda: signer.sign(fields), args.chunks)
    verify_us = _per_call_us(verify_next, args.chunks)
    serialise_us = _per_call_us(lambda: serialize_message(msg), args.chunks)
    period_us = 1e6 / CONTROL_RATE_HZ
    print(f"chunk: {args.horizon} x 7 float32, {args.chunks} chunks per figure")
    print(f"  sign    {sign_us:8.2f} us/chunk")
    print(f"  verify  {verify_us:8.2f} us/chunk")
    print(f"  reference: rclpy serialize_message of the same chunk {serialise_us:8.2f} us; control period {period_us:.0f} us")
    print(f"  sign + verify = {(sign_us + verify_us) / period_us * 100:.3f} % of one control period")
    return 0
