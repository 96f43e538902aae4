"""`gf-demos stats DIR`: what a demo directory holds, as text, JSON and two pictures.

Episodes, complete / successful counts, lengths, emoji coverage (cards and targets against the
split's lists), action ranges per dimension, a PNG of the end-effector trajectories (top view
and height over time, coloured by outcome) and a contact sheet of every episode's first frame.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gf_eval.action_space import EE_DELTA_POSE
from gf_teleop import episodes as ep


@dataclass
class DemoStats:
    episodes: int = 0
    complete: int = 0
    successful: int = 0
    lengths: list[int] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    operators: dict[str, int] = field(default_factory=dict)
    card_emojis: dict[str, int] = field(default_factory=dict)
    target_emojis: dict[str, int] = field(default_factory=dict)
    split_coverage: dict[str, str] = field(default_factory=dict)
    action_min: list[float] = field(default_factory=list)
    action_max: list[float] = field(default_factory=list)
    action_mean: list[float] = field(default_factory=list)
    action_std: list[float] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successful / self.complete if self.complete else float("nan")

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["success_rate"] = self.success_rate
        return d


def first_image(bag: Path) -> np.ndarray | None:
    """The first camera frame of a bag (stops reading there)."""
    from gf_bringup.images import msg_to_image

    for _, _, msg in ep.read_messages(bag, (ep.IMAGE,)):
        return msg_to_image(msg)
    return None


def collect(demo_dir: Path, progress: bool = True, with_images: bool = True):
    """Statistics plus per-episode trajectories (proprio) and first frames."""
    from tqdm import tqdm

    entries = ep.recorded_entries(demo_dir)
    stats = DemoStats(episodes=len(entries))
    trajectories, frames = [], []
    actions = []
    for entry in tqdm(entries, desc="reading", unit="ep", disable=not progress, file=sys.stderr):
        stats.complete += entry.complete
        stats.successful += entry.complete and entry.success
        reason = str(entry.outcome.get("reason", "?"))
        stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        stats.operators[entry.operator or "?"] = stats.operators.get(entry.operator or "?", 0) + 1
        if entry.complete:
            stats.lengths.append(entry.length)
        if entry.trial:
            for card in entry.trial["cards"]:
                stats.card_emojis[card["emoji_id"]] = stats.card_emojis.get(card["emoji_id"], 0) + 1
            target = entry.trial["cards"][int(entry.trial["target_index"])]["emoji_id"]
            stats.target_emojis[target] = stats.target_emojis.get(target, 0) + 1
        try:
            episode = ep.load_episode(demo_dir, entry, images=False)
        except (ep.EpisodeError, OSError, ValueError) as exc:
            if entry.complete:  # an interrupted recording may well lack its first steps
                stats.unreadable.append(f"{entry.episode_id}: {exc}")
            continue
        actions.append(episode.actions)
        trajectories.append((entry, episode.proprio))
        if with_images:
            frames.append((entry, first_image(Path(demo_dir) / entry.bag)))
    if actions:
        a = np.concatenate(actions)
        stats.action_min = [round(float(v), 4) for v in a.min(0)]
        stats.action_max = [round(float(v), 4) for v in a.max(0)]
        stats.action_mean = [round(float(v), 4) for v in a.mean(0)]
        stats.action_std = [round(float(v), 4) for v in a.std(0)]
    stats.split_coverage = _coverage(entries, stats)
    return stats, trajectories, frames


def _coverage(entries: list[ep.EpisodeEntry], stats: DemoStats) -> dict[str, str]:
    """How many emojis of each list of the split the cards used."""
    from gf_eval.splits import load_splits

    names = {e.trial.get("split_name") for e in entries if e.trial}
    out = {}
    for name in sorted(n for n in names if n):
        try:
            splits = load_splits(name)
        except FileNotFoundError:
            continue
        for split, items in splits.splits.items():
            ids = {i.id for i in items}
            used = len(ids & set(stats.card_emojis))
            targets = len(ids & set(stats.target_emojis))
            if used:
                out[f"{name}/{split}"] = f"{used}/{len(ids)} emojis on cards, {targets}/{len(ids)} as targets"
    return out


def plot_trajectories(trajectories, path: Path) -> None:
    """Top view (x, y) and height over time of every episode's end effector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, height) = plt.subplots(1, 2, figsize=(12, 5))
    for entry, proprio in trajectories:
        color = "tab:green" if entry.success else ("tab:red" if entry.complete else "tab:gray")
        top.plot(proprio[:, 0], proprio[:, 1], color=color, alpha=0.35, lw=0.8)
        top.plot(proprio[0, 0], proprio[0, 1], "o", color=color, ms=2)
        height.plot(np.arange(len(proprio)), proprio[:, 2], color=color, alpha=0.35, lw=0.8)
    top.set(title="end effector, top view (robot base frame)", xlabel="x (m)", ylabel="y (m)")
    top.set_aspect("equal", adjustable="datalim")
    height.set(title="end effector height", xlabel="control step", ylabel="z (m)")
    from matplotlib.lines import Line2D

    top.legend(handles=[Line2D([], [], color=c, label=name) for c, name in
                        (("tab:green", "success"), ("tab:red", "failure"), ("tab:gray", "incomplete"))], loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(frames, path: Path, columns: int = 10, thumb: int = 128, limit: int = 60) -> None:
    """First frames in a grid, labelled with the episode id and outcome: every failed or
    incomplete episode first, then successful ones spread evenly over the rest, ``limit`` in all
    (a sheet of 500 thumbnails is too tall to look at)."""
    from PIL import Image, ImageDraw

    frames = sorted(((e, f) for e, f in frames if f is not None), key=lambda ef: ef[0].episode_id)
    if not frames:
        return
    problems = [ef for ef in frames if not ef[0].success]
    good = [ef for ef in frames if ef[0].success]
    room = max(0, limit - len(problems))
    if len(good) > room:
        good = [good[int(i * len(good) / room)] for i in range(room)] if room else []
    frames = (problems + good)[:limit]
    columns = min(columns, len(frames))
    rows = (len(frames) + columns - 1) // columns
    label_h = 14
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (entry, frame) in enumerate(frames):
        x, y = (k % columns) * thumb, (k // columns) * (thumb + label_h)
        sheet.paste(Image.fromarray(frame).resize((thumb, thumb)), (x, y))
        mark = "ok" if entry.success else ("fail" if entry.complete else "inc")
        draw.text((x + 2, y + thumb), f"{entry.episode_id[-12:]} {mark}", fill=(0, 0, 0))
    sheet.save(path)


def format_stats(stats: DemoStats) -> str:
    lengths = np.asarray(stats.lengths) if stats.lengths else np.zeros(1)
    lines = [
        f"episodes      {stats.episodes} ({stats.complete} complete, {stats.episodes - stats.complete} incomplete)",
        f"success       {stats.successful}/{stats.complete} complete episodes"
        + (f" ({100 * stats.success_rate:.1f}%)" if stats.complete else ""),
        f"lengths       min {lengths.min()}  mean {lengths.mean():.1f}  median {np.median(lengths):.0f}  max {lengths.max()} steps",
        "end reasons   " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.reasons.items())),
        "operators     " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.operators.items())),
        f"emojis        {len(stats.card_emojis)} distinct on cards, {len(stats.target_emojis)} distinct targets",
    ]
    lines += [f"  {k}: {v}" for k, v in stats.split_coverage.items()]
    if stats.action_min:
        lines.append("actions       " + "  ".join(f"{n:>7s}" for n in EE_DELTA_POSE.names))
        for label, values in (("min", stats.action_min), ("max", stats.action_max), ("mean", stats.action_mean),
                              ("std", stats.action_std)):
            lines.append(f"  {label:<11s} " + "  ".join(f"{v:7.3f}" for v in values))
    if stats.unreadable:
        lines.append(f"unreadable    {len(stats.unreadable)}: " + "; ".join(stats.unreadable[:3]))
    return "\n".join(lines)


def run_stats(demo_dir: Path, out: Path | None = None, progress: bool = True, images: bool = True) -> DemoStats:
    """Compute, print and write the statistics of a demo directory (``out`` = DIR/stats)."""
    demo_dir = Path(demo_dir)
    out = Path(out) if out else demo_dir / "stats"
    out.mkdir(parents=True, exist_ok=True)
    stats, trajectories, frames = collect(demo_dir, progress=progress, with_images=images)
    (out / "stats.json").write_text(json.dumps(stats.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if trajectories:
        plot_trajectories(trajectories, out / "trajectories.png")
    if frames:
        contact_sheet(frames, out / "first_frames.png")
    print(format_stats(stats))
    print(f"written: {out / 'stats.json'}, {out / 'trajectories.png'}, {out / 'first_frames.png'}")
    return stats

