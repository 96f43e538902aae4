"""gf doctor checks owned by gf_policy: the model stack."""

from __future__ import annotations

from gf_bringup.doctor import DoctorError


def check_model_stack() -> str:
    """torch / transformers / peft import, and a tiny PaliGemma builds and runs on this machine."""
    try:
        import peft
        import torch
        import transformers
        from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration
    except ImportError as exc:
        raise DoctorError(f"model stack incomplete ({exc}); run scripts/setup.sh") from exc
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, vocab_size=300),
        image_token_index=299, projection_dim=32,
    )
    model = PaliGemmaForConditionalGeneration(config).eval()
    ids = torch.tensor([[299] * 4 + [2, 10, 11]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32), attention_mask=torch.ones_like(ids))
    if not torch.isfinite(out.logits).all():
        raise DoctorError("a tiny PaliGemma produced non-finite logits")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"torch {torch.__version__} ({device}), transformers {transformers.__version__}, peft {peft.__version__}; tiny PaliGemma runs"
