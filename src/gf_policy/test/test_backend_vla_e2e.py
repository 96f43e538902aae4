"""End to end: the `vla` backend drives the simulated evaluation through the real ROS graph
(gf-launch sim_eval: sim bridge + policy node + eval node over loopback DDS)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gf_eval.results import ResultsFile

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _make_checkpoint(out: Path) -> Path:
    # the helper of test_backend_vla.py (test modules are not importable by name here)
    spec = importlib.util.spec_from_file_location("_vla_helpers", Path(__file__).with_name("test_backend_vla.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_checkpoint(out)


def test_vla_backend_runs_a_simulated_trial_through_ros(tmp_path, fresh_domain):
    ckpt = _make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [str(BIN / "gf-launch"), "sim_eval", "policy:=vla", f"backend_args:={{checkpoint: {ckpt}, seed: 1}}",
         f"checkpoint:={ckpt}", "trials:=1", "protocols:=[Val]", f"output_dir:={out}", "image_size:=64"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "policy backend 'vla' ready" in proc.stdout + proc.stderr
    (record,) = ResultsFile(out).read()
    # A random tiny model does not solve the task, but every one of its chunks was accepted and
    # executed until the episode's step limit (a stalled policy would end as policy_timeout).
    assert record.protocol == "Val" and record.chunks_rejected == 0
    assert record.end_reason == "success" or (record.end_reason in ("timeout", "wrong_card") and record.steps == 200)
    run = json.loads((out / "run.json").read_text())
    assert run["policy"] == "vla" and run["checkpoint"] == str(ckpt)
