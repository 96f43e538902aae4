"""Datasets: chunk windows with end-of-episode padding, normalisation, the decoded-episode cache
(no bag re-parsing), augmentation, collation into the model's batch, resumable sampling."""

from __future__ import annotations

import json
import os
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from gf_policy.vla import (
    NormStats,
    PI0StyleVLA,
    VLAConfig,
    VLAProcessor,
    train_tiny_tokenizer,
)
from gf_training.data import (
    AugmentConfig,
    ChunkDataset,
    MixtureSampler,
    ResumableSampler,
    VLACollator,
    augment_images,
    compute_norm_stats,
    synthetic_episodes,
)
from gf_training.episodes import DecodedEpisode, EpisodeCache, bag_fingerprint, load_demo_episodes, resize_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def ramp_episode(length: int, offset: float = 0.0, size: int = 16) -> DecodedEpisode:
    """actions[t] = offset + t in every dimension, so windows are easy to check."""
    t = np.arange(length, dtype=np.float32)[:, None]
    return DecodedEpisode(
        images=np.repeat(np.arange(length, dtype=np.uint8)[:, None, None, None], size * size * 3).reshape(length, size, size, 3),
        proprio=np.repeat(t * 0.1 + offset, 7, 1),
        actions=np.repeat(t + offset, 7, 1),
        instruction=f"Pick the cube and place it on card {offset:g}",
    )


def test_windows_pad_at_episode_end():
    eps = [ramp_episode(5), ramp_episode(3, offset=100.0)]
    wide = NormStats(q01=np.full(7, -200.0), q99=np.full(7, 200.0))  # no clipping at the 1 %/99 % tails
    ds = ChunkDataset(eps, action_horizon=4, norm_stats={"proprio": wide, "actions": wide})
    assert len(ds) == 8
    stats = ds.norm_stats["actions"]
    # last window of episode 0 (t=4): one real action, three pads repeating it
    s = ds[4]
    assert (s["episode"], s["step"]) == (0, 4)
    assert s["action_is_pad"].tolist() == [False, True, True, True]
    assert np.allclose(stats.unnormalize(s["actions"])[:, 0], [4, 4, 4, 4], atol=1e-3)
    # a full window in the middle of episode 1 never reads into another episode
    s = ds[5]
    assert (s["episode"], s["step"]) == (1, 0)
    assert s["action_is_pad"].tolist() == [False, False, False, True]
    assert np.allclose(stats.unnormalize(s["actions"])[:3, 0], [100, 101, 102], atol=1e-3)
    assert s["image"].shape == (16, 16, 3) and s["image"][0, 0, 0] == 0
    assert s["instruction"] == eps[1].instruction
    assert s["proprio"].dtype == np.float32 and s["actions"].shape == (4, 7)
    with pytest.raises(IndexError):
        ds[8]


def test_steps_after_the_end_can_be_trained_as_holding_still():
    ep = ramp_episode(5)
    ep.actions[-1, 6] = 0.5  # the gripper as last commanded
    wide = NormStats(q01=np.full(7, -200.0), q99=np.full(7, 200.0))
    ds = ChunkDataset([ep], action_horizon=4, norm_stats={"proprio": wide, "actions": wide}, hold_after_end=True)
    s = ds[3]
    assert not s["action_is_pad"].any()  # in the loss
    actions = ds.norm_stats["actions"].unnormalize(s["actions"])
    assert np.allclose(actions[0, :6], 3, atol=1e-3) and np.allclose(actions[1, :6], 4, atol=1e-3)
    assert np.allclose(actions[2:, :6], 0, atol=1e-3) and np.allclose(actions[2:, 6], 0.5, atol=1e-3)
    # The default keeps masking them (pi0's padding).
    masked = ChunkDataset([ep], action_horizon=4, norm_stats={"proprio": wide, "actions": wide})
    assert masked[3]["action_is_pad"].tolist() == [False, False, True, True]


def test_norm_stats_computed_from_all_steps():
    eps = [ramp_episode(50), ramp_episode(50, offset=50.0)]
    stats = compute_norm_stats(eps)
    all_actions = np.concatenate([e.actions for e in eps])
    assert np.allclose(stats["actions"].q01, np.quantile(all_actions, 0.01, axis=0))
    assert np.allclose(stats["actions"].q99, np.quantile(all_actions, 0.99, axis=0))
    ds = ChunkDataset(eps, action_horizon=2)
    normed = np.stack([ds[i]["actions"][0] for i in range(len(ds))])
    assert normed.min() >= -1.0 and normed.max() <= 1.0 and normed.min() < -0.95 and normed.max() > 0.95
    # given statistics are used as they are (e.g. a fine-tune keeping its pre-training stats)
    ds2 = ChunkDataset(eps[:1], action_horizon=2, norm_stats=stats)
    assert ds2.norm_stats is stats


def test_bad_episodes_are_refused():
    ep = ramp_episode(4)
    with pytest.raises(ValueError, match="images"):
        DecodedEpisode(ep.images.astype(np.float32), ep.proprio, ep.actions, "x")
    with pytest.raises(ValueError, match="must be equal"):
        DecodedEpisode(ep.images, ep.proprio[:3], ep.actions, "x")
    bad = ep.actions.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DecodedEpisode(ep.images, ep.proprio, bad, "x")
    with pytest.raises(ValueError):
        ChunkDataset([], action_horizon=4)


def test_resize_matches_the_processor():
    """Cached frames are pre-resized; the processor then sees exactly what it would have computed."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    cfg = VLAConfig.tiny()

    class _Tok:
        bos_token_id, pad_token_id = 2, 0

    proc = VLAProcessor(_Tok(), cfg)
    small = resize_images(frames, cfg.image_size)
    assert small.shape == (2, 32, 32, 3)
    for frame, pre in zip(frames, small):
        assert torch.equal(proc.preprocess_image(frame), proc.preprocess_image(pre))


def test_a_cropped_model_sees_the_same_pixels_from_the_cache_and_from_the_camera(tmp_path):
    """``image_crop``: the processor crops the camera frame before its resize; cached training frames
    are cropped by the same rule, and a crop is part of the cache key (no stale uncropped frames)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    frames[:, 12:48, 20:60] = 0  # the cropped part: [0.25, 0.2, 0.75, 0.8] of an 80 x 60 frame
    cfg = VLAConfig.tiny(image_crop=[0.25, 0.2, 0.75, 0.8])

    class _Tok:
        bos_token_id, pad_token_id = 2, 0

    proc = VLAProcessor(_Tok(), cfg)
    assert torch.equal(proc.preprocess_image(frames[0]), -torch.ones(3, 32, 32))  # only the black part is seen
    small = resize_images(frames, cfg.image_size, cfg.image_crop)
    for frame, pre in zip(frames, small):
        assert torch.equal(proc.preprocess_image(frame), VLAProcessor(_Tok(), VLAConfig.tiny()).preprocess_image(pre))
    whole, cropped = EpisodeCache(tmp_path, 32), EpisodeCache(tmp_path, 32, cfg.image_crop)
    assert whole.key("abc") != cropped.key("abc")
    cropped.put("abc", ramp_episode(4))
    assert whole.get("abc") is None and cropped.get("abc") is not None
    with pytest.raises(ValueError, match="image_crop"):
        VLAConfig.tiny(image_crop=[0.5, 0.2, 0.25, 0.8])


# ------------------------------------------------------------------ demo dirs through gf_teleop.episodes


@dataclass
class FakeEntry:
    episode_id: str
    bag: str
    trial: dict
    success: bool
    length: int
    complete: bool
    outcome: dict
    operator: str


@pytest.fixture
def fake_demo_dir(tmp_path, monkeypatch):
    """A demo directory with placeholder bag files and a stand-in ``gf_teleop.episodes`` module
    (the real reader decodes MCAP; here ``load_episode`` counts its calls)."""
    demo = tmp_path / "demos"
    demo.mkdir()
    entries = []
    for i, (success, complete) in enumerate([(True, True), (True, True), (False, True), (True, False)]):
        bag = demo / f"ep{i}"
        bag.mkdir()
        (bag / f"ep{i}_0.mcap").write_bytes(os.urandom(200_000))  # spans head and tail of the fingerprint
        (bag / "metadata.yaml").write_text(f"episode {i}\n")
        entries.append(FakeEntry(f"ep{i}", f"ep{i}", {"seed": i}, success, 6 + i, complete, {}, "script"))
    calls: list[str] = []

    def load_episode(demo_dir, entry):
        calls.append(entry.episode_id)
        ep = ramp_episode(entry.length, offset=float(entry.trial["seed"]), size=40)
        return types.SimpleNamespace(images=ep.images, proprio=ep.proprio, actions=ep.actions,
                                     instruction=ep.instruction, entry=entry)

    module = types.ModuleType("gf_teleop.episodes")
    module.read_manifest = lambda d: list(entries) if str(d) == str(demo) else []
    module.load_episode = load_episode
    monkeypatch.setitem(sys.modules, "gf_teleop.episodes", module)
    return demo, calls


def test_demo_dirs_decode_once_then_hit_the_cache(fake_demo_dir, tmp_path):
    demo, calls = fake_demo_dir
    cache = tmp_path / "cache"
    episodes, report = load_demo_episodes(demo, image_size=32, cache_dir=cache)
    # failed and incomplete recordings are skipped by default
    assert [e.episode_id for e in episodes] == ["ep0", "ep1"]
    assert report.skipped == {"failed": 1, "incomplete": 1} and report.decoded == 2
    assert episodes[0].images.shape == (6, 32, 32, 3)  # resized to the model input once, at decode time
    assert isinstance(episodes[0].images, np.memmap)  # read back memory-mapped
    assert calls == ["ep0", "ep1"]

    again, report = load_demo_episodes(demo, image_size=32, cache_dir=cache)
    assert calls == ["ep0", "ep1"] and report.cache_hits == 2  # no bag was parsed again
    for a, b in zip(episodes, again):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.actions, b.actions)
        assert a.instruction == b.instruction and a.trial == b.trial

    # another image size is another cache entry; a re-recorded bag invalidates its entry
    load_demo_episodes(demo, image_size=16, cache_dir=cache)
    assert calls[2:] == ["ep0", "ep1"]
    (demo / "ep1" / "ep1_0.mcap").write_bytes(os.urandom(200_000))
    _, report = load_demo_episodes(demo, image_size=32, cache_dir=cache)
    assert calls[4:] == ["ep1"] and report.cache_hits == 1

    everything, report = load_demo_episodes(demo, 32, cache_dir=cache, include_failed=True, include_incomplete=True)
    assert len(everything) == 4 and not report.skipped

    ds = ChunkDataset.from_demo_dirs(demo, action_horizon=4, image_size=32, cache_dir=cache)
    assert len(ds) == 6 + 7


def test_unreadable_bags_are_skipped_with_the_reason(fake_demo_dir, tmp_path):
    demo, _ = fake_demo_dir
    module = sys.modules["gf_teleop.episodes"]
    good = module.load_episode

    def flaky(demo_dir, entry):
        if entry.episode_id == "ep1":
            raise ValueError("ep1: no camera image for step(s) [3] of 7")
        return good(demo_dir, entry)

    module.load_episode = flaky
    episodes, report = load_demo_episodes(demo, image_size=32, cache_dir=tmp_path / "c")
    assert [e.episode_id for e in episodes] == ["ep0"]
    assert report.skipped["unreadable"] == 1 and "no camera image" in str(report)
    module.load_episode = lambda d, e: (_ for _ in ()).throw(ValueError("broken"))
    with pytest.raises(ValueError, match="no readable episodes"):
        load_demo_episodes(demo, image_size=16, cache_dir=tmp_path / "c")


def test_fingerprint_sees_tail_changes(tmp_path):
    bag = tmp_path / "b.mcap"
    data = bytearray(os.urandom(300_000))
    bag.write_bytes(bytes(data))
    first = bag_fingerprint(bag)
    assert bag_fingerprint(bag) == first
    data[-10] ^= 0xFF  # the MCAP footer/summary lives at the end
    bag.write_bytes(bytes(data))
    assert bag_fingerprint(bag) != first
    with pytest.raises(FileNotFoundError):
        bag_fingerprint(tmp_path / "missing")


def test_cache_put_is_atomic_and_shared(tmp_path):
    cache = EpisodeCache(tmp_path, image_size=16)
    ep = ramp_episode(4)
    stored = cache.put("abc", ep)
    assert np.array_equal(stored.actions, ep.actions)
    assert [p.name for p in tmp_path.iterdir()] == [cache.key("abc")]  # no temporary leftovers
    meta = json.loads((cache.path("abc") / "meta.json").read_text())
    assert meta["length"] == 4 and meta["image_size"] == 16
    # a second writer of the same entry (another DDP rank) keeps the first one
    cache.put("abc", ramp_episode(4, offset=1.0))
    assert np.array_equal(cache.get("abc").actions, ep.actions)


# ------------------------------------------------------------------ augmentation and collation


def test_augmentation_is_random_bounded_and_off_by_default():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 3, 32, 32, generator=gen) * 2 - 1
    assert augment_images(x, AugmentConfig()) is x  # disabled
    cfg = AugmentConfig(enabled=True)
    y = augment_images(x, cfg, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(y, x)
    assert torch.equal(y, augment_images(x, cfg, torch.Generator().manual_seed(1)))  # seeded = reproducible
    # every image gets its own draw
    same = torch.stack([x[0]] * 4)
    z = augment_images(same, cfg, torch.Generator().manual_seed(2))
    assert not torch.allclose(z[0], z[1])
    # identity parameters leave the image unchanged (the crop/rotation grid is exact)
    ident = AugmentConfig(enabled=True, crop_scale=1.0, rotate_deg=0, brightness=0, contrast=0, saturation=0)
    assert torch.allclose(augment_images(x, ident), x, atol=1e-5)
    # brightness only: a pure scaling of [0, 1] intensities
    bright = AugmentConfig(enabled=True, crop_scale=1.0, rotate_deg=0, brightness=0.5, contrast=0, saturation=0)
    b = (augment_images(x, bright, torch.Generator().manual_seed(3)) + 1) / 2
    ratio = b / ((x + 1) / 2).clamp_min(1e-6)
    unclipped = b < 0.999
    per_image = [ratio[i][unclipped[i] & ((x[i] + 1) / 2 > 0.05)] for i in range(4)]
    assert all(r.std() < 1e-3 and 0.5 <= r.mean() <= 1.5 for r in per_image)
    with pytest.raises(ValueError):
        AugmentConfig(crop_scale=0.0)


def test_collated_batch_trains_the_model(tmp_path):
    cfg = VLAConfig.tiny(action_horizon=4)
    eps = synthetic_episodes(num_episodes=2, length=6, image_size=cfg.image_size)
    tok = train_tiny_tokenizer([e.instruction for e in eps], 200, tmp_path / "tok")
    ds = ChunkDataset(eps, action_horizon=4)
    collate = VLACollator(VLAProcessor(tok, cfg), AugmentConfig(enabled=True), torch.Generator().manual_seed(0))
    batch = collate([ds[i] for i in (0, 5, 7)])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "proprio", "actions", "action_is_pad"}
    assert batch["pixel_values"].shape == (3, 1, 3, 32, 32)
    assert batch["actions"].shape == (3, 4, 7) and batch["action_is_pad"][1].tolist() == [False, True, True, True]
    torch.manual_seed(0)
    model = PI0StyleVLA.from_config(cfg)
    loss = model.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.action_out_proj.weight.grad.abs().sum() > 0


def test_resumable_sampler_shards_and_resumes():
    full = ResumableSampler(10, seed=3)
    stream = [i for i, _ in zip(full, range(35))]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # reshuffled each epoch
    resumed = ResumableSampler(10, seed=3, start=13)
    assert [i for i, _ in zip(resumed, range(22))] == stream[13:35]
    r0 = [i for i, _ in zip(ResumableSampler(10, seed=3, rank=0, world_size=2), range(5))]
    r1 = [i for i, _ in zip(ResumableSampler(10, seed=3, rank=1, world_size=2), range(5))]
    assert sorted(r0 + r1) == list(range(10))  # ranks split an epoch without overlap


def test_mixture_sampler_draws_each_source_by_its_weight_and_resumes():
    sampler = MixtureSampler([900, 100], [1, 3], seed=5)  # the small source drawn three times as often
    stream = [i for i, _ in zip(sampler, range(4000))]
    small = [i for i in stream if i >= 900]
    assert all(0 <= i < 1000 for i in stream)
    assert 0.70 < len(small) / len(stream) < 0.80
    first_epoch_small = [i for i in stream[:1000] if i >= 900]
    assert len(set(first_epoch_small[:100])) == 100  # all its samples before any repeats
    resumed = MixtureSampler([900, 100], [1, 3], seed=5, start=1234)
    assert [i for i, _ in zip(resumed, range(500))] == stream[1234:1734]
    only_second = MixtureSampler([900, 100], [0, 1], seed=5)
    assert all(i >= 900 for i, _ in zip(only_second, range(300)))
    with pytest.raises(ValueError, match="weight"):
        MixtureSampler([900, 100], [1.0])


def test_synthetic_episodes_follow_their_rule():
    eps = synthetic_episodes(num_episodes=3, length=10, image_size=32, seed=1)
    assert len(eps) == 3 and all(e.images.shape == (10, 32, 32, 3) for e in eps)
    assert eps[0].actions[0, 6] == 1.0 and eps[0].actions[-1, 6] == -1.0  # gripper closes half way
    again = synthetic_episodes(num_episodes=3, length=10, image_size=32, seed=1)
    assert all(np.array_equal(a.actions, b.actions) for a, b in zip(eps, again))


# ------------------------------------------------------------------ real bags (gf_teleop.episodes)


def test_real_bags_through_the_cache_into_training(tmp_path):
    """MCAP bags written by gf_teleop's importer -> decoded once -> identical arrays -> a training run."""
    pytest.importorskip("gf_teleop.importer")
    from gf_eval.trials import make_trial
    from gf_teleop.importer import write_array_episode

    demo = tmp_path / "demos"
    source = synthetic_episodes(num_episodes=3, length=6, image_size=48, seed=2)
    for i, ep in enumerate(source):
        write_array_episode(demo, images=ep.images, proprio=ep.proprio, actions=ep.actions,
                            trial=make_trial("Demo", i), success=i != 2, operator="test", source="test")
    episodes, report = load_demo_episodes(demo, image_size=32, cache_dir=tmp_path / "cache")
    assert report.decoded == 2 and report.skipped == {"failed": 1}
    for ep, src in zip(episodes, source):
        np.testing.assert_array_equal(ep.actions, src.actions)
        np.testing.assert_array_equal(ep.proprio, src.proprio)
        np.testing.assert_array_equal(ep.images, resize_images(src.images, 32))
        assert ep.instruction == ep.trial["instruction"]  # the trial's instruction, from the bag
    _, report = load_demo_episodes(demo, image_size=32, cache_dir=tmp_path / "cache")
    assert report.cache_hits == 2 and report.decoded == 0

    from gf_training.config import load_config
    from gf_training.train import train

    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "data.synthetic=null", f"data.demo_dirs=[{demo}]",
                               f"data.cache_dir={tmp_path / 'cache'}", "train.steps=2", "train.save_steps=[]",
                               "logging.progress=false", "logging.tensorboard=false"])
    result, trainer = train(cfg)
    assert result.step == 2 and len(trainer.dataset) == 12 and all(np.isfinite(result.losses))


def test_a_cropped_model_trains_on_the_pixels_it_sees_at_inference(tmp_path):
    """Demo frames are cropped and resized once, when decoded: the training batch must hold what the
    checkpoint's processor (the vla backend's) makes of the camera frame, not a crop of the crop."""
    pytest.importorskip("gf_teleop.importer")
    from gf_eval.trials import make_trial
    from gf_teleop.importer import write_array_episode
    from gf_training.config import load_config
    from gf_training.train import Trainer

    demo = tmp_path / "demos"
    rng = np.random.default_rng(3)
    source = synthetic_episodes(num_episodes=2, length=5, image_size=48, seed=3)
    frames = {}
    for i, ep in enumerate(source):
        images = rng.integers(0, 256, (len(ep.images), 60, 80, 3), dtype=np.uint8)  # every frame different
        write_array_episode(demo, images=images, proprio=ep.proprio, actions=ep.actions, trial=make_trial("Demo", i),
                            success=True, operator="test", source="test")
        frames.update({(i, t): image for t, image in enumerate(images)})
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "data.synthetic=null", f"data.demo_dirs=[{demo}]",
                               f"data.cache_dir={tmp_path / 'cache'}", "data.augment.enabled=false",
                               "model.config.image_crop=[0.1,0.15,0.85,0.8]", "train.micro_batch_size=4",
                               "train.batch_size=4", "logging.progress=false", "logging.tensorboard=false"])
    trainer = Trainer(cfg).setup()
    seen = {key: trainer.processor.preprocess_image(image) for key, image in frames.items()}  # as at inference
    batch = next(iter(trainer.loader))
    for pixels in batch["pixel_values"][:, 0]:
        assert any(torch.equal(pixels, want) for want in seen.values())
