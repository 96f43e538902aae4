"""The mini recipes and where a run of one lives: ``Recipe``, ``RECIPES`` and ``Plan`` (its
directories and ``gf-train`` arguments).

Separate from the stages and the report, which both read a ``Plan`` but do not change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gf_bringup.constants import DEFAULT_SPLIT
from gf_eval.splits import SHAPES_SPLIT
from gf_training.config import TrainConfig, load_config

MINI_CONFIG_DIR = "mini"
DEMO_DIR = Path("demos/mini/train")
VL_ROOT = Path("vl/mini")
CATALOGUE_TOKENIZER = Path("tok/mini_catalogue")  # gf-vl-data tokenizer: every emoji's name
VLM_EXPORT = "hf"  # a VLM recipe's PaliGemma directory, in its run directory
PROBE_DIR = "probe"


@dataclass(frozen=True)
class VLData:
    """Vision-language data a recipe trains on: ``count`` scenes, or images per emoji for the
    per-emoji generators, of the split's ``lists`` (``All``: the whole catalogue), drawn with
    ``weight`` (cotrain.vl_weights) against the recipe's other VL data."""

    generator: str
    count: int
    lists: str = "Train"
    size: int = 224
    weight: float | None = None  # None: the recipe's directories are drawn in proportion to their sizes

    @property
    def per_emoji(self) -> bool:
        from gf_training.vl_generate import PER_EMOJI

        return self.generator in PER_EMOJI

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
EVAL_PROTOCOLS = ("ID", "Train", "Val", "Hard")
SWEEP_PROTOCOLS = ("Val",)  # gf-sweep's selection rule: best Val overall SR
STAGE_LOG = "mini_stages.json"
REPORT_DIR = "report"
EVAL_DIR = "eval"
SEED_SUFFIX = "_seed"  # runs/mini/<row>_seed<N>: the row trained with seed N


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
    # The split file whose Train list the demos draw their cards from (gf-demos --split-file), and
    # the base seed of their trial specs (gf-demos --seed: other cube and card positions).
    demo_split: str = DEFAULT_SPLIT
    demo_seed: int = 0
    # "vla": a policy (demos, training, sweep, evaluation, report); "vlm": a VLM pre-trained on
    # vision-language data only (the catalogue tokenizer, VL data, training, export, probe);
    # "pretrain": a VLA pre-trained for another row to start from (demos, training).
    kind: str = "vla"
    # The recipe whose result the row starts from, run first if it is unfinished: a VLM recipe's
    # export (the config's model.init: paligemma) or a pre-training recipe's final checkpoint
    # (model.init: checkpoint); None: the config's own initialisation.
    base: str | None = None
    # The row trains with the catalogue tokenizer (gf-vl-data tokenizer), made first if missing.
    catalogue_tokenizer: bool = False
    # Protocols the sweep evaluates every checkpoint on; the choice is by Val whatever they are.
    # All four give the paper's Figure 2 (success vs. fine-tuning steps) for the row.
    sweep_protocols: tuple[str, ...] = SWEEP_PROTOCOLS

    def __post_init__(self) -> None:
        weighted = {d.weight is not None for d in self.vl_data}
        if len(weighted) > 1:
            raise ValueError(f"recipe {self.name}: give every VLData a weight, or none (drawn in proportion to sizes)")

    @property
    def slug(self) -> str:
        """The name as a file name: the config's and the run directory's (``vlm-full`` -> ``vlm_full``)."""
        return self.name.replace("-", "_")

    @property
    def train_config(self) -> str:
        return f"{MINI_CONFIG_DIR}/{self.slug}.yaml"


# The mini VLM is pre-trained in stages, as PaliGemma's own pre-training is.
# Stage 1 (gf-mini run vlm-names) learns every catalogue emoji's name: glyphs and cards seen whole,
# 32 images per emoji of all 1377, with 3000 which-card scenes, drawn in proportion to their sizes
# (the scenes are 3 % of the samples). It names the cards of every list (78-80 %) but answers at
# chance on the table, where an emoji is 6-10 px of the 128 px view.
VLM_NAMES_DATA = (VLData("glyphs", 32, "All", 128), VLData("cards", 32, "All", 128), VLData("which", 3000, "All"))
# Stage 2 (gf-mini run vlm-table, from stage 1's weights; also co-trained on by the cotrain-full
# row) names every emoji at the table's scale and asks where it lies in simulator scenes of the
# benchmark's lists, drawn in shares (cotrain.vl_weights). From random weights on this data alone
# the VLM named no card by step 8000 and stayed at chance on the table: names come first.
# Stage 3 (gf-mini run vlm) trains stage 2's final weights again on the same data, a second cycle
# of the learning-rate schedule: stage 2 ends with its name loss still falling and answers
# "which card?" at chance (36 % pooled); the third stage names more table-scale cards (25-34 %
# against 16-23 %) and answers above chance (42 % [37-48]).
VLM_DATA = (VLData("glyphs", 32, "All", 128, weight=0.1), VLData("cards", 32, "All", 128, weight=0.1),
            VLData("tablecards", 32, "All", 128, weight=0.3),
            VLData("which", 4000, "Train,Val,Hard", weight=0.3), VLData("tabletop", 2000, "Train,Val,Hard", weight=0.2))


# Can the rows' model name an emoji at the table's scale at all? The Val list's 100 emojis on cards
# lying on the table, 64 renderings each, from random weights; gf-probe --table-cards names them
# from renderings training never drew. Once with the rows' 16 px patches, once with 8 px.
TABLE_NAMES_DATA = (VLData("tablecards", 64, "Val", 128),)


def comparison_row(name: str, description: str, **kwargs) -> Recipe:
    """A row of the mini comparison (issue 18): the model of ``configs/mini/row.yaml`` with the
    catalogue tokenizer, fine-tuned on the Train demos from the mini VLM unless it is the control
    (or another ``base`` is given)."""
    kwargs.setdefault("base", None if name.startswith("scratch") else "vlm")
    return Recipe(name, description, catalogue_tokenizer=True, **kwargs)


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
        Recipe("vlm-names", "the mini VLM's first stage: the mini model's VLM pre-trained on glyphs and cards "
                            "of every catalogue emoji (vision-language data only)",
               kind="vlm", sweep_trials=0, eval_trials=0, vl_data=VLM_NAMES_DATA),
        Recipe("vlm-table", "the mini VLM's second stage: vlm-names trained on every emoji at the table's scale "
                            "and on which-card and tabletop scenes of the benchmark's lists",
               kind="vlm", base="vlm-names", sweep_trials=0, eval_trials=0, vl_data=VLM_DATA),
        Recipe("vlm", "the mini VLM: vlm-table trained again on the same data (a second cycle of its schedule), "
                      "probed on cards and scenes of every list",
               kind="vlm", base="vlm-table", sweep_trials=0, eval_trials=0, vl_data=VLM_DATA),
        Recipe("table-names", "a learnability check: the rows' model (16 px patches) from random weights naming the "
                              "Val list's emojis on cards at the table's scale",
               kind="vlm", sweep_trials=0, eval_trials=0, vl_data=TABLE_NAMES_DATA),
        Recipe("table-names-p8", "table-names with 8 px patches (256 image tokens instead of 64)",
               kind="vlm", sweep_trials=0, eval_trials=0, vl_data=TABLE_NAMES_DATA),
        comparison_row("scratch-full", "the comparison's control: the rows' model from random weights, fully "
                                       "trained on the Train demos (no VLM)"),
        comparison_row("vlm-full", "the mini VLM with a new action expert, every weight fine-tuned",
                       sweep_protocols=EVAL_PROTOCOLS),
        comparison_row("vlm-lora", "the mini VLM fine-tuned with LoRA (rank 16) on its language model; its vision "
                                   "tower, the expert and projections fully (openpi's recipe)",
                       sweep_protocols=EVAL_PROTOCOLS),
        comparison_row("vlm-action", "the mini VLM frozen; only the action expert trains"),
        comparison_row("cotrain-full", "vlm-full co-trained on the VLM's own vision-language data (a quarter of "
                                       "every micro-batch)", vl_data=VLM_DATA),
        comparison_row("discrete-full", "vlm-full with knowledge insulation: discretised action tokens train the "
                                        "VLM, the flow expert reads it through a stop-gradient"),
        Recipe("vla-pretrain", "the mini VLM with a new action expert trained on demos of coloured geometric "
                               "shapes (gf-shapes-v1, no picture emoji): the mini robot pre-training",
               kind="pretrain", base="vlm", catalogue_tokenizer=True, demo_split=SHAPES_SPLIT, demo_seed=1,
               sweep_trials=0, eval_trials=0),
        comparison_row("vlapre-full", "the VLA of vla-pretrain, every weight fine-tuned on the Train demos",
                       base="vla-pretrain"),
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
    run_name: str | None = None  # default: the recipe's name, with _seedN for a seed other than 0
    # The training seed (initialisation, data order); the demos and the evaluated trials stay the same.
    seed: int = 0

    @property
    def demo_dir(self) -> Path:
        """``demos/mini/train``; demos of another split or expert pace each in a directory of their own."""
        name = DEMO_DIR.name if self.recipe.demo_split == DEFAULT_SPLIT else self.recipe.demo_split
        profile = self.recipe.expert_profile
        return self.root / DEMO_DIR.with_name(name if profile == "fast" else f"{name}_{profile}")

    @property
    def run_dir(self) -> Path:
        return self.root / RUN_ROOT / (self.run_name or self.recipe.slug + (f"{SEED_SUFFIX}{self.seed}" if self.seed else ""))

    @property
    def base_plan(self) -> Plan | None:
        """The plan of the recipe the row starts from, under the same root, with its own sizes."""
        if self.recipe.base is None:
            return None
        base = RECIPES[self.recipe.base]
        return Plan(base, self.root, base.demo_episodes, base.sweep_trials, base.eval_trials)

    @property
    def result_model_dir(self) -> Path:
        """What a row starting from this recipe loads: a VLM's export, otherwise the final checkpoint."""
        return self.vlm_export_dir if self.recipe.kind == "vlm" else self.final_checkpoint

    @property
    def final_checkpoint(self) -> Path:
        from gf_training.train import CHECKPOINT_DIR, checkpoint_name

        return self.run_dir / CHECKPOINT_DIR / checkpoint_name(self.train_steps())

    @property
    def vlm_export_dir(self) -> Path:
        """A VLM recipe's PaliGemma directory (gf-vlm export)."""
        return self.run_dir / VLM_EXPORT

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
        weights = [d.weight for d in self.recipe.vl_data]
        vl = [f"cotrain.vl_dirs=[{','.join(str(self.vl_dir(d)) for d in self.recipe.vl_data)}]",
              f"cotrain.vl_weights=[{','.join(str(w) for w in weights if w is not None)}]"]
        data = [] if self.recipe.kind == "vlm" else [f"data.demo_dirs=[{self.demo_dir}]"]
        base = self.base_plan
        if base is not None and self.recipe.kind == "vlm":  # a later stage: the earlier one's whole checkpoint
            model = [f"model.path={base.final_checkpoint}", f"model.tokenizer={self.tokenizer_dir}"]
        elif base is not None:  # the model and its tokenizer come from the base's result
            model = [f"model.path={base.result_model_dir}"]
        else:
            model = [f"model.tokenizer={self.tokenizer_dir}"] if self.recipe.kind == "vlm" or self.recipe.catalogue_tokenizer else []
        seed = [f"seed={self.seed}"] if self.seed else []
        return [self.recipe.train_config, f"output_dir={self.run_dir}", *model, *data,
                *(vl if self.recipe.vl_data else []), *seed, *self.train_overrides]

    def resolved_config(self) -> TrainConfig:
        """The config ``gf-train`` runs with for this plan (the recipe's file and the plan's overrides)."""
        return load_config(self.recipe.train_config, self.train_args()[1:])

    def train_steps(self) -> int:
        return self.resolved_config().train.steps
