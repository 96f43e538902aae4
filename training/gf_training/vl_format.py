"""The on-disk format of a VL directory written by ``gf-vl-data`` and reading it back:
``info.json``, ``manifest.jsonl`` (one ``VLRecord`` a line) and ``images/``; ``read_vl_dir``,
``VLDataset`` (the samples of one or more directories) and ``VLCollator`` (samples -> the batch
``PI0StyleVLA.compute_lm_loss`` takes).

Separate from the generators, which write it, and from training, which only reads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gf_bringup.images import fit_image

VL_FORMAT = "gf-vl-v1"
MANIFEST = "manifest.jsonl"
INFO = "info.json"
IMAGES = "images"
CAMERA_VIEWS = ("tabletop", "which", "cube")  # generators whose images are the policy camera's view
PER_EMOJI = ("glyphs", "cards", "tablecards")  # generators whose every image shows one emoji
NO_EMOJI = -1  # the emoji label of a sample whose image shows no single emoji
EMOJI_LABEL = "vl_emoji"  # batch key of the emoji labels (VLCollator; gf_training.name_probe reads it)


@dataclass
class VLRecord:
    """One sample of a VL directory."""

    id: str
    image: str
    question: str
    answer: str
    emoji_ids: list[str]
    meta: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(vars(self), ensure_ascii=False, sort_keys=True)


def _existing(out: Path) -> dict[str, VLRecord]:
    path = out / MANIFEST
    if not path.exists():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if (out / row["image"]).exists():
                records[row["id"]] = VLRecord(**row)
    return records


def _settings(info: dict[str, Any]) -> dict[str, Any]:
    """What decides a generation's samples: all of ``info`` but its size."""
    params = {k: v for k, v in info["params"].items() if k != "scenes"}
    return {**{k: v for k, v in info.items() if k != "count"}, "params": params}


def _prepare(out: Path, info: dict[str, Any]) -> dict[str, VLRecord]:
    """Create ``out`` or check it holds the same generation (then its samples are kept). A scene
    generation may change its size: sample ``i`` depends only on the settings and ``i``, so the
    samples made are kept (the caller drops those beyond a smaller size)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / IMAGES).mkdir(exist_ok=True)
    info_path = out / INFO
    if info_path.exists():
        old = json.loads(info_path.read_text(encoding="utf-8"))
        if _settings(old) != _settings(info):
            raise ValueError(f"{out} holds data generated with other settings ({info_path}); use another --out")
    info_path.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return _existing(out)


def _write(out: Path, records: dict[str, VLRecord], info: dict[str, Any]) -> None:
    ordered = [records[k] for k in sorted(records)]
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text("".join(r.to_json() + "\n" for r in ordered), encoding="utf-8")
    tmp.replace(out / MANIFEST)
    info["count"] = len(ordered)
    (out / INFO).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_png(image: Image.Image | np.ndarray, path: Path) -> None:
    from gf_eval.catalog import png_bytes

    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png_bytes(img))
    tmp.replace(path)


def read_vl_dir(directory: str | Path) -> tuple[dict[str, Any], list[VLRecord]]:
    """``(info, records)`` of a directory written by ``gf-vl-data``."""
    directory = Path(directory)
    if not (directory / INFO).exists() or not (directory / MANIFEST).exists():
        raise FileNotFoundError(f"{directory} is not a gf-vl-data directory (needs {INFO} and {MANIFEST})")
    info = json.loads((directory / INFO).read_text(encoding="utf-8"))
    if info.get("format") != VL_FORMAT:
        raise ValueError(f"{directory}: format {info.get('format')!r}, expected {VL_FORMAT}")
    records = [VLRecord(**json.loads(line)) for line in (directory / MANIFEST).read_text(encoding="utf-8").splitlines()
               if line.strip()]
    return info, records


class VLDataset(Dataset):
    """The samples of one or more VL directories: ``image`` (S, S, 3) uint8, ``question``,
    ``answer`` and ``emoji``: the index in ``named_emojis`` of the one emoji a per-emoji image
    shows (``NO_EMOJI`` for a scene), the label of ``gf_training.name_probe``.

    ``image_crop`` (the model's crop of the camera frame) applies to camera views only (scenes
    rendered by the simulator); a glyph or a card is seen whole."""

    def __init__(self, directories: Sequence[str | Path], image_size: int | None = None,
                 image_crop: Sequence[float] | None = None):
        self.items: list[tuple[Path, VLRecord]] = []
        self._camera_view: dict[Path, bool] = {}
        self._source_sizes: list[int] = []
        per_emoji: dict[Path, bool] = {}
        for d in directories:
            info, records = read_vl_dir(d)
            self._camera_view[Path(d)] = info.get("generator") in CAMERA_VIEWS
            per_emoji[Path(d)] = info.get("generator") in PER_EMOJI
            self.items.extend((Path(d), r) for r in records)
            self._source_sizes.append(len(records))
        if not self.items:
            raise ValueError(f"no vision-language samples in {', '.join(map(str, directories))}")
        # Sorted: the same directories give the same labels in every run and after a resume.
        self.named_emojis = sorted({r.emoji_ids[0] for d, r in self.items if per_emoji[d]})
        index = {e: i for i, e in enumerate(self.named_emojis)}
        self._labels = [index[r.emoji_ids[0]] if per_emoji[d] else NO_EMOJI for d, r in self.items]
        self.image_size = image_size
        self.image_crop = image_crop

    def __len__(self) -> int:
        return len(self.items)

    def source_sizes(self) -> list[int]:
        """Samples per directory, in the order given (their items are concatenated in that order)."""
        return list(self._source_sizes)

    def texts(self) -> list[str]:
        """Every question and answer (to train an offline tokenizer on)."""
        return [t for _, r in self.items for t in (r.question, r.answer)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        directory, record = self.items[index]
        image = np.asarray(Image.open(directory / record.image).convert("RGB"))
        image = fit_image(image, self.image_size, self.image_crop if self._camera_view[directory] else None)
        return {"image": image, "question": record.question, "answer": record.answer, "emoji": self._labels[index]}


class VLCollator:
    """VL samples -> ``vl_pixel_values``, ``vl_input_ids``, ``vl_attention_mask``, ``vl_target_mask``
    and ``EMOJI_LABEL`` (each sample's emoji label, ``VLDataset``).

    Sequence: ``[image tokens] <bos> question "\\n" answer <eos>``, right-padded to
    ``tokens_per_image + max_text_tokens``; an answer that does not fit is cut (and loses EOS)."""

    def __init__(self, processor: Any, max_text_tokens: int = 64):
        self.processor = processor
        self.max_text_tokens = max_text_tokens

    def encode(self, question: str, answer: str) -> tuple[list[int], int]:
        """Token ids of one sample and the index where the answer starts."""
        from gf_policy.vla.processing import clean_instruction

        cfg, tok = self.processor.config, self.processor.tokenizer
        prompt = [cfg.image_token_id] * (cfg.num_images * cfg.tokens_per_image) + [tok.bos_token_id]
        prompt += tok.encode(clean_instruction(question) + "\n", add_special_tokens=False)
        answer_ids = tok.encode(answer.strip(), add_special_tokens=False)
        if tok.eos_token_id is not None:
            answer_ids = answer_ids + [tok.eos_token_id]
        return prompt + answer_ids, len(prompt)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        cfg = self.processor.config
        length = cfg.num_images * cfg.tokens_per_image + self.max_text_tokens
        ids = torch.full((len(samples), length), self.processor.pad_token_id, dtype=torch.long)
        attention = torch.zeros(len(samples), length, dtype=torch.bool)
        target = torch.zeros(len(samples), length, dtype=torch.bool)
        for row, sample in enumerate(samples):
            tokens, start = self.encode(sample["question"], sample["answer"])
            if start >= length:
                raise ValueError(f"the question alone needs {start} tokens, more than {length}: raise max_text_tokens")
            tokens = tokens[:length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = True
            target[row, start : len(tokens)] = True
        return {
            "vl_pixel_values": self.processor.preprocess_images([s["image"] for s in samples]),
            "vl_input_ids": ids, "vl_attention_mask": attention, "vl_target_mask": target,
            EMOJI_LABEL: torch.tensor([s.get("emoji", NO_EMOJI) for s in samples], dtype=torch.long),
        }
