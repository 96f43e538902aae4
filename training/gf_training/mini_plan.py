"""The mini recipes and where a run of one lives: ``Recipe``, ``RECIPES`` and ``Plan`` (its
directories and ``gf-train`` arguments).

Separate from the stages and the report, which both read a ``Plan`` but do not change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gf_training.config import load_config

MINI_CONFIG_DIR = "mini"
DEMO_DIR = Path("demos/mini/train")
VL_ROOT = Path("vl/mini")
CATALOGUE_TOKENIZER = Path("tok/mini_catalogue")  # gf-vl-data tokenizer: every emoji's name
VLM_EXPORT = "hf"  # a VLM recipe's PaliGemma directory, in its run directory
PROBE_DIR = "probe"


@dataclass(frozen=True)
class VLData:
    """Vision-language data a recipe trains on: ``count`` scenes, or images per emoji for the
    per-emoji generators, of the split's ``lists`` (``All``: the whole catalogue)."""

    generator: str
    count: int
    lists: str = "Train"
    size: int = 224

    @property
    def per_emoji(self) -> bool:
        return self.generator in ("glyphs", "cards")

    @property
    def directory_name(self) -> str:
        return self.generator if self.lists == "Train" else f"{self.lists.lower().replace(',', '_')}_{self.generator}"

    def command_args(self) -> list[str]:
        count = ["--per-emoji" if self.per_emoji else "--scenes", str(self.count)]
        lists = [] if self.lists == "Train" else ["--lists", self.lists]
        size = [] if self.size == 224 else ["--size", str(self.size)]
        return [self.generator, *count, *lists, *size]

    def samples(self, split: str) -> int:
        """Samples the finished directory holds."""
        if not self.per_emoji:
            return self.count
        from gf_eval.splits import load_splits
        from gf_training.vl_generate import pooled_entries

        return self.count * len(pooled_entries(load_splits(split), self.lists.split(",")))
RUN_ROOT = Path("runs/mini")
STAGE_LOG = "mini_stages.json"
REPORT_DIR = "report"
EVAL_DIR = "eval"


@dataclass(frozen=True)
class Recipe:
    """One row of the mini recipes: a training config under ``configs/mini/`` and the sizes of
    the stages around it."""

    name: str
    description: str
    demo_episodes: int = 500
    # Vision-language data the config trains on (gf-vl-data), written to vl/mini/<name> and
    # passed to training as cotrain.vl_dirs.
    vl_data: tuple[VLData, ...] = ()
    sweep_trials: int = 20
    eval_trials: int = 100
    # The scripted expert's pace for the demos (gf_sim_bridge.expert.EXPERT_PROFILES): "fast"
    # (45-52 steps per Train demo) or "upstream" (upstream's pacing, 126 steps or more), each in
    # its own demo directory.
    expert_profile: str = "fast"
    # "vla": a policy (demos, training, sweep, evaluation, report); "vlm": a VLM pre-trained on
    # vision-language data only (the catalogue tokenizer, VL data, training, export, probe).
    kind: str = "vla"

    @property
    def train_config(self) -> str:
        return f"{MINI_CONFIG_DIR}/{self.name}.yaml"


RECIPES = {
    r.name: r for r in (
        Recipe("baseline", "PI0StyleVLA (~1.1 M parameters, 96 px) from scratch on 500 Train demos of the "
                           "default scene"),
        Recipe("crop", "the baseline's model seeing a crop of the frame around the table (128 px, 16 px "
                       "patches), from scratch on the same demos"),
        Recipe("no_proprio", "the baseline's model without proprio: every step is read from the image"),
        Recipe("proprio_dropout", "the baseline's model with the proprio of half its training samples hidden"),
        Recipe("cube_cotrain", "the baseline's model co-trained on 'where is the cube?' scenes (its image "
                               "position as text)", vl_data=(VLData("cube", 1000),)),
        Recipe("scene_probe", "the baseline's model with an auxiliary head reading the cube's start position "
                              "from its image tokens (training-only)"),
        Recipe("scene_probe_upstream", "scene_probe trained on demos of the upstream-paced expert (126+ steps "
                                       "each instead of 45-52)", expert_profile="upstream"),
        Recipe("vlm", "the mini model's VLM pre-trained on glyphs, cards and which-card scenes of every "
                      "catalogue emoji (vision-language data only), probed on the cards of every list",
               kind="vlm", sweep_trials=0, eval_trials=0,
               vl_data=(VLData("glyphs", 8, "All", 128), VLData("cards", 4, "All", 128), VLData("which", 3000, "All"))),
    )
}


@dataclass
class Plan:
    """Where one run of a recipe reads and writes, with the sizes it was asked for."""

    recipe: Recipe
    root: Path
    demo_episodes: int
    sweep_trials: int
    eval_trials: int
    train_overrides: list[str] = field(default_factory=list)
    run_name: str | None = None  # default: the recipe's name

    @property
    def demo_dir(self) -> Path:
        profile = self.recipe.expert_profile
        return self.root / (DEMO_DIR if profile == "fast" else DEMO_DIR.with_name(f"{DEMO_DIR.name}_{profile}"))

    @property
    def run_dir(self) -> Path:
        return self.root / RUN_ROOT / (self.run_name or self.recipe.name)

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / EVAL_DIR

    @property
    def report_dir(self) -> Path:
        return self.run_dir / REPORT_DIR

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / CATALOGUE_TOKENIZER

    def vl_dir(self, data: VLData) -> Path:
        return self.root / VL_ROOT / data.directory_name

    def train_args(self) -> list[str]:
        vl = [f"cotrain.vl_dirs=[{','.join(str(self.vl_dir(d)) for d in self.recipe.vl_data)}]"]
        data = ([f"model.tokenizer={self.tokenizer_dir}"] if self.recipe.kind == "vlm"
                else [f"data.demo_dirs=[{self.demo_dir}]"])
        return [self.recipe.train_config, f"output_dir={self.run_dir}", *data,
                *(vl if self.recipe.vl_data else []), *self.train_overrides]

    def train_steps(self) -> int:
        return load_config(self.recipe.train_config, self.train_args()[1:]).train.steps
