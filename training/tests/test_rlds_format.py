"""RLDS / TFDS datasets without TensorFlow (gf_training.tfrecord, gf_training.rlds_format).

The handmade datasets are written from the format's description, not with the reader's code:
Examples are serialized by the protobuf library (message classes built at run time from a
FileDescriptorProto of tf.train.Example), the TFRecord framing and its masked CRC are written
here from their definition, and CRC32C itself is checked against published values (the
"123456789" check value and the RFC 3720 test vectors) before anything relies on it.

Image tolerance: PNG frames come back exactly; JPEG frames (quality 95, smooth gradients) within
a mean absolute error of 2 / 255 and a maximum of 16 (measured: about 1.05 mean, 9 max).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

from gf_training import rlds_format as rlds
from gf_training import tfrecord
from gf_training.data_cli import main as gf_data

JPEG_TOLERANCE = (2.0, 16)  # (max mean abs error, max abs error) of 255
NAME = "bridge_dataset"
SHAPE = (16, 20)  # H, W: not square, so that a swap shows
LENGTHS = (5, 7, 4)
SHARDS = (2, 1)  # episodes per shard


# ---------------------------------------------------------------------------------------------
# an independent writer
# ---------------------------------------------------------------------------------------------


def example_class():
    """tf.train.Example (feature.proto / example.proto) as a protobuf message class."""
    f = descriptor_pb2.FileDescriptorProto(name="gf_test/tf_example.proto", package="gftest", syntax="proto3")
    fd = descriptor_pb2.FieldDescriptorProto
    rep, opt = fd.LABEL_REPEATED, fd.LABEL_OPTIONAL
    for name, kind in (("BytesList", fd.TYPE_BYTES), ("FloatList", fd.TYPE_FLOAT), ("Int64List", fd.TYPE_INT64)):
        m = f.message_type.add(name=name)
        m.field.add(name="value", number=1, label=rep, type=kind)
        if kind != fd.TYPE_BYTES:
            m.field[0].options.packed = True
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name in enumerate(("bytes_list", "float_list", "int64_list"), 1):
        type_name = ".gftest." + name.title().replace("_", "")
        feature.field.add(name=name, number=number, label=opt, type=fd.TYPE_MESSAGE, type_name=type_name, oneof_index=0)
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=opt, type=fd.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=fd.TYPE_MESSAGE, type_name=".gftest.Feature")
    features.field.add(name="feature", number=1, label=rep, type=fd.TYPE_MESSAGE, type_name=".gftest.Features.FeatureEntry")
    f.message_type.add(name="Example").field.add(name="features", number=1, label=opt, type=fd.TYPE_MESSAGE,
                                                  type_name=".gftest.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("gftest.Example"))


Example = example_class()


def masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def framed(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked(tfrecord.crc32c(header))) + data
            + struct.pack("<I", masked(tfrecord.crc32c(data))))


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def tensor(shape, dtype="float32"):
    return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": dtype, "encoding": "none"}}


def scalar(dtype):
    return {"pythonClassName": "tensorflow_datasets.core.features.scalar.Scalar",
            "tensor": {"shape": {}, "dtype": dtype, "encoding": "none"}, "description": "a scalar"}


def image(fmt, shape=SHAPE):
    return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {"shape": {"dimensions": [str(shape[0]), str(shape[1]), "3"]}, "dtype": "uint8", "encodingFormat": fmt}}


def fdict(features):
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict", "featuresDict": {"features": features}}


TEXT = {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}


def features_json(state_dim: int = 7, image_shape=SHAPE) -> dict:
    # key order deliberately not the natural one: JSON objects have none
    steps = fdict({
        "reward": scalar("float32"),
        "observation": fdict({"state": tensor([state_dim]), "image_1": image("jpeg", image_shape), "image_0": image("png", image_shape)}),
        "language_instruction": TEXT,
        "is_first": scalar("bool"),
        "action": tensor([7]),
    })
    return fdict({
        "episode_metadata": fdict({"file_path": TEXT, "episode_id": scalar("int32"), "has_image_1": scalar("bool")}),
        "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                  "sequence": {"feature": steps, "length": "-1"}},
    })


def make_episodes(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    out = []
    for e, steps in enumerate(LENGTHS):
        smooth = np.stack([np.stack([xx * 11 + t * 3, yy * 14 + e * 5, 40 + e * 10 + (xx + yy) * 4], -1) for t in range(steps)])
        out.append({
            "png": rng.integers(0, 256, (steps, *SHAPE, 3), dtype=np.uint8),
            "jpeg": smooth.astype(np.uint8),
            "state": rng.normal(0, 0.2, (steps, 7)).astype(np.float32),
            # WidowX-like: deltas in m / rad (some beyond our 0.1 units), gripper in [0, 1]
            "action": np.concatenate([rng.uniform(-0.15, 0.15, (steps, 6)), rng.uniform(0, 1, (steps, 1))], 1).astype(np.float32),
            "instruction": ["put the spoon in the pot", "", "öffne die Schublade 🥄"][e],
            "file_path": f"/raw/bridge/traj{e}",
        })
    return out


def example_bytes(ep: dict, index: int, state_dim: int = 7) -> bytes:
    ex = Example()
    feat = ex.features.feature
    steps = len(ep["action"])
    feat["steps/action"].float_list.value.extend(ep["action"].ravel().tolist())
    feat["steps/observation/state"].float_list.value.extend(ep["state"][:, :state_dim].ravel().tolist())
    feat["steps/observation/image_0"].bytes_list.value.extend(encode(im, "PNG") for im in ep["png"])
    feat["steps/observation/image_1"].bytes_list.value.extend(encode(im, "JPEG") for im in ep["jpeg"])
    feat["steps/language_instruction"].bytes_list.value.extend([ep["instruction"].encode()] * steps)
    feat["steps/is_first"].int64_list.value.extend([1] + [0] * (steps - 1))
    feat["steps/reward"].float_list.value.extend([0.0] * (steps - 1) + [1.0])
    feat["episode_metadata/file_path"].bytes_list.value.append(ep["file_path"].encode())
    feat["episode_metadata/episode_id"].int64_list.value.append(1000 + index)
    feat["episode_metadata/has_image_1"].int64_list.value.append(1)
    return ex.SerializeToString()


def write_rlds(root: Path, episodes: list[dict], *, features: dict | None = None, info_extra: dict | None = None,
               state_dim: int = 7) -> Path:
    root.mkdir(parents=True)
    (root / "features.json").write_text(json.dumps(features or features_json()))
    info = {"name": NAME, "version": "1.0.0", "fileFormat": "tfrecord", "moduleName": "bridge_dataset.bridge_dataset",
            "splits": [{"name": "train", "numBytes": "0", "shardLengths": [str(n) for n in SHARDS],
                        "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}], **(info_extra or {})}
    (root / "dataset_info.json").write_text(json.dumps(info))
    index = 0
    for s, n in enumerate(SHARDS):
        with open(root / f"{NAME}-train.tfrecord-{s:05d}-of-{len(SHARDS):05d}", "wb") as f:
            for _ in range(n):
                f.write(framed(example_bytes(episodes[index], index, state_dim)))
                index += 1
    return root


# ---------------------------------------------------------------------------------------------
# the format's pieces against known values
# ---------------------------------------------------------------------------------------------


def test_crc32c_known_values():
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    # RFC 3720 (iSCSI) B.4 test vectors
    assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA
    assert tfrecord.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfrecord.crc32c(bytes(range(32))) == 0x46DD794E
    assert tfrecord.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert tfrecord.crc32c(b"") == 0 and tfrecord.masked_crc32c(b"") == 0xA282EAD8
    # the vectorised path (long inputs) agrees with the byte loop at lengths around its lanes
    rng = np.random.default_rng(0)
    for n in (tfrecord._VECTOR_MIN, tfrecord._VECTOR_MIN + 1, 3 * tfrecord._LANE * 5 + 7, 100_003):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tfrecord.crc32c(data) == tfrecord._register_py(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def test_hand_built_example_decodes():
    # Example{features{feature{"a": int64 [1, 300, -1]}, {"f": float [1.5, -2.0]}, {"b": bytes ["hi", ""]}}}
    literal = bytes.fromhex(
        "0a3a"                          # Example.features (field 1, 58 bytes)
        "0a16" "0a0161" "1211"          # map entry (22): key "a", value Feature (17)
        "1a0f" "0a0d" "01" "ac02" "ffffffffffffffffff01"  # int64_list (15): packed 1, 300, -1
        "0a11" "0a0166" "120c"          # map entry (17): key "f", value Feature (12)
        "120a" "0a08" "0000c03f" "000000c0"  # float_list (10): packed 1.5, -2.0
        "0a0d" "0a0162" "1208"          # map entry (13): key "b", value Feature (8)
        "0a06" "0a026869" "0a00"        # bytes_list (6): "hi", ""
    )
    assert len(literal) == 60
    assert Example.FromString(literal).features.feature["a"].int64_list.value == [1, 300, -1]  # the literal is right
    feats = tfrecord.parse_example(literal)
    assert sorted(feats) == ["a", "b", "f"]
    kind, ints = tfrecord.feature_values(literal, feats["a"])
    assert kind == "int64" and ints.tolist() == [1, 300, -1]
    kind, floats = tfrecord.feature_values(literal, feats["f"])
    assert kind == "float" and floats.tolist() == [1.5, -2.0]
    assert tfrecord.feature_values(literal, feats["b"]) == ("bytes", [b"hi", b""])
    # unpacked floats (wire type 5) are read too: Example{features{feature{"u": float [1.5]}}}
    unpacked = bytes.fromhex("0a0e" "0a0c" "0a0175" "1207" "1205" "0d0000c03f")
    (span,) = tfrecord.parse_example(unpacked).values()
    assert tfrecord.feature_values(unpacked, span)[1].tolist() == [1.5]
    # what the protobuf library serializes decodes the same
    ex = Example()
    ex.features.feature["x"].int64_list.value.extend([7, -(2**40)])
    ex.features.feature["y"].float_list.value.extend([0.25] * 3)
    data = ex.SerializeToString()
    feats = tfrecord.parse_example(data)
    assert tfrecord.feature_values(data, feats["x"])[1].tolist() == [7, -(2**40)]
    assert tfrecord.feature_values(data, feats["y"])[1].tolist() == [0.25] * 3
    with pytest.raises(ValueError, match="malformed"):
        tfrecord.parse_example(literal[:-3])


def test_tfrecord_framing(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 20]
    path = tmp_path / "r.tfrecord"
    path.write_bytes(b"".join(framed(r) for r in records))
    assert list(tfrecord.read_records(path)) == records
    assert [tfrecord.frame_record(r) for r in records] == [framed(r) for r in records]


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------


def test_round_trip_of_a_handmade_dataset(tmp_path):
    episodes = make_episodes()
    root = write_rlds(tmp_path / NAME / "1.0.0", episodes)
    leaves = rlds.parse_features(json.loads((root / "features.json").read_text()))
    assert leaves["steps/observation/image_0"] == rlds.Leaf("steps/observation/image_0", "image", "uint8", (*SHAPE, 3), "png", True)
    assert leaves["steps/action"].shape == (7,) and leaves["episode_metadata/file_path"].kind == "text"
    back = list(rlds.read_rlds_episodes(root))  # identity mapping; the first camera by name (image_0, PNG)
    assert [b.episode_id for b in back] == [f"{NAME}-train-{i:06d}" for i in range(3)]
    assert [b.extra["rlds_record"] for b in back] == [f"{NAME}-train.tfrecord-00000-of-00002: record {i}" for i in (0, 1)] + [
        f"{NAME}-train.tfrecord-00001-of-00002: record 0"]
    for i, (b, e) in enumerate(zip(back, episodes)):
        np.testing.assert_array_equal(b.actions, e["action"])
        np.testing.assert_array_equal(b.state, e["state"])
        np.testing.assert_array_equal(b.images, e["png"])
        assert b.images.dtype == np.uint8 and b.instruction == e["instruction"] and b.success and b.trial is None
        assert b.extra["rlds_metadata"] == {"episode_metadata/file_path": e["file_path"], "episode_metadata/episode_id": 1000 + i,
                                            "episode_metadata/has_image_1": True}
        assert b.extra["clipped_action_values"] == 0
    # the JPEG camera, named as in LeRobot ports of the dataset
    for b, e in zip(rlds.read_rlds_episodes(root, image_key="observation.images.image_1"), episodes):
        diff = np.abs(b.images.astype(np.int32) - e["jpeg"].astype(np.int32))
        assert b.images.shape == e["jpeg"].shape
        assert diff.mean() < JPEG_TOLERANCE[0] and diff.max() <= JPEG_TOLERANCE[1], (diff.mean(), diff.max())
    # BridgeData's mapping: m / rad -> 0.1 m / 0.1 rad units (clipped), gripper [0, 1] -> [-1, 1]
    for b, e in zip(rlds.read_rlds_episodes(root, "bridge_widowx"), episodes):
        np.testing.assert_allclose(b.actions[:, :6], np.clip(e["action"][:, :6] * 10, -1, 1), rtol=1e-6)
        np.testing.assert_allclose(b.actions[:, 6], e["action"][:, 6] * 2 - 1, rtol=1e-6)
        assert b.extra["clipped_action_values"] == int((np.abs(e["action"][:, :6] * 10) > 1).sum()) > 0


def test_corrupted_records_are_refused(tmp_path):
    root = write_rlds(tmp_path / "ds", make_episodes())
    shard = root / f"{NAME}-train.tfrecord-00000-of-00002"
    data = bytearray(shard.read_bytes())
    first = struct.unpack("<Q", data[:8])[0] + 16
    data[first + 12 + 100] ^= 0x01  # a bit of record 1's data
    shard.write_bytes(bytes(data))
    episodes = rlds.read_rlds_episodes(root)
    next(episodes)  # record 0 is intact
    with pytest.raises(ValueError, match=rf"{shard.name}: record 1: data CRC mismatch"):
        next(episodes)
    data[first + 12 + 100] ^= 0x01
    data[first + 3] ^= 0x40  # record 1's length
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"record 1: length CRC mismatch"):
        list(rlds.read_rlds_episodes(root))
    data[first + 3] ^= 0x40
    shard.write_bytes(bytes(data[: first + 30]))  # truncated in record 1
    with pytest.raises(ValueError, match=r"record 1: length \d+ exceeds the file"):
        list(rlds.read_rlds_episodes(root))


def test_missing_keys_and_unsupported_datasets_are_refused(tmp_path):
    episodes = make_episodes()
    root = write_rlds(tmp_path / "ds", episodes)
    joints = {"name": "joints", "state": {"source": "observation.joint_state", "dims": [{"index": i} for i in range(7)]},
              "action": {"source": "action", "dims": [{"index": i} for i in range(7)]}}
    with pytest.raises(ValueError, match=r"state feature 'observation.joint_state' not in features.json; its step features: action"):
        next(rlds.read_rlds_episodes(root, joints))
    with pytest.raises(ValueError, match=r"image feature 'wrist_image' not in features.json"):
        next(rlds.read_rlds_episodes(root, image_key="wrist_image"))
    with pytest.raises(ValueError, match=r"language_instruction \(text, per step: True\) cannot be the state"):
        next(rlds.read_rlds_episodes(root, {**joints, "state": {**joints["state"], "source": "language_instruction"}}))
    with pytest.raises(FileNotFoundError, match=r"not an RLDS/TFDS dataset version directory; its version directories: ds\)"):
        rlds.RLDSDataset(tmp_path)
    with pytest.raises(ValueError, match=r"no split 'val'; it has \['train'\]"):
        rlds.RLDSDataset(root, "val")
    # array_record shards
    info = json.loads((root / "dataset_info.json").read_text())
    (root / "dataset_info.json").write_text(json.dumps({**info, "fileFormat": "array_record"}))
    with pytest.raises(ValueError, match=r"fileFormat 'array_record' is not supported: only tfrecord"):
        rlds.RLDSDataset(root)
    # a shape mismatch: features.json says 8-D states, the records hold 7 values per step
    bad = write_rlds(tmp_path / "bad_state", episodes, features=features_json(state_dim=8))
    with pytest.raises(ValueError, match=r"record 0: steps/observation/state has 35 values, not a whole number of steps of shape \(8,\)"):
        next(rlds.read_rlds_episodes(bad))
    bad = write_rlds(tmp_path / "bad_image", episodes, features=features_json(image_shape=(20, 16)))
    with pytest.raises(ValueError, match=r"steps/observation/image_0 image 0 is 16x20, features.json says 20x16"):
        next(rlds.read_rlds_episodes(bad))
    # a feature in features.json but not in the record
    bad = write_rlds(tmp_path / "missing", episodes, features=features_json())
    doc = json.loads((bad / "features.json").read_text())
    doc["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]["joint_state"] = tensor([7])
    (bad / "features.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"record 0: no feature 'steps/joint_state' in the episode"):
        next(rlds.read_rlds_episodes(bad, {**joints, "state": {**joints["state"], "source": "joint_state"}}))


def test_gf_data_import_rlds_opens_in_the_demo_tools(tmp_path, capsys):
    from gf_teleop.episodes import load_episode, read_manifest

    episodes = make_episodes()
    root = write_rlds(tmp_path / NAME / "1.0.0", episodes)
    demos = tmp_path / "demos"
    # autodetected (features.json + dataset_info.json)
    assert gf_data(["import", str(root), str(demos), "--mapping", "bridge_widowx", "--no-progress"]) == 0
    assert "imported 3 episodes" in capsys.readouterr().out
    entries = read_manifest(demos)
    assert [e.extra["rlds_episode_index"] for e in entries] == [0, 1, 2] and all(e.complete for e in entries)
    assert {e.extra["source"] for e in entries} == {"rlds-import"} and {e.operator for e in entries} == {"rlds"}
    for entry, e in zip(entries, episodes):
        ep = load_episode(demos, entry)
        np.testing.assert_array_equal(ep.images, e["png"])
        np.testing.assert_array_equal(ep.proprio, e["state"])
        np.testing.assert_allclose(ep.actions[:, 6], e["action"][:, 6] * 2 - 1, rtol=1e-6)
        assert ep.instruction == e["instruction"]
    # resumable: a second import (format named) adds nothing
    assert gf_data(["import", str(root), str(demos), "--format", "rlds", "--mapping", "bridge_widowx", "--no-progress"]) == 0
    assert len(read_manifest(demos)) == 3 and "imported 0 episodes" in capsys.readouterr().out
    assert gf_data(["info", str(root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {"train": {"episodes": 3, "shards": 2}} and info["image_keys"][0] == "steps/observation/image_0"
    assert gf_data(["import", str(tmp_path), str(tmp_path / "d2")]) == 2  # neither format
    stats = subprocess.run([str(Path(sys.executable).parent / "gf-demos"), "stats", str(demos)], capture_output=True,
                           text=True, timeout=300)
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert "3" in stats.stdout and "episodes" in stats.stdout


def test_training_loader_reads_rlds_directories(tmp_path):
    from gf_training.lerobot_format import load_lerobot_episodes

    root = write_rlds(tmp_path / "ds", make_episodes())
    decoded = load_lerobot_episodes([root], "bridge_widowx", image_size=8)
    assert [len(d.actions) for d in decoded] == list(LENGTHS)
    assert decoded[0].images.shape == (LENGTHS[0], 8, 8, 3) and decoded[2].instruction == "öffne die Schublade 🥄"
