"""The mini recipe (gf-mini): its model config, the stages (dry run, skipping finished work,
failures), the training metrics file and the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from gf_eval.results import RESULTS_FILE
from gf_training import mini, mini_comparison
from gf_training.config import load_config
from gf_training.mini_stage_log import StageLog, busy_intervals, covered_seconds
from gf_training.train import METRICS_FILE, build_model, expand_backbone_sizes, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def make_plan(tmp_path, **sizes) -> mini.Plan:
    values = {"demo_episodes": 3, "sweep_trials": 2, "eval_trials": 2, **sizes}
    return mini.Plan(mini.RECIPES["baseline"], tmp_path, **values)


def dry_runner(root, capsys, monkeypatch):
    """``dry_run(recipe)``: the ``[gf-mini]`` lines of ``gf-mini run RECIPE --dry-run`` under ``root``."""
    monkeypatch.setattr(mini.subprocess, "Popen", lambda *a, **k: pytest.fail("a dry run started a command"))

    def dry_run(recipe):
        assert mini.main(["run", recipe, "--dry-run", "--root", str(root)]) == 0
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("[gf-mini]")]

    return dry_run


def write_manifest(demo_dir, entries) -> None:
    demo_dir.mkdir(parents=True, exist_ok=True)
    (demo_dir / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_mini_config_builds_the_small_model_it_describes():
    cfg = load_config("mini/baseline.yaml")
    model = build_model(cfg)
    vc = model.config
    assert vc.image_size == 96 and vc.tokens_per_image == 64
    assert vc.text_config["hidden_size"] == 128 and vc.vision_config["num_hidden_layers"] == 3
    assert (vc.action_horizon, vc.execution_horizon) == (10, 5)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6
    with pytest.raises(ValueError, match="unknown keys"):
        expand_backbone_sizes({"vlm": {"text": {}, "vision": {}, "hidden": 3}})
    full = {"vlm": vc.vlm}  # the complete form passes through unchanged
    assert expand_backbone_sizes(full) is full


def test_training_writes_a_metrics_line_per_logging_step(tmp_path):
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "logging.progress=false",
                               "logging.tensorboard=false", "train.steps=10", "train.log_every=5",
                               "train.save_steps=[]"])
    train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [5, 10]
    assert all(entry["train/loss"] > 0 for entry in lines)
    # A resumed run appends: the reader keeps the last line of a step.
    with open(tmp_path / "run" / METRICS_FILE, "a") as f:
        f.write(json.dumps({"step": 5, "train/loss": 0.125}) + "\n")
    metrics = mini.read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [5, 10] and metrics[0]["train/loss"] == 0.125


def test_dry_run_prints_every_stage_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mini.subprocess, "Popen", lambda *a, **k: pytest.fail("a dry run started a command"))
    assert mini.main(["run", "baseline", "--dry-run", "--root", str(tmp_path), "--episodes", "7"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[gf-mini]")]
    assert [line.split()[2] for line in lines] == ["demos", "train", "sweep", "eval", "report"]  # no VL data
    assert "--episodes 7" in lines[0] and "gf-train mini/baseline.yaml" in lines[1]
    assert "--protocols Val" in lines[2] and "protocols:=[ID,Train,Val,Hard]" in lines[3]
    assert not any(tmp_path.iterdir())


def test_a_cotraining_recipe_generates_its_vl_data_and_trains_on_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mini.subprocess, "Popen", lambda *a, **k: pytest.fail("a dry run started a command"))
    assert mini.main(["run", "cube_cotrain", "--dry-run", "--root", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[gf-mini]")]
    vl_dir = tmp_path / "vl" / "mini" / "cube"
    assert "vl (to run)" in lines[1] and f"gf-vl-data cube --scenes 1000 --out {vl_dir}" in lines[1]
    assert f"cotrain.vl_dirs=[{vl_dir}]" in lines[2]
    vl_dir.mkdir(parents=True)
    (vl_dir / "manifest.jsonl").write_text("{}\n" * 1000)
    assert mini.main(["run", "cube_cotrain", "--dry-run", "--root", str(tmp_path)]) == 0
    assert "vl (done, would skip)" in capsys.readouterr().err


def test_the_vlm_recipe_learns_the_names_then_the_table_alone_exports_and_probes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mini.subprocess, "Popen", lambda *a, **k: pytest.fail("a dry run started a command"))
    vl = tmp_path / "vl" / "mini"
    tok = tmp_path / "tok" / "mini_catalogue"
    # Stage 1: names of every catalogue emoji, its sources drawn in proportion to their sizes.
    assert mini.main(["run", "vlm-names", "--dry-run", "--root", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[gf-mini]")]
    assert [line.split()[2] for line in lines] == ["tokenizer", *["vl"] * 3, "train", "export", "probe"]
    assert f"gf-vl-data glyphs --per-emoji 32 --lists All --size 128 --out {vl / 'all_glyphs'}" in lines[1]
    assert f"gf-vl-data which --scenes 3000 --lists All --out {vl / 'all_which'}" in lines[3]
    names_dir = tmp_path / "runs" / "mini" / "vlm_names"
    assert f"gf-train mini/vlm_names.yaml output_dir={names_dir} model.tokenizer={tok}" in lines[4]
    assert "cotrain.vl_weights=[]" in lines[4] and "demo_dirs" not in lines[4]
    # Stage 2 runs stage 1 first, then trains its whole final checkpoint on the table's data.
    assert mini.main(["run", "vlm-table", "--dry-run", "--root", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[gf-mini]")]
    assert [line.split()[2] for line in lines] == ["tokenizer", "vlm", *["vl"] * 5, "train", "export", "probe"]
    assert f"gf-mini run vlm-names --root {tmp_path}" in lines[1]
    assert f"gf-vl-data tablecards --per-emoji 32 --lists All --size 128 --out {vl / 'all_tablecards'}" in lines[4]
    assert f"gf-vl-data which --scenes 4000 --lists Train,Val,Hard --out {vl / 'train_val_hard_which'}" in lines[5]
    assert f"gf-vl-data tabletop --scenes 2000 --lists Train,Val,Hard --out {vl / 'train_val_hard_tabletop'}" in lines[6]
    table_dir = tmp_path / "runs" / "mini" / "vlm_table"
    train_line = lines[7]
    assert f"gf-train mini/vlm_table.yaml output_dir={table_dir} " in train_line
    assert f"model.path={names_dir / 'checkpoints' / 'step_012000'} model.tokenizer={tok}" in train_line
    assert "demo_dirs" not in train_line
    dirs = ",".join(str(vl / d) for d in ("all_glyphs", "all_cards", "all_tablecards", "train_val_hard_which",
                                           "train_val_hard_tabletop"))
    assert f"cotrain.vl_dirs=[{dirs}]" in train_line and "cotrain.vl_weights=[0.1,0.1,0.3,0.3,0.2]" in train_line
    assert f"gf-vlm export {table_dir / 'checkpoints' / 'step_006000'} --out {table_dir / 'hf'}" in lines[8]
    # the probe reads the final checkpoint (the export's weights and the camera crop) and asks scenes too
    assert f"gf-probe {table_dir / 'checkpoints' / 'step_006000'} --out {table_dir / 'probe'} --scenes 100" in lines[9]
    # Stage 3, the VLM the rows start from: stage 2's final checkpoint once more on the same data.
    assert mini.main(["run", "vlm", "--dry-run", "--root", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[gf-mini]")]
    assert [line.split()[2] for line in lines] == ["tokenizer", "vlm", *["vl"] * 5, "train", "export", "probe"]
    assert f"gf-mini run vlm-table --root {tmp_path}" in lines[1]
    run_dir = tmp_path / "runs" / "mini" / "vlm"
    assert f"gf-train mini/vlm.yaml output_dir={run_dir} model.path={table_dir / 'checkpoints' / 'step_006000'} " in lines[7]
    assert f"cotrain.vl_dirs=[{dirs}]" in lines[7] and "cotrain.vl_weights=[0.1,0.1,0.3,0.3,0.2]" in lines[7]
    assert f"gf-vlm export {run_dir / 'checkpoints' / 'step_006000'} --out {run_dir / 'hf'}" in lines[8]
    # glyphs of every catalogue emoji: done at 32 per emoji, not before
    (vl / "all_glyphs").mkdir(parents=True)
    (vl / "all_glyphs" / "manifest.jsonl").write_text("{}\n" * (32 * 1377 - 1))
    assert mini.main(["run", "vlm", "--dry-run", "--root", str(tmp_path)]) == 0
    assert "3/10 vl (to run)" in capsys.readouterr().err
    (vl / "all_glyphs" / "manifest.jsonl").write_text("{}\n" * (32 * 1377))
    assert mini.main(["run", "vlm", "--dry-run", "--root", str(tmp_path)]) == 0
    assert "3/10 vl (done, would skip)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mini.main(["report", "vlm", "--root", str(tmp_path)])
    # the recipes' configs build the VLM they describe: the crop view, a 1024-id vocabulary, VL only
    for name in ("vlm_names", "vlm_table", "vlm"):
        cfg = load_config(f"mini/{name}.yaml")
        assert cfg.cotrain.ratio == 1.0 and cfg.data.demo_dirs == [] and cfg.scene_probe.weight == 0
        assert cfg.name_probe.weight == 1.0
    table, third = load_config("mini/vlm_table.yaml"), load_config("mini/vlm.yaml")
    assert table.model.init == third.model.init == "checkpoint"
    # the third stage differs from the second only in where it starts and writes
    assert {**third.to_dict(), "model": None, "output_dir": None, "name": None} == \
        {**table.to_dict(), "model": None, "output_dir": None, "name": None}
    assert {**third.to_dict()["model"], "path": None} == {**table.to_dict()["model"], "path": None}
    vc = build_model(load_config("mini/vlm_names.yaml")).config
    assert vc.image_size == 128 and vc.image_crop == [0.15, 0.15, 0.85, 0.78] and vc.text_config["vocab_size"] == 1024
    assert vc.max_text_tokens == 24 and vc.tokens_per_image == 64


def test_the_table_names_check_differs_from_the_rows_model_only_in_its_patches():
    p16, p8 = load_config("mini/table_names.yaml"), load_config("mini/table_names_p8.yaml")
    for cfg in (p16, p8):
        assert cfg.cotrain.ratio == 1.0 and cfg.data.demo_dirs == [] and cfg.model.init == "config"
    assert p16.cotrain.vl_dirs == p8.cotrain.vl_dirs and p16.output_dir != p8.output_dir
    rows, m16, m8 = (build_model(cfg).config for cfg in (load_config("mini/row.yaml"), p16, p8))
    assert m16.tokens_per_image == rows.tokens_per_image == 64 and m8.tokens_per_image == 256
    assert m16.image_size == m8.image_size == rows.image_size and m16.image_crop == rows.image_crop
    assert {**m8.vision_config, "patch_size": 16} == m16.vision_config == rows.vision_config


def test_a_recipe_weights_all_its_vl_sources_or_none():
    with pytest.raises(ValueError, match="give every VLData a weight, or none"):
        mini.Recipe("mixed", "", vl_data=(mini.VLData("glyphs", 1, weight=0.5), mini.VLData("cards", 1)))


def test_the_comparison_rows_start_from_the_vlm_recipe_and_the_control_from_random_weights(tmp_path, capsys,
                                                                                         monkeypatch):
    dry_run = dry_runner(tmp_path, capsys, monkeypatch)

    hf = tmp_path / "runs" / "mini" / "vlm" / "hf"
    for row in ("vlm-full", "vlm-lora", "vlm-action", "discrete-full"):
        lines = dry_run(row)
        assert [line.split()[2] for line in lines] == ["vlm", "demos", "train", "sweep", "eval", "report"], row
        assert f"gf-mini run vlm --root {tmp_path}" in lines[0]
        slug = row.replace("-", "_")
        assert f"gf-train mini/{slug}.yaml output_dir={tmp_path / 'runs' / 'mini' / slug} model.path={hf}" in lines[2]
    lines = dry_run("scratch-full")
    assert [line.split()[2] for line in lines] == ["tokenizer", "demos", "train", "sweep", "eval", "report"]
    assert f"model.tokenizer={tmp_path / 'tok' / 'mini_catalogue'}" in lines[2] and "model.path" not in lines[2]
    # co-training reads the VLM's own data, which the VLM recipe has made by then
    lines = dry_run("cotrain-full")
    vl = tmp_path / "vl" / "mini"
    assert [line.split()[2] for line in lines][:8] == ["vlm", "demos", *["vl"] * 5, "train"]
    dirs = ",".join(str(vl / d) for d in ("all_glyphs", "all_cards", "all_tablecards", "train_val_hard_which",
                                           "train_val_hard_tabletop"))
    assert f"cotrain.vl_dirs=[{dirs}]" in lines[7] and "cotrain.vl_weights=[0.1,0.1,0.3,0.3,0.2]" in lines[7]
    # a finished VLM recipe (every stage of each of its stages done) is not run again
    for name in ("vlm-names", "vlm-table", "vlm"):
        vlm_plan = mini.Plan(mini.RECIPES[name], tmp_path, 0, 0, 0)
        assert "1/6 vlm (to run)" in dry_run("vlm-full")[0]
        for path in (vlm_plan.tokenizer_dir / "tokenizer_config.json", vlm_plan.vlm_export_dir / "config.json",
                     vlm_plan.run_dir / "probe" / "summary.json", mini.final_checkpoint(vlm_plan) / "model.safetensors"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        for data in mini.RECIPES[name].vl_data:
            vlm_plan.vl_dir(data).mkdir(parents=True, exist_ok=True)
            (vlm_plan.vl_dir(data) / "manifest.jsonl").write_text("{}\n" * data.samples("gf-default-v1"))
    assert "1/6 vlm (done, would skip)" in dry_run("vlm-full")[0]


def test_the_vla_pretraining_row_pretrains_on_shape_demos_then_fine_tunes_its_final_checkpoint(tmp_path, capsys,
                                                                                             monkeypatch):
    dry_run = dry_runner(tmp_path, capsys, monkeypatch)

    runs = tmp_path / "runs" / "mini"
    lines = dry_run("vla-pretrain")
    assert [line.split()[2] for line in lines] == ["vlm", "demos", "train"]  # no sweep or evaluation of its own
    shapes = tmp_path / "demos" / "mini" / "gf-shapes-v1"
    assert f"--out {shapes} --split-file gf-shapes-v1 --seed 1" in lines[1]  # not the Train demos' layouts
    assert f"model.path={runs / 'vlm' / 'hf'} 'data.demo_dirs=[{shapes}]'" in lines[2]
    lines = dry_run("vlapre-full")
    assert [line.split()[2] for line in lines] == ["pretrain", "demos", "train", "sweep", "eval", "report"]
    assert f"gf-mini run vla-pretrain --root {tmp_path}" in lines[0]
    train_demos = tmp_path / "demos" / "mini" / "train"
    pretrained = runs / "vla_pretrain" / "checkpoints" / "step_006000"
    assert f"model.path={pretrained} 'data.demo_dirs=[{train_demos}]'" in lines[2]
    assert "vlapre-full" in [r.name for r in mini_comparison.comparison_rows()]
    assert "vla-pretrain" not in [r.name for r in mini_comparison.comparison_rows()]
    with pytest.raises(SystemExit):
        mini.main(["report", "vla-pretrain", "--root", str(tmp_path)])


def test_an_upstream_paced_recipe_records_and_trains_on_its_own_demos(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mini.subprocess, "Popen", lambda *a, **k: pytest.fail("a dry run started a command"))
    assert mini.main(["run", "scene_probe_upstream", "--dry-run", "--root", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[gf-mini]")]
    demo_dir = tmp_path / "demos" / "mini" / "train_upstream"
    assert f"--out {demo_dir} --backend-args '{{profile: upstream}}'" in lines[0]
    assert f"data.demo_dirs=[{demo_dir}]" in lines[1] and "scene_probe_upstream.yaml" in lines[1]


def test_finished_stages_are_skipped_and_a_failure_stops_the_recipe(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    ok = {"complete": True, "success": True}
    write_manifest(plan.demo_dir, [ok, ok, {"complete": True, "success": False}])
    calls = []

    class FailingCommand:  # exits at once with code 3
        def __init__(self, cmd):
            calls.append(cmd)

        def wait(self, timeout=None):
            return 3

    monkeypatch.setattr(mini.subprocess, "Popen", FailingCommand)
    messages: list[str] = []
    # Two usable demos of three: generation runs (and fails here), training is never reached.
    assert mini.run(plan, only=["demos", "train"], say=messages.append) == 3
    assert len(calls) == 1 and calls[0][1:3] == ["generate", "--split"]
    write_manifest(plan.demo_dir, [ok, ok, ok])
    calls.clear()
    assert mini.run(plan, only=["demos", "train"], say=messages.append) == 3
    assert any("demos: finished earlier, skipped" in m for m in messages)
    assert len(calls) == 1 and "mini/baseline.yaml" in calls[0]


def test_a_run_trained_on_other_data_is_not_done_and_is_not_resumed(tmp_path, monkeypatch):
    """Changing what a recipe learns from (here its seed) after its run finished: gf-mini sees the
    train stage as not done, and gf-train refuses to continue the old run, naming the change.
    More steps or other logging continue it."""
    from gf_training.checkpoints import config_changes
    from gf_training.data import synthetic_episodes
    from gf_training.train import Trainer

    plan = make_plan(tmp_path, demo_episodes=2)
    overrides = ["train.steps=2", "train.save_steps=[]", "train.batch_size=4", "train.micro_batch_size=4",
                 "logging.progress=false", "logging.tensorboard=false", "data.synthetic=null"]
    monkeypatch.setattr(plan, "train_overrides", [*overrides, "seed=0"])
    config = load_config(plan.recipe.train_config, plan.train_args()[1:])
    assert not mini.trained(plan)
    train(config, episodes=synthetic_episodes(num_episodes=2, length=12, image_size=96, seed=0))
    assert mini.trained(plan)
    monkeypatch.setattr(plan, "train_overrides", [*overrides, "seed=1"])
    assert not mini.trained(plan)
    with pytest.raises(ValueError, match=r"other seed \("):
        Trainer(load_config(plan.recipe.train_config, plan.train_args()[1:])).setup()
    monkeypatch.setattr(plan, "train_overrides", [*overrides, "seed=0", "train.steps=4", "train.log_every=2"])
    assert config_changes(plan.run_dir, load_config(plan.recipe.train_config, plan.train_args()[1:]).to_dict()) == []


def test_the_eval_uses_the_sweeps_best_checkpoint(tmp_path):
    plan = make_plan(tmp_path)
    assert mini.chosen_checkpoint(plan) is None
    sweep = mini.sweep_file(plan)
    sweep.parent.mkdir(parents=True)
    sweep.write_text(json.dumps({"best": {"step": 2000, "checkpoint": "runs/x/checkpoints/step_002000"},
                                 "checkpoints": []}))
    assert str(mini.chosen_checkpoint(plan)) == "runs/x/checkpoints/step_002000"
    cmd = mini.eval_command(plan, mini.chosen_checkpoint(plan))
    best = Path.cwd() / "runs/x/checkpoints/step_002000"  # made absolute
    assert f"backend_args:={{checkpoint: {best}, num_threads: 1}}" in cmd and f"checkpoint:={best}" in cmd
    no_sweep = make_plan(tmp_path, sweep_trials=0)
    assert mini.chosen_checkpoint(no_sweep) == mini.final_checkpoint(no_sweep)


def _record(protocol: str, index: int, placed: int, target: int) -> dict:
    return {"trial_id": f"{protocol}-{index:04d}", "protocol": protocol, "index": index, "seed": index,
            "base_seed": 0, "instruction": "Pick the cube and place it on deer.", "emoji_ids": ["a", "b", "c"],
            "target_index": target, "target_emoji_id": "abc"[target], "placed_card": placed,
            "executed": placed >= 0, "recognised": placed == target, "success": placed == target,
            "upstream_success": placed == target, "end_reason": "success" if placed >= 0 else "timeout",
            "steps": 50, "wall_time": 1.0}


def test_report_has_the_table_the_loss_curve_and_the_wall_times(tmp_path):
    plan = make_plan(tmp_path)
    plan.eval_dir.mkdir(parents=True)
    records = [_record(p, i, placed, 0) for p in mini.EVAL_PROTOCOLS for i, placed in enumerate((0, 1, -1, 0))]
    (plan.eval_dir / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    (plan.run_dir / METRICS_FILE).write_text("".join(
        json.dumps({"step": s, "train/loss": 1.0 / s, "train/steps_per_s": 2.0}) + "\n" for s in (25, 50)))
    log = StageLog(plan.run_dir / mini.STAGE_LOG)
    log.start("train")
    log.beat("train", 100.0)  # killed here
    log.start("train")
    log.beat("train", 25.0, finished=True)
    log.skip("train")  # a later skip keeps the measured time
    files = mini.write_report(plan)
    text = files["summary"].read_text()
    assert "| ID | 4 |  75.0% [30-95] |" in text and "| Hard | 4 |" in text  # 3 of 4 executed, Wilson interval
    assert "| train | 0:02:05 (2 attempts) |" in text and "step 50, loss 0.0200" in text
    assert files["loss"].stat().st_size > 0


def test_a_stage_killed_while_it_ran_keeps_its_time_and_the_attempt_that_finishes_it_adds_its_own(tmp_path,
                                                                                                   monkeypatch):
    import subprocess
    import sys

    log = StageLog(tmp_path / "mini_stages.json")
    beats: list[float] = []
    # A real command, its time written down while it runs.
    code = mini.run_command([sys.executable, "-c", "import time; time.sleep(0.6); raise SystemExit(4)"],
                            beats.append, every_s=0.1)
    assert code == 4 and len(beats) >= 3 and beats == sorted(beats) and beats[-1] < 0.7
    # gf-mini killed in the second beat of a stage: what it had written stays.
    log.start("train")
    log.beat("train", 30.0)
    log.beat("train", 60.0)
    assert log.read()["train"]["seconds"] == 60.0 and log.read()["train"]["finished_at"] is None
    log.start("train")  # the same command, later
    log.beat("train", 40.0, finished=True)
    entry = log.read()["train"]
    assert entry["seconds"] == 100.0 and [a["finished"] for a in entry["attempts"]] == [False, True]
    assert len(busy_intervals(entry)) == 2 and entry["finished_at"]
    log.start("train")  # a finished stage run again (new data): new work, a new count
    assert log.read()["train"]["seconds"] == 0.0 and len(log.read()["train"]["attempts"]) == 1
    # Ctrl-C while a command runs: the command is stopped too, not left behind.
    monkeypatch.setattr(mini, "STOP_GRACE_S", 0.5)
    with pytest.raises(KeyboardInterrupt):
        mini.run_command([sys.executable, "-c", "import time; time.sleep(60)"],
                         lambda seconds: (_ for _ in ()).throw(KeyboardInterrupt), every_s=0.1)
    assert subprocess.run(["pgrep", "-f", "time.sleep\\(60\\)"], capture_output=True).returncode == 1
    # The machine's time: intervals side by side count once.
    assert covered_seconds([(0, 10), (5, 20), (30, 40), (32, 35)]) == 30
    assert busy_intervals({"seconds": 60.0, "skipped": False, "finished_at": "2026-12-07T10:01:00"})[0][1] - \
        busy_intervals({"seconds": 60.0, "skipped": False, "finished_at": "2026-12-07T10:01:00"})[0][0] == 60.0


def test_the_comparison_pools_seeds_and_compares_held_out_recognition_with_the_control(tmp_path, capsys):
    def evaluated(run, placements_by_protocol, wall_s=60.0, started_at="2026-12-07T10:00:00"):
        run_dir = tmp_path / "runs" / "mini" / run
        (run_dir / "eval").mkdir(parents=True)
        records = [_record(p, i, placed, 0) for p, placements in placements_by_protocol.items()
                   for i, placed in enumerate(placements)]
        (run_dir / "eval" / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        attempts = [{"started_at": started_at, "seconds": wall_s, "finished": True}]
        (run_dir / "mini_stages.json").write_text(json.dumps({
            "vlm": {"seconds": 5000.0, "skipped": False},
            "train": {"seconds": wall_s, "skipped": False, "finished_at": "-", "attempts": attempts},
            "eval": {"seconds": 0.0, "skipped": True}}))

    # control: Val recognition 10 of 40 over two seeds (5/20 each); vlm-full: 30 of 40 on one seed
    evaluated("scratch_full", {"Val": [0] * 5 + [1] * 15, "Hard": [0] * 10 + [1] * 10})
    evaluated("scratch_full_seed1", {"Val": [0] * 5 + [1] * 15}, wall_s=120.0, started_at="2026-12-07T10:00:30")
    evaluated("vlm_full", {"Val": [0] * 30 + [2] * 10, "Hard": [0] * 10 + [1] * 10}, started_at="2026-12-07T11:00:00")
    evaluated("vlm_full_other", {"Val": [0] * 40})  # not a seed of the row: ignored
    sweep = tmp_path / "runs" / "mini" / "vlm_full" / "sweep" / "sweep.json"
    sweep.parent.mkdir(parents=True)
    rate = {"rate": 0.5, "ci95": [0.3, 0.7]}
    sweep.write_text(json.dumps({"checkpoints": [
        {"step": s, "protocols": {p: {"overall": rate} for p in mini.EVAL_PROTOCOLS}} for s in (2000, 4000)]}))
    probe = tmp_path / "runs" / "mini" / "vlm" / "probe" / "summary.json"
    probe.parent.mkdir(parents=True)
    probe.write_text(json.dumps({"lists": {"Train": {"accuracy_retrieval": 0.41}, "Val": {"accuracy_retrieval": 0.33}},
                                 "scenes": {"Val": {"accuracy": 0.52, "count": 100}}}))
    # the VLM's three stages, each timed once in its own log (a stage's "vlm" stage is the run
    # of the stage before it)
    (probe.parents[1] / "mini_stages.json").write_text(json.dumps({
        "vlm": {"seconds": 5400.0, "skipped": False}, "vl": {"seconds": 0.0, "skipped": True},
        "train": {"seconds": 1500.0, "skipped": False}, "probe": {"seconds": 100.0, "skipped": False}}))
    table = tmp_path / "runs" / "mini" / "vlm_table"
    table.mkdir(parents=True)
    (table / "mini_stages.json").write_text(json.dumps({
        "vlm": {"seconds": 3000.0, "skipped": False}, "vl": {"seconds": 300.0, "skipped": False},
        "train": {"seconds": 2000.0, "skipped": False}, "probe": {"seconds": 100.0, "skipped": False}}))
    names = tmp_path / "runs" / "mini" / "vlm_names"
    names.mkdir(parents=True)
    (names / "mini_stages.json").write_text(json.dumps({"train": {"seconds": 3000.0, "skipped": False},
                                                        "vl": {"seconds": 0.0, "skipped": True}}))

    assert mini.main(["compare", "--root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    out = tmp_path / "runs" / "mini" / "comparison"
    data = json.loads((out / "comparison.json").read_text())
    control, vlm_full = data["rows"]
    assert control["row"] == "scratch-full" and control["seeds"] == [0, 1] and control["wall_s"] == 180.0
    assert control["protocols"]["Val"]["recognition"] == {"successes": 10, "trials": 40}
    assert vlm_full["seeds"] == [0] and vlm_full["protocols"]["Val"]["recognition"] == {"successes": 30, "trials": 40}
    val = data["held_out_vs_control"]["vlm-full"]["Val"]
    assert val["difference"] == pytest.approx(0.5) and 0.25 < val["ci95"][0] < 0.5 < val["ci95"][1] < 0.75
    hard = data["held_out_vs_control"]["vlm-full"]["Hard"]
    assert hard["difference"] == 0 and hard["ci95"][0] < 0 < hard["ci95"][1]  # equal: the interval spans 0
    assert "| scratch-full | 0, 1 |" in text and "25 %, 25 %" in text and "Val 33 %" in text and "Val 52 %" in text
    assert "| vlm-full | +50 pts [" in text and "Not evaluated yet: vlm-lora" in text
    assert (out / "figure2.png").stat().st_size > 0
    # rows: 60 + 120 + 60 s (their VLM stage is the VLM's run); the VLM: 3000 + 2400 + 1600 s
    assert data["compute_s"] == {"vlm-names": 3000.0, "vlm-table": 2400.0, "vlm": 1600.0, "rows": 240.0}
    assert "vlm-names 0:50:00, vlm-table 0:40:00, vlm 0:26:40, rows 0:04:00; total 2:00:40." in text
    # the control's seeds side by side (10:00:00-10:01:00 and 10:00:30-10:02:30), vlm-full later:
    # 150 + 60 s of the machine (the VLM's logs here hold no times of day)
    assert data["busy_s"] == 210.0 and "busy with them for 0:03:30" in text
