"""End to end, train -> eval: demos generated in the simulator, a tiny model trained on them with
gf-train, and that checkpoint run by the `vla` backend through the real ROS graph on the demos'
own layouts (protocols:=[Demo]: trial i is demo i's layout and instruction). A broken link anywhere in between (bag decoding, normalisation,
action frames, image preprocessing, chunk execution, prompt text) makes the policy fail here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gf_eval.results import ResultsFile

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DEMOS = 3
IMAGE_SIZE = 64  # camera resolution of demos and evaluation: cheaper to render, plenty for 32 px inputs


def _run(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_model_trained_on_demos_redoes_them_in_closed_loop(tmp_path, fresh_domain):
    demos, run = tmp_path / "demos", tmp_path / "run"
    _run([str(BIN / "gf-demos"), "generate", "--split", "train", "--episodes", str(DEMOS), "--out", str(demos),
          "--workers", "1", "--image-size", str(IMAGE_SIZE), "--no-progress"], timeout=600)
    _run([str(BIN / "gf-train"), "mini/e2e.yaml", f"output_dir={run}", f"data.demo_dirs=[{demos}]",
          f"data.cache_dir={tmp_path / 'cache'}"], timeout=900)
    (ckpt,) = sorted((run / "checkpoints").glob("step_*"))
    out = tmp_path / "eval"
    _run([str(BIN / "gf-launch"), "sim_eval", "policy:=vla", f"backend_args:={{checkpoint: {ckpt}}}",
          f"checkpoint:={ckpt}", "protocols:=[Demo]", f"trials:={DEMOS}", f"image_size:={IMAGE_SIZE}",
          f"output_dir:={out}"], timeout=900)
    records = ResultsFile(out).read()
    assert len(records) == DEMOS and all(r.protocol == "Demo" and r.chunks_rejected == 0 for r in records)
    # The scripted expert solved every one of these layouts; the fitted policy must too, on most.
    successes = sum(r.success for r in records)
    assert successes >= DEMOS - 1, [(r.trial_id, r.end_reason, r.placed_card, r.steps) for r in records]
