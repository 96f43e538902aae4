"""The latent action model itself: ``LAMConfig``, ``LatentActionModel`` (IDM + VQ + FDM + proprio
FDM) and its checkpoint files; ``gf_training.latent``'s docstring describes the architecture.

Separate from ``latent_training`` because loading a LAM (``gf-train`` reading its sizes, labelling
episodes) needs the model and its files, not the training loop or the synthetic data.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

LAM_CONFIG = "lam_config.json"
LAM_WEIGHTS = "lam.safetensors"


@dataclass
class LAMConfig:
    """Sizes and losses of a latent action model."""

    image_size: int = 128
    patch_size: int = 16
    width: int = 256
    depth: int = 4
    heads: int = 4
    codebook_size: int = 32
    code_dim: int = 32
    codes_per_pair: int = 4
    stride: int = 5  # frames between o_t and o_t+k (0.25 s at 20 Hz)
    commitment: float = 0.25
    proprio_dim: int = 7
    action_dim: int = 7
    proprio_weight: float = 1.0  # villa-X's proprio FDM; 0 turns it off (pixels only)
    restart_threshold: float = 0.03  # codes used less than this share of their fair share are restarted
    vq_warmup: float = 0.2  # share of the training steps before quantisation starts (k-means init)
    warmup_noise: float = 0.5  # Gaussian noise on the unquantised latents during the warm-up

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.width % self.heads:
            raise ValueError("width must be a multiple of heads")
        if min(self.codebook_size, self.code_dim, self.codes_per_pair, self.stride) < 1:
            raise ValueError("codebook_size, code_dim, codes_per_pair and stride must be >= 1")

    @classmethod
    def tiny(cls, **overrides: Any) -> LAMConfig:
        """A test-size LAM (32 px frames, 8 px patches, width 64)."""
        params: dict[str, Any] = dict(image_size=32, patch_size=8, width=64, depth=2, heads=4, codebook_size=8,
                                      code_dim=16, codes_per_pair=1, stride=2)
        params.update(overrides)
        return cls(**params)


def _encoder(width: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class LatentActionModel(nn.Module):
    """IDM + VQ + FDM (+ proprio FDM); see ``gf_training.latent``'s docstring."""

    def __init__(self, config: LAMConfig):
        super().__init__()
        self.config = c = config
        n = (c.image_size // c.patch_size) ** 2
        self.patch = nn.Conv2d(3, c.width, c.patch_size, c.patch_size)
        self.pair_patch = nn.Conv2d(6, c.width, c.patch_size, c.patch_size)
        self.pos = nn.Parameter(torch.randn(n, c.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(c.codes_per_pair, c.width) * 0.02)
        self.idm = _encoder(c.width, c.depth, c.heads)
        self.idm_norm = nn.LayerNorm(c.width)
        self.to_code = nn.Linear(c.width, c.code_dim)
        self.codebook = nn.Parameter(F.normalize(torch.randn(c.codebook_size, c.code_dim), dim=1))
        self.from_code = nn.Linear(c.code_dim, c.width)
        self.fdm = _encoder(c.width, c.depth, c.heads)
        self.fdm_norm = nn.LayerNorm(c.width)
        self.to_pixels = nn.Linear(c.width, 3 * c.patch_size**2)
        nn.init.zeros_(self.to_pixels.weight)
        nn.init.zeros_(self.to_pixels.bias)
        if c.proprio_weight > 0:
            self.proprio_fdm = nn.Sequential(
                nn.Linear(c.codes_per_pair * c.code_dim + c.proprio_dim, c.width), nn.GELU(),
                nn.Linear(c.width, c.stride * c.action_dim),
            )
        self.register_buffer("usage", torch.full((c.codebook_size,), 1.0 / c.codebook_size))

    # ------------------------------------------------------------------ pieces
    def _frames(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, S, S) in [-1, 1] -> float (B, 3, S, S) at the LAM size."""
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images.to(self.pos.dtype)

    def _patches(self, frames: torch.Tensor, embed: nn.Conv2d | None = None) -> torch.Tensor:
        return (embed or self.patch)(frames).flatten(2).transpose(1, 2) + self.pos

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, patches, 3 p p), the FDM's target layout."""
        p = self.config.patch_size
        b, c, s, _ = frames.shape
        x = frames.reshape(b, c, s // p, p, s // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (s // p) ** 2, c * p * p)

    def encode(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """IDM: unit-norm latent vectors z_e (B, codes_per_pair, code_dim) of a frame pair."""
        a, b = self._frames(first), self._frames(second)
        batch = a.shape[0]
        pair = self._patches(torch.cat([a, b - a], dim=1), self.pair_patch)
        tokens = torch.cat([self.queries[None].expand(batch, -1, -1), pair], dim=1)
        out = self.idm_norm(self.idm(tokens))
        n = self.config.codes_per_pair
        # Each code reads its query token plus the mean of the patch tokens (motion is detected
        # locally, so pooling gives every code the whole picture from the first step).
        out = out[:, :n] + out[:, n:].mean(dim=1, keepdim=True)
        return F.normalize(self.to_code(out), dim=-1)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest unit-norm codes by cosine similarity: (codes, z_q straight-through, vq loss)."""
        book = F.normalize(self.codebook, dim=1)
        codes = (z_e.detach() @ book.T).argmax(dim=-1)
        q = book[codes]
        loss = F.mse_loss(q, z_e.detach()) + self.config.commitment * F.mse_loss(z_e, q.detach())
        return codes, z_e + (q - z_e).detach(), loss

    @torch.no_grad()
    def codes(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, codes_per_pair) of frame pairs."""
        return self.quantize(self.encode(first, second))[0]

    def code_vectors(self) -> torch.Tensor:
        """The unit-norm codebook (K, code_dim) (what the VLA's latent expert denoises)."""
        return F.normalize(self.codebook.detach(), dim=1)

    def forward(
        self, first: torch.Tensor, second: torch.Tensor, proprio: torch.Tensor | None = None,
        actions: torch.Tensor | None = None, quantize: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Losses of a batch of pairs; ``actions`` (B, stride, action_dim) for the proprio FDM.
        ``quantize=False`` passes z_e on unquantised (the warm-up before the k-means init)."""
        c = self.config
        a, b = self._frames(first), self._frames(second)
        z_e = self.encode(a, b)
        codes, z_q, vq_loss = self.quantize(z_e)
        if not quantize:
            # Warm-up without quantisation; noise keeps the channel narrow (like the codes will be),
            # so z_e learns the few factors that matter most before k-means turns them into codes.
            z_q = F.normalize(z_e + c.warmup_noise * torch.randn_like(z_e), dim=-1) if self.training else z_e
            vq_loss = torch.zeros((), device=z_e.device)
        batch = a.shape[0]
        latent = self.from_code(z_q)  # (B, codes, width)
        # The latent actions enter as tokens and, summed, on every patch token (direct conditioning).
        tokens = torch.cat([latent, self._patches(a) + latent.sum(dim=1, keepdim=True)], dim=1)
        out = self.fdm_norm(self.fdm(tokens))[:, c.codes_per_pair :]
        predicted = self._pixels(a) + self.to_pixels(out)
        recon = F.mse_loss(predicted, self._pixels(b))
        losses = {"recon": recon, "vq": vq_loss, "codes": codes}
        total = recon + vq_loss
        if c.proprio_weight > 0 and proprio is not None and actions is not None:
            pred = self.proprio_fdm(torch.cat([z_q.flatten(1), proprio.to(z_q.dtype)], dim=1))
            losses["proprio"] = F.mse_loss(pred, actions.reshape(batch, -1).to(pred.dtype))
            total = total + c.proprio_weight * losses["proprio"]
        losses["loss"] = total
        if self.training:
            with torch.no_grad():
                hist = torch.bincount(codes.flatten(), minlength=c.codebook_size).float()
                self.usage.mul_(0.95).add_(0.05 * hist / hist.sum())
        return losses

    @torch.no_grad()
    def restart_unused(self, z_e: torch.Tensor) -> int:
        """Move codes that are (almost) never used onto the encoder outputs their codes fit worst."""
        c = self.config
        dead = (self.usage < c.restart_threshold / c.codebook_size).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = z_e.reshape(-1, c.code_dim)
        fit = (pool @ F.normalize(self.codebook, dim=1).T).max(dim=1).values
        worst = fit.argsort()[: dead.numel()]
        self.codebook[dead[: worst.numel()]] = pool[worst]
        self.usage[dead] = 1.0 / c.codebook_size
        return int(worst.numel())

    @torch.no_grad()
    def init_codebook(self, z_e: torch.Tensor, iterations: int = 20, seed: int = 0) -> None:
        """Spherical k-means (k-means++ seeding) of encoder outputs (N, code_dim) as the codebook."""
        pool = F.normalize(z_e.reshape(-1, self.config.code_dim).float(), dim=1)
        k = self.config.codebook_size
        gen = torch.Generator().manual_seed(seed)
        centres = [pool[torch.randint(pool.shape[0], (1,), generator=gen)].squeeze(0)]
        for _ in range(1, k):
            dist = (1 - pool @ torch.stack(centres).T).min(dim=1).values.clamp_min(0) + 1e-12
            centres.append(pool[torch.multinomial(dist.cpu(), 1, generator=gen).to(pool.device)].squeeze(0))
        book = torch.stack(centres)
        for _ in range(iterations):
            assign = (pool @ book.T).argmax(dim=1)
            for j in range(k):
                members = pool[assign == j]
                if len(members):
                    book[j] = F.normalize(members.mean(0), dim=0)
        self.codebook.copy_(book.to(self.codebook))
        self.usage.fill_(1.0 / k)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``lam_config.json`` and ``lam.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / LAM_CONFIG).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        save_model(self, str(directory / LAM_WEIGHTS))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> LatentActionModel:
        """Load a LAM written by ``save_pretrained``."""
        directory = Path(directory)
        model = cls(load_lam_config(directory))
        load_model(model, str(directory / LAM_WEIGHTS), strict=True)
        return model.to(device).eval()


def load_lam_config(directory: str | Path) -> LAMConfig:
    """The sizes of the LAM in ``directory`` (without loading its weights)."""
    directory = Path(directory)
    if not (directory / LAM_CONFIG).exists():
        raise FileNotFoundError(f"{directory} holds no latent action model ({LAM_CONFIG} missing; see gf-lam train)")
    return LAMConfig(**json.loads((directory / LAM_CONFIG).read_text()))


def vla_latent_sizes(lam: LAMConfig, frame_pairs: int) -> dict[str, int]:
    """The ``VLAConfig`` latent fields that must match a LAM: its codebook, code width and
    ``frame_pairs x codes_per_pair`` latent tokens per sample."""
    return {"latent_codebook_size": lam.codebook_size, "latent_code_dim": lam.code_dim,
            "latent_action_tokens": frame_pairs * lam.codes_per_pair}
