"""Multi-process training on CPU: 2 ranks with the gloo backend (DDP and FSDP2) hold identical
weights after optimiser steps, and the run's checkpoint is written once, loadable for inference.

Ranks are started the way ``torchrun`` starts them (RANK / WORLD_SIZE / LOCAL_RANK in the
environment), but rendezvous through a file store and gloo pinned to the loopback interface, so
nothing listens beyond 127.0.0.1 (torchrun's TCP store binds every interface).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent('''
    import sys, torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from gf_training.config import load_config
    from gf_training.train import Trainer

    out, strategy = sys.argv[1], sys.argv[2]
    cfg = load_config("tiny", [f"output_dir={out}/run", "train.steps=2", "train.save_steps=[2]",
                               "train.batch_size=8", "train.micro_batch_size=2", "logging.progress=false",
                               f"distributed.strategy={strategy}", f"distributed.init_method=file://{out}/store"])
    trainer = Trainer(cfg).setup()
    full = lambda t: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()
    init = {k: full(v) for k, v in trainer.model.state_dict().items()}
    result = trainer.run()
    state = get_model_state_dict(trainer.wrapped, options=StateDictOptions(full_state_dict=True))
    torch.save({"state": state, "init": init, "losses": result.losses, "accum": trainer.accum,
                "checkpoints": [str(c) for c in result.checkpoints]}, f"{out}/rank{trainer.info.rank}.pt")
    trainer.close()
''')


def run_ranks(tmp_path, strategy: str, world: int = 2) -> list[dict]:
    out = tmp_path / strategy
    out.mkdir()
    (out / "worker.py").write_text(WORKER)
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        procs.append(subprocess.Popen([sys.executable, str(out / "worker.py"), str(out), strategy], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    return run_ranks(tmp_path_factory.mktemp("dist"), "ddp")


def assert_identical_and_trained(ranks: list[dict]) -> None:
    a, b = ranks
    assert a["accum"] == 2  # batch 8 = 2 ranks x micro-batch 2 x 2 accumulation steps
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), f"ranks differ in {key}"
    changed = [k for k in a["init"] if not torch.equal(a["state"][k], a["init"][k])]
    assert len(changed) > 0.8 * len(a["init"])  # the optimiser did move the (shared) weights
    assert a["losses"] != b["losses"]  # ... from different data on each rank


def test_ddp_two_ranks_hold_identical_weights(ddp_ranks):
    assert_identical_and_trained(ddp_ranks)
    from gf_policy.vla import VLAInference

    ckpt = ddp_ranks[0]["checkpoints"][-1]
    assert ckpt == ddp_ranks[1]["checkpoints"][-1]
    policy = VLAInference.from_pretrained(ckpt)  # written once, by rank 0, and complete
    for key, value in policy.model.state_dict().items():
        assert torch.equal(value, ddp_ranks[0]["state"][key])


def test_fsdp_two_ranks_match_ddp(tmp_path, ddp_ranks):
    fsdp = run_ranks(tmp_path, "fsdp")
    assert_identical_and_trained(fsdp)
    # same data, noise and averaged gradients: sharding changes where the numbers live, not what they are
    for key, value in ddp_ranks[0]["state"].items():
        torch.testing.assert_close(fsdp[0]["state"][key], value, rtol=1e-5, atol=1e-6)
