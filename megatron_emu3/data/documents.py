"""Emu3 documents: every kind formatted from text ids + a code grid, and parsed back (pure numpy).

Layouts (ids from `megatron_emu3.data.tokens`, ARCHITECTURE.md section 3):

    text                 BOS text EOS
    image generation     BOS caption SOV meta SOT (row EOL) x h EOF EOV EOS
    image understanding  BOS SOV meta SOT (row EOL) x h EOF EOV caption EOS
    video generation     BOS caption SOV meta SOT ((row EOL) x h EOF) x t EOV EOS
    video understanding  BOS SOV meta SOT ((row EOL) x h EOF) x t EOV caption EOS

`row` is `w` vision-code ids. The meta is plain text, tokenized like the caption:

    image  "{h}*{w}"                         e.g. "64*64"
    video  "{h}*{w}*{t} {fps}fps {secs}s"    e.g. "32*32*2 8fps 1.00s"

with h, w the latent height/width, t the number of latent frames (4 video frames each), fps the
frame rate the clip was sampled at (shortest decimal form) and secs the clip's duration, 2 decimals.
The formatters take any tokenizer with `encode(str) -> ids` (for the meta); the parser takes one with
`decode(ids) -> str`. Code ids follow a `tokens.VisionLayout` (Emu3's by default). Preprocessing, the
inspector and generation all go through this module.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from megatron_emu3.data import tokens
from megatron_emu3.data.tokens import EMU3_VISION, DocKind, VisionLayout

_IMAGE_META = re.compile(r"^(\d+)\*(\d+)$")
_VIDEO_META = re.compile(r"^(\d+)\*(\d+)\*(\d+) (\d+(?:\.\d+)?)fps (\d+\.\d\d)s$")


class DocumentFormatError(ValueError):
    """A token sequence that is not a well-formed Emu3 document (the message says where)."""


@dataclasses.dataclass(frozen=True)
class VisionMeta:
    """What the meta text of a vision block says: latent grid size, and for videos time."""

    height: int
    width: int
    frames: int | None = None  # latent frames; None for an image
    fps: float | None = None
    seconds: float | None = None

    @property
    def is_video(self) -> bool:
        return self.frames is not None

    def text(self) -> str:
        if not self.is_video:
            return f"{self.height}*{self.width}"
        return f"{self.height}*{self.width}*{self.frames} {format_fps(self.fps)}fps {self.seconds:.2f}s"

    @classmethod
    def parse(cls, text: str) -> "VisionMeta":
        if m := _IMAGE_META.match(text):
            return cls(int(m[1]), int(m[2]))
        if m := _VIDEO_META.match(text):
            return cls(int(m[1]), int(m[2]), int(m[3]), float(m[4]), float(m[5]))
        raise DocumentFormatError(f"vision meta {text!r} is neither 'H*W' nor 'H*W*T <fps>fps <secs>s'")


def format_fps(fps: float) -> str:
    """fps in its shortest decimal form: 8 -> '8', 7.5 -> '7.5', 29.97 -> '29.97'."""
    return f"{fps:.3f}".rstrip("0").rstrip(".")


@dataclasses.dataclass
class Document:
    """A parsed document: its kind, caption (or text) ids, and for vision kinds meta and codes."""

    kind: DocKind
    text_ids: np.ndarray
    meta: VisionMeta | None = None
    codes: np.ndarray | None = None  # (h, w) for images, (t, h, w) for videos; codebook indices


def vision_block(codes: np.ndarray, meta_ids, layout: VisionLayout = EMU3_VISION) -> np.ndarray:
    """`SOV meta SOT grid EOV` for codes (h, w) or (t, h, w): EOL after every row, EOF after each frame."""
    codes = np.asarray(codes)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3 or 0 in codes.shape:
        raise ValueError(f"codes must be a non-empty (h, w) or (t, h, w) grid, got shape {codes.shape}")
    if codes.min() < 0 or codes.max() >= layout.codebook_size:
        raise ValueError(f"codes must lie in [0, {layout.codebook_size}) ({layout.tokenizer}), "
                         f"got [{codes.min()}, {codes.max()}]")
    t, h, w = codes.shape
    grid = np.empty((t, h * (w + 1) + 1), dtype=np.int64)
    rows = grid[:, : h * (w + 1)].reshape(t, h, w + 1)
    rows[:, :, :w] = codes + layout.first_code
    rows[:, :, w] = tokens.EOL
    grid[:, -1] = tokens.EOF
    return np.concatenate([[tokens.SOV], np.asarray(meta_ids, dtype=np.int64), [tokens.SOT],
                           grid.reshape(-1), [tokens.EOV]])


def vision_document_length(text_len: int, meta_len: int, t: int, h: int, w: int) -> int:
    """Tokens of a vision document without building it (BOS, EOS, SOV, SOT, EOV + meta + grid)."""
    return 5 + text_len + meta_len + t * (h * (w + 1) + 1)


def format_text(text_ids) -> np.ndarray:
    """`BOS text EOS`."""
    return np.concatenate([[tokens.BOS], np.asarray(text_ids, dtype=np.int64), [tokens.EOS]]).astype(np.int64)


def format_vision(kind: DocKind, text_ids, codes: np.ndarray, meta: VisionMeta, tokenizer,
                  layout: VisionLayout = EMU3_VISION) -> np.ndarray:
    """A vision document of `kind` (generation: caption first; understanding: caption after EOV)."""
    kind = DocKind(kind)
    codes = np.asarray(codes)
    is_video = kind in (DocKind.VIDEO_GENERATION, DocKind.VIDEO_UNDERSTANDING)
    if kind == DocKind.TEXT:
        raise ValueError("format_vision needs a vision kind; use format_text for text documents")
    if is_video != meta.is_video:
        raise ValueError(f"{kind.name} needs {'a video' if is_video else 'an image'} meta, got {meta}")
    grid_shape = codes.shape if is_video else (1, *codes.shape)
    expected = (meta.frames or 1, meta.height, meta.width)
    if codes.ndim != (3 if is_video else 2) or tuple(grid_shape) != expected:
        raise ValueError(f"codes of shape {codes.shape} do not match meta {meta.text()!r}")
    block = vision_block(codes, tokenizer.encode(meta.text()), layout)
    text_ids = np.asarray(text_ids, dtype=np.int64)
    if kind in (DocKind.IMAGE_GENERATION, DocKind.VIDEO_GENERATION):
        body = [text_ids, block]
    else:
        body = [block, text_ids]
    return np.concatenate([[tokens.BOS], *body, [tokens.EOS]]).astype(np.int64)


def format_image(text_ids, codes: np.ndarray, tokenizer, understanding: bool = False,
                 layout: VisionLayout = EMU3_VISION) -> np.ndarray:
    """An image document from caption ids and codes (h, w)."""
    h, w = np.asarray(codes).shape
    kind = DocKind.IMAGE_UNDERSTANDING if understanding else DocKind.IMAGE_GENERATION
    return format_vision(kind, text_ids, codes, VisionMeta(h, w), tokenizer, layout)


def video_meta(t: int, h: int, w: int, fps: float, layout: VisionLayout = EMU3_VISION) -> VisionMeta:
    """The meta of a clip of t latent frames: duration = t * temporal_factor / fps, 2 decimals."""
    return VisionMeta(h, w, t, float(fps), round(t * layout.temporal_factor / fps, 2))


def format_video(text_ids, codes: np.ndarray, fps: float, tokenizer, understanding: bool = False,
                 layout: VisionLayout = EMU3_VISION) -> np.ndarray:
    """A video document from caption ids and codes (t, h, w)."""
    t, h, w = np.asarray(codes).shape
    kind = DocKind.VIDEO_UNDERSTANDING if understanding else DocKind.VIDEO_GENERATION
    return format_vision(kind, text_ids, codes, video_meta(t, h, w, fps, layout), tokenizer, layout)


def _parse_grid(grid: np.ndarray, meta: VisionMeta, offset: int, layout: VisionLayout) -> np.ndarray:
    frames = meta.frames or 1
    h, w = meta.height, meta.width
    expected = frames * (h * (w + 1) + 1)
    if grid.size != expected:
        raise DocumentFormatError(
            f"vision grid at token {offset} has {grid.size} tokens; meta {meta.text()!r} needs {expected}")
    framed = grid.reshape(frames, h * (w + 1) + 1)
    bad_eof = np.flatnonzero(framed[:, -1] != tokens.EOF)
    if bad_eof.size:
        raise DocumentFormatError(f"latent frame {bad_eof[0]} does not end with EOF ({tokens.EOF})")
    rows = framed[:, :-1].reshape(frames, h, w + 1)
    bad_eol = np.argwhere(rows[:, :, -1] != tokens.EOL)
    if bad_eol.size:
        f, r = bad_eol[0]
        raise DocumentFormatError(f"row {r} of latent frame {f} does not end with EOL ({tokens.EOL})")
    codes = rows[:, :, :w]
    if not tokens.is_vision_code(codes, layout).all():
        f, r, c = np.argwhere(~tokens.is_vision_code(codes, layout))[0]
        raise DocumentFormatError(f"token {codes[f, r, c]} at frame {f} row {r} column {c} is not a vision code "
                                  f"of {layout.tokenizer}")
    codes = tokens.id_to_code(codes, layout)
    return codes if meta.is_video else codes[0]


def parse(ids, tokenizer, layout: VisionLayout = EMU3_VISION) -> Document:
    """Split a document's ids back into kind, caption ids, meta and code grid; raises DocumentFormatError."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2 or ids[0] != tokens.BOS or ids[-1] != tokens.EOS:
        raise DocumentFormatError("a document starts with BOS and ends with EOS")
    body = ids[1:-1]
    sov = np.flatnonzero(body == tokens.SOV)
    if sov.size == 0:
        if np.isin(body, [tokens.SOT, tokens.EOV]).any() or tokens.is_vision_code(body, layout).any():
            raise DocumentFormatError("vision tokens outside a SOV ... EOV block")
        return Document(DocKind.TEXT, body)
    if sov.size > 1:
        raise DocumentFormatError(f"{sov.size} vision blocks; an Emu3 document holds one")
    start = int(sov[0])
    eov = np.flatnonzero(body == tokens.EOV)
    sot = np.flatnonzero(body == tokens.SOT)
    if eov.size != 1 or sot.size != 1 or not start < sot[0] < eov[0]:
        raise DocumentFormatError("the vision block is not SOV meta SOT grid EOV")
    end, sot = int(eov[0]), int(sot[0])
    meta = VisionMeta.parse(tokenizer.decode(body[start + 1: sot].tolist()))
    codes = _parse_grid(body[sot + 1: end], meta, offset=sot + 2, layout=layout)
    before, after = body[:start], body[end + 1:]
    if before.size and after.size:
        raise DocumentFormatError("text on both sides of the vision block")
    understanding = before.size == 0 and after.size > 0
    if meta.is_video:
        kind = DocKind.VIDEO_UNDERSTANDING if understanding else DocKind.VIDEO_GENERATION
    else:
        kind = DocKind.IMAGE_UNDERSTANDING if understanding else DocKind.IMAGE_GENERATION
    return Document(kind, after if understanding else before, meta, codes)


# -- interleaved documents -----------------------------------------------------------------------------
#
#     interleaved  BOS segment segment ... EOS
#
# where a segment is text ids or a vision block `SOV meta SOT grid EOV` (image or video), in the order
# of the manifest row. Loss weights are those of generation documents (every token counts; codes at
# vision_loss_weight); packing never splits it (like every vision document).


@dataclasses.dataclass
class Segment:
    """One segment of an interleaved document: text ids, or a vision block's meta and codes."""

    text_ids: np.ndarray | None = None
    meta: VisionMeta | None = None
    codes: np.ndarray | None = None  # (h, w) or (t, h, w)

    @property
    def is_text(self) -> bool:
        return self.meta is None


def interleaved_length(segment_lengths: list[int]) -> int:
    """Tokens of an interleaved document: BOS, EOS and its segments (text ids or whole vision blocks)."""
    return 2 + sum(segment_lengths)


def vision_block_length(meta_len: int, t: int, h: int, w: int) -> int:
    """Tokens of `SOV meta SOT grid EOV`."""
    return 3 + meta_len + t * (h * (w + 1) + 1)


def format_interleaved(segments: list[Segment], tokenizer, layout: VisionLayout = EMU3_VISION) -> np.ndarray:
    """`BOS segment ... EOS`; vision segments become blocks whose meta matches their codes."""
    body = []
    for seg in segments:
        if seg.is_text:
            body.append(np.asarray(seg.text_ids, dtype=np.int64))
        else:
            codes = np.asarray(seg.codes)
            expected = (seg.meta.frames or 1, seg.meta.height, seg.meta.width)
            if (codes.shape if seg.meta.is_video else (1, *codes.shape)) != expected:
                raise ValueError(f"codes of shape {codes.shape} do not match meta {seg.meta.text()!r}")
            body.append(vision_block(codes, tokenizer.encode(seg.meta.text()), layout))
    return np.concatenate([[tokens.BOS], *body, [tokens.EOS]]).astype(np.int64)


def parse_segments(ids, tokenizer, layout: VisionLayout = EMU3_VISION) -> list[Segment]:
    """The segments of any document (an Emu3 document of one block is two or three segments)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2 or ids[0] != tokens.BOS or ids[-1] != tokens.EOS:
        raise DocumentFormatError("a document starts with BOS and ends with EOS")
    body, out, pos = ids[1:-1], [], 0
    while pos < body.size:
        rest = body[pos:]
        sov = np.flatnonzero(rest == tokens.SOV)
        text = rest[: sov[0]] if sov.size else rest
        if np.isin(text, [tokens.SOT, tokens.EOV]).any() or tokens.is_vision_code(text, layout).any():
            raise DocumentFormatError(f"vision tokens outside a SOV ... EOV block (near token {pos + 1})")
        if text.size:
            out.append(Segment(text_ids=text))
        if not sov.size:
            break
        start = pos + int(sov[0])
        eov = np.flatnonzero(body[start:] == tokens.EOV)
        sot = np.flatnonzero(body[start:] == tokens.SOT)
        if not eov.size or not sot.size or not sot[0] < eov[0]:
            raise DocumentFormatError(f"the vision block at token {start + 1} is not SOV meta SOT grid EOV")
        sot_at, end = start + int(sot[0]), start + int(eov[0])
        if (body[start + 1: end] == tokens.SOV).any():
            raise DocumentFormatError(f"the vision block at token {start + 1} opens another before it ends")
        meta = VisionMeta.parse(tokenizer.decode(body[start + 1: sot_at].tolist()))
        out.append(Segment(meta=meta, codes=_parse_grid(body[sot_at + 1: end], meta, sot_at + 2, layout)))
        pos = end + 1
    return out
