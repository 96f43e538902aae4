"""The pi0-style VLA (PaliGemma + flow-matching action expert): configuration, model,
normalisation, processing and the ``VLAInference`` entry point used by the policy node.

Typical use::

    from gf_policy.vla import VLAInference
    policy = VLAInference.from_pretrained("/path/to/checkpoint", device="cpu")
    chunk = policy.predict(rgb_uint8_hwc, "Pick the cube and place it on ...", proprio7)  # (H, 7)
"""

from . import local_files  # noqa: F401 - first: switches the model hub off before transformers loads
from .configuration import VLAConfig
from .inference import VLAInference
from .modeling import PI0StyleVLA, make_block_attention_mask
from .normalization import NormStats, load_norm_stats, save_norm_stats
from .pi0_import import import_pi0
from .processing import VLAProcessor, train_tiny_tokenizer
from .techniques import ActionDiscretizer

__all__ = [
    "ActionDiscretizer",
    "NormStats",
    "PI0StyleVLA",
    "VLAConfig",
    "VLAInference",
    "VLAProcessor",
    "import_pi0",
    "load_norm_stats",
    "make_block_attention_mask",
    "save_norm_stats",
    "train_tiny_tokenizer",
]
