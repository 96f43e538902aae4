"""Robot data in and out (issue 16): LeRobotDataset v3.0 export checked with independent parquet
and mp4 readers, reading back (v3.0, and a handmade v2.1 BridgeData-style set), embodiment
mappings, import into bags + manifest, pre-training on a LeRobot dataset, and (slow) the round
trip of simulator demos: demos -> LeRobot -> demos with identical actions/states.

Codec tolerance: frames come back through a lossy video codec (yuv420p: colour at half
resolution). Measured on 224 px simulator frames: mean absolute error 3.9 / 255 per pixel channel
and PSNR 32.5 dB (AV1, crf 30), 3.7 and 32.9 dB (h264, crf 18); the tolerance is
``SIM_TOLERANCE`` (mean abs error, minimum PSNR). The generated 32 px cards lose more (6.5 and
24.8 dB with AV1: their 3-pixel features are as small as the colour subsampling), hence
``TINY_TOLERANCE``. Single pixels at sharp edges may differ much more, so the mean and the PSNR
are what is checked.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gf_training import lerobot_format as lr
from gf_training.config import load_config
from gf_training.data import synthetic_episodes
from gf_training.data_cli import main as gf_data
from gf_training.embodiments import bridge_widowx_mapping, load_mapping
from gf_training.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

SIM_TOLERANCE = (5.0, 30.0)  # (max mean abs error of 255, min PSNR in dB)
TINY_TOLERANCE = (8.0, 23.0)
FPS = 20


def robot_episodes(n: int = 3, length: int = 10, size: int = 32) -> list[lr.RobotEpisode]:
    eps = synthetic_episodes(num_episodes=n, length=length, image_size=size, seed=3)
    return [lr.RobotEpisode(e.images, e.proprio, e.actions, e.instruction, e.episode_id, success=i != 1,
                            trial={"protocol": "Demo", "index": i}) for i, e in enumerate(eps)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def assert_frames_close(got: np.ndarray, want: np.ndarray, tolerance: tuple[float, float] = TINY_TOLERANCE) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    mean_abs = np.abs(got.astype(np.int32) - want.astype(np.int32)).mean()
    assert mean_abs < tolerance[0], mean_abs
    assert psnr(got, want) > tolerance[1]


@pytest.mark.parametrize("codec", ["libsvtav1", "h264"])
def test_export_layout_read_with_independent_readers(tmp_path, codec):
    episodes = robot_episodes()
    info = lr.write_lerobot(episodes, tmp_path / "ds", fps=FPS, codec=codec)
    root = tmp_path / "ds"
    on_disk = json.loads((root / "meta/info.json").read_text())
    assert on_disk == info and info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"]) == (3, 30)
    assert info["features"]["observation.state"]["names"][-1] == "gripper_opening"
    assert info["features"]["action"]["names"] == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    video_info = info["features"][lr.IMAGE_KEY]
    assert video_info["dtype"] == "video" and video_info["shape"] == [32, 32, 3]

    # data rows: the paths come from info.json's templates, read with pyarrow alone
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0)).to_pylist()
    assert [r["index"] for r in data] == list(range(30))
    tasks = pq.read_table(root / "meta/tasks.parquet")
    task_of = dict(zip(tasks["task_index"].to_pylist(), tasks["task"].to_pylist()))
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas: tasks indexed by text
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == [0, 1, 2]
    for e, ep in zip(eps, episodes):
        rows = data[e["dataset_from_index"] : e["dataset_to_index"]]
        assert len(rows) == e["length"] == ep.length
        np.testing.assert_array_equal(np.array([r["action"] for r in rows], np.float32), ep.actions)
        np.testing.assert_array_equal(np.array([r["observation.state"] for r in rows], np.float32), ep.state)
        assert {r["episode_index"] for r in rows} == {e["episode_index"]}
        assert [r["frame_index"] for r in rows] == list(range(ep.length))
        assert task_of[rows[0]["task_index"]] == ep.instruction == e["tasks"][0]
        assert e[f"videos/{lr.IMAGE_KEY}/to_timestamp"] - e[f"videos/{lr.IMAGE_KEY}/from_timestamp"] == pytest.approx(ep.length / FPS)
        assert e["stats/action/mean"] == pytest.approx(ep.actions.mean(0).tolist(), abs=1e-6)
    assert [e["gf/success"] for e in eps] == [True, False, True]

    # video: decoded with PyAV directly, frame k of the file is global row k
    path = root / info["video_path"].format(video_key=lr.IMAGE_KEY, chunk_index=0, file_index=0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("libdav1d", "av1", "libaom-av1", "h264")
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 30
    assert_frames_close(np.stack(frames), np.concatenate([e.images for e in episodes]))

    stats = json.loads((root / "meta/stats.json").read_text())
    all_actions = np.concatenate([e.actions for e in episodes])
    assert stats["action"]["mean"] == pytest.approx(all_actions.mean(0).tolist(), abs=1e-6)
    assert stats["action"]["q99"] == pytest.approx(np.quantile(all_actions, 0.99, axis=0).tolist(), abs=1e-6)
    assert np.array(stats[lr.IMAGE_KEY]["mean"]).shape == (3, 1, 1)
    with pytest.raises(FileExistsError):
        lr.write_lerobot(episodes, root, fps=FPS)


def test_read_back_restores_arrays_and_metadata(tmp_path):
    episodes = robot_episodes(n=4, length=9)
    lr.write_lerobot(episodes, tmp_path / "ds", fps=FPS)
    back = list(lr.read_robot_episodes(tmp_path / "ds"))
    assert [b.episode_id for b in back] == [e.episode_id for e in episodes]
    for b, e in zip(back, episodes):
        np.testing.assert_array_equal(b.actions, e.actions)
        np.testing.assert_array_equal(b.state, e.state)
        assert (b.instruction, b.success, b.trial) == (e.instruction, e.success, e.trial)
        assert_frames_close(b.images, e.images)


def write_bridge_v21(root, n_episodes: int = 2, length: int = 6, size: int = 16):
    """A handmade BridgeData-style LeRobot v2.1 dataset: one parquet per episode, PNG frames in the
    table (dtype ``image``), WidowX actions in metres/radians with the gripper in [0, 1]."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    (root / "meta").mkdir(parents=True)
    features = {
        "observation.images.image_0": {"dtype": "image", "shape": [size, size, 3], "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": [7], "names": None},
        "action": {"dtype": "float32", "shape": [7], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("frame_index", "episode_index", "index", "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    }
    info = {"codebase_version": "v2.1", "robot_type": "widowx", "fps": 5, "chunks_size": 1000, "features": features,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet", "video_path": None,
            "total_episodes": n_episodes}
    (root / "meta/info.json").write_text(json.dumps(info))
    tasks = ["put the spoon in the pot", "open the drawer"]
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    (root / "meta/episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [tasks[e % 2]], "length": length}) + "\n" for e in range(n_episodes)))
    raw = []
    for e in range(n_episodes):
        images = rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8)
        state = rng.normal(0, 0.1, (length, 7)).astype(np.float32)
        state[:, 6] = rng.uniform(0, 1, length)
        action = np.concatenate([rng.normal(0, 0.01, (length, 3)), rng.normal(0, 0.05, (length, 3)),
                                 rng.integers(0, 2, (length, 1))], 1).astype(np.float32)
        pngs = []
        for im in images:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": None})
        table = pa.table({
            "observation.images.image_0": pngs,
            "observation.state": pa.array(list(state), pa.list_(pa.float32(), 7)),
            "action": pa.array(list(action), pa.list_(pa.float32(), 7)),
            "timestamp": pa.array(np.arange(length) / 5, pa.float32()),
            "frame_index": np.arange(length), "episode_index": np.full(length, e), "index": np.arange(length) + e * length,
            "task_index": np.full(length, e % 2),
        })
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        raw.append((images, state, action, tasks[e % 2]))
    return raw


def test_bridge_v21_dataset_maps_onto_our_embodiment(tmp_path):
    raw = write_bridge_v21(tmp_path / "bridge")
    back = list(lr.read_robot_episodes(tmp_path / "bridge", "bridge_widowx"))
    assert len(back) == 2 and sum(b.extra["clipped_action_values"] for b in back) > 0
    for b, (images, state, action, task) in zip(back, raw):
        np.testing.assert_array_equal(b.images, images)  # PNG frames: lossless
        np.testing.assert_allclose(b.actions[:, :3], action[:, :3] * 10, rtol=1e-6)  # m -> 0.1 m units
        # rad -> 0.1 rad units, clipped to our action space (0.05 rad std: some steps exceed 0.1 rad)
        np.testing.assert_allclose(b.actions[:, 3:6], np.clip(action[:, 3:6] * 10, -1, 1), rtol=1e-6)
        assert b.extra["clipped_action_values"] == int((np.abs(action[:, 3:6] * 10) > 1).sum())
        np.testing.assert_array_equal(b.actions[:, 6], action[:, 6] * 2 - 1)  # [0, 1] open -> [-1, 1] open
        np.testing.assert_array_equal(b.state, state)
        assert b.instruction == task
    assert load_mapping("bridge_widowx") == bridge_widowx_mapping()


def test_mapping_file_declares_another_embodiment(tmp_path):
    write_bridge_v21(tmp_path / "bridge", n_episodes=1)
    mapping = tmp_path / "xyz_only.yaml"
    # a robot without orientation control: position deltas in cm, gripper 1 = closed
    mapping.write_text(
        "name: xyz_only\nimage_key: observation.images.image_0\n"
        "state: {source: observation.state, dims: [{index: 0}, {index: 1}, {index: 2}, {value: 0}, {value: 0}, {value: 0}, {index: 6}]}\n"
        "action: {source: action, dims: [{index: 0, scale: 0.1}, {index: 1, scale: 0.1}, {index: 2, scale: 0.1},"
        " {value: 0}, {value: 0}, {value: 0}, {index: 6, scale: -2, offset: 1}]}\n")
    (ep,) = lr.read_robot_episodes(tmp_path / "bridge", mapping)
    raw = pq.read_table(tmp_path / "bridge/data/chunk-000/episode_000000.parquet")
    action = np.array(raw["action"].to_pylist(), np.float32)
    np.testing.assert_allclose(ep.actions[:, :3], action[:, :3] * 0.1, rtol=1e-6)
    assert (ep.actions[:, 3:6] == 0).all() and (ep.state[:, 3:6] == 0).all()
    np.testing.assert_array_equal(ep.actions[:, 6], 1 - 2 * action[:, 6])
    bad = tmp_path / "bad.yaml"
    bad.write_text("state: {source: observation.state, dims: [{index: 0}]}\naction: {source: action, dims: []}\n")
    with pytest.raises(ValueError, match="needs 7 dims"):
        load_mapping(bad)


def test_gf_data_import_writes_bags_the_demo_tools_read(tmp_path, capsys):
    from gf_teleop.episodes import load_episode, read_manifest

    raw = write_bridge_v21(tmp_path / "bridge")
    assert gf_data(["import", str(tmp_path / "bridge"), str(tmp_path / "demos"), "--mapping", "bridge_widowx",
                    "--no-progress"]) == 0
    assert "imported 2 episodes" in capsys.readouterr().out
    entries = read_manifest(tmp_path / "demos")
    assert [e.extra["lerobot_episode_index"] for e in entries] == [0, 1] and all(e.complete for e in entries)
    for entry, (images, state, action, task) in zip(entries, raw):
        ep = load_episode(tmp_path / "demos", entry)
        np.testing.assert_array_equal(ep.images, images)
        np.testing.assert_array_equal(ep.proprio, state)
        np.testing.assert_allclose(ep.actions[:, 6], action[:, 6] * 2 - 1)
        np.testing.assert_allclose(ep.actions[:, 3:6], np.clip(action[:, 3:6] * 10, -1, 1), rtol=1e-6)
        assert ep.instruction == task
    # resumable: a second import adds nothing
    assert gf_data(["import", str(tmp_path / "bridge"), str(tmp_path / "demos"), "--mapping", "bridge_widowx",
                    "--no-progress"]) == 0
    assert len(read_manifest(tmp_path / "demos")) == 2
    assert gf_data(["import", str(tmp_path / "nowhere"), str(tmp_path / "d2")]) == 2


def test_imported_robot_data_opens_in_the_demo_tools(tmp_path):
    """gf-demos stats and gf-replay play read an imported dataset like our own demos."""
    import subprocess
    import sys
    from pathlib import Path

    from gf_teleop.episodes import read_manifest

    write_bridge_v21(tmp_path / "bridge")
    assert gf_data(["import", str(tmp_path / "bridge"), str(tmp_path / "demos"), "--mapping", "bridge_widowx",
                    "--no-progress"]) == 0
    bin_dir = Path(sys.executable).parent
    stats = subprocess.run([str(bin_dir / "gf-demos"), "stats", str(tmp_path / "demos")], capture_output=True, text=True, timeout=300)
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert "2" in stats.stdout and "episodes" in stats.stdout
    bag = tmp_path / "demos" / read_manifest(tmp_path / "demos")[0].bag
    play = subprocess.run([str(bin_dir / "gf-replay"), "play", str(bag), "--rate", "10"], capture_output=True, text=True, timeout=300)
    assert play.returncode == 0, play.stderr[-2000:]


def test_pretraining_reads_a_lerobot_dataset(tmp_path):
    write_bridge_v21(tmp_path / "bridge", n_episodes=3, length=8)
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "logging.progress=false", "logging.tensorboard=false",
                               "data.synthetic=null", f"data.lerobot_dirs=[{tmp_path / 'bridge'}]",
                               "data.lerobot_mapping=bridge_widowx", "data.normalization=mean_std",
                               "train.steps=4", "train.save_steps=[4]", "train.batch_size=4", "train.micro_batch_size=4"])
    result, _ = train(cfg)
    assert len(result.losses) == 4 and np.isfinite(result.losses).all()
    stats = json.loads((tmp_path / "run" / "norm_stats.json").read_text())
    assert set(stats["actions"]) == {"mean", "std"}
    # the statistics are those of the mapped actions (gripper -1/1), not of the raw ones (0/1)
    assert -1.0 < stats["actions"]["mean"][6] < 1.0 and stats["actions"]["std"][6] > 0.4
    assert result.checkpoints and (result.checkpoints[-1] / "model.safetensors").exists()


def test_shipped_lerobot_pretraining_config():
    cfg = load_config("pretrain_lerobot", ["data.lerobot_dirs=[/data/bridge]"])
    assert cfg.data.lerobot_dirs == ["/data/bridge"] and cfg.data.lerobot_mapping == "bridge_widowx"
    assert cfg.model.init == "paligemma" and cfg.data.normalization == "quantile"
    with pytest.raises(ValueError, match="data.normalization"):
        load_config("tiny", ["data.normalization=minmax"])


@pytest.mark.slow
def test_simulator_demos_round_trip_through_lerobot(tmp_path):
    """Generated demos -> LeRobotDataset -> demos: identical actions, states, instructions and
    trials; frames within the codec tolerance."""
    from gf_teleop.episodes import load_episode, read_manifest

    demos = tmp_path / "demos"
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bin_dir, "gf-demos"), "generate", "--split", "train", "--episodes", "4",
                    "--out", str(demos), "--no-progress"], check=True, timeout=900)
    assert gf_data(["export", str(demos), str(tmp_path / "lerobot"), "--format", "lerobot", "--no-progress"]) == 0
    assert gf_data(["import", str(tmp_path / "lerobot"), str(tmp_path / "back"), "--no-progress"]) == 0
    original = {e.episode_id: load_episode(demos, e) for e in read_manifest(demos) if e.success and e.complete}  # what export takes
    restored = {e.episode_id: load_episode(tmp_path / "back", e) for e in read_manifest(tmp_path / "back")}
    assert sorted(original) == sorted(restored) and len(original) >= 3
    for key, a in original.items():
        b = restored[key]
        np.testing.assert_array_equal(b.actions, a.actions)
        np.testing.assert_array_equal(b.proprio, a.proprio)
        assert b.instruction == a.instruction and b.trial == a.trial
        assert_frames_close(b.images, a.images, SIM_TOLERANCE)
