"""The rules file (YAML): every rule on/off with its thresholds; defaults are the paper's where it gives one.

The paper (Emu3, Section 2.1) gives: images at least 512x512, LAION aesthetics above 5.5, OCR- and
colour-based filters for text-heavy or monochrome pictures; videos split into scenes with
PySceneDetect, an OCR filter, motion filtering with optical flow, aesthetics, and a frame-sampling
rule by clip length. Where it gives no number (the OCR area, the colour limits, the motion range,
clip lengths, the sampling table), the defaults below are ours and docs/curation.md says so.
Unknown keys are errors, so a typo cannot silently turn a rule off.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


class RulesError(ValueError):
    """A rules file the run cannot use (the message names the key and what to do)."""


@dataclasses.dataclass(frozen=True)
class SizeRule:
    """Image resolution: both sides at least `min_side` and the area at least `min_area` pixels."""
    enabled: bool = True
    min_side: int = 512
    min_area: int = 512 * 512


@dataclasses.dataclass(frozen=True)
class ColourRule:
    """Monochrome (grey) / low-saturation / near-uniform pictures, measured on a 256-px thumbnail."""
    enabled: bool = True
    min_chroma: float = 1.0  # mean |pixel - its grey value| (0-255); below: monochrome
    min_saturation: float = 0.08  # mean HSV saturation (0-1); below: washed out
    min_luma_std: float = 8.0  # standard deviation of the luma (0-255); below: near-uniform


@dataclasses.dataclass(frozen=True)
class OcrRule:
    """Text-heavy pictures: fraction of the area covered by detected text boxes (max over sampled frames)."""
    enabled: bool = True
    max_text_area: float = 0.15


@dataclasses.dataclass(frozen=True)
class AestheticsRule:
    """LAION aesthetic predictor (MLP on CLIP ViT-L/14 image embeddings); mean over sampled frames."""
    enabled: bool = True
    min_score: float = 5.5


@dataclasses.dataclass(frozen=True)
class DedupRule:
    """Near-duplicate images: DCT perceptual hash within `max_distance` bits of an earlier kept image."""
    enabled: bool = True
    max_distance: int = 6


@dataclasses.dataclass(frozen=True)
class ScenesRule:
    """PySceneDetect: "adaptive" (AdaptiveDetector, default) or "content" (ContentDetector); each scene
    is written as its own clip file. threshold null = the detector's own default (3.0 / 27.0)."""
    enabled: bool = True
    detector: str = "adaptive"
    threshold: float | None = None
    min_scene_seconds: float = 0.5


@dataclasses.dataclass(frozen=True)
class ClipLengthRule:
    enabled: bool = True
    min_seconds: float = 2.0
    max_seconds: float = 60.0


@dataclasses.dataclass(frozen=True)
class MotionRule:
    """Dense optical flow (OpenCV Farneback) between frames resampled to `fps` at `short_side` pixels.

    score = mean flow magnitude in short sides per second; residual = mean |next frame warped back by
    the flow - frame| (0-255): high when the flow cannot explain the change (motion too fast to track)."""
    enabled: bool = True
    fps: float = 8.0
    short_side: int = 128
    min_score: float = 0.01
    max_score: float = 1.0
    max_residual: float = 20.0


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Frames sampled per clip for OCR / aesthetics (and recorded per row): the first row of `table`
    whose `max_seconds` is >= the clip length (null = no limit) gives the frame count, spread evenly."""
    table: tuple = ((10.0, 4), (30.0, 8), (None, 16))


@dataclasses.dataclass(frozen=True)
class Models:
    """Local model files (nothing is downloaded). Without `clip_dir` + `aesthetic_mlp` the aesthetics
    rules are off and the report says so; `ocr_det_model` defaults to the ONNX model inside the
    rapidocr-onnxruntime wheel."""
    clip_dir: str | None = None
    aesthetic_mlp: str | None = None
    ocr_det_model: str | None = None


@dataclasses.dataclass(frozen=True)
class ImageRules:
    size: SizeRule = SizeRule()
    colour: ColourRule = ColourRule()
    ocr: OcrRule = OcrRule()
    aesthetics: AestheticsRule = AestheticsRule()
    dedup: DedupRule = DedupRule()


@dataclasses.dataclass(frozen=True)
class VideoRules:
    scenes: ScenesRule = ScenesRule()
    length: ClipLengthRule = ClipLengthRule()
    motion: MotionRule = MotionRule()
    ocr: OcrRule = OcrRule()
    aesthetics: AestheticsRule = AestheticsRule()
    sampling: Sampling = Sampling()


@dataclasses.dataclass(frozen=True)
class Rules:
    image: ImageRules = ImageRules()
    video: VideoRules = VideoRules()
    models: Models = Models()

    def aesthetics_available(self) -> bool:
        return bool(self.models.clip_dir and self.models.aesthetic_mlp)

    def content(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise RulesError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value, key)
        elif name == "table":
            values[name] = _sampling_table(value, key)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise RulesError(f"{key}: expected true/false, got {value!r}")
            values[name] = value
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RulesError(f"{key}: expected a number, got {value!r}")
            values[name] = type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
        elif name == "detector":
            if value not in ("adaptive", "content"):
                raise RulesError(f"{key}: expected adaptive or content, got {value!r}")
            values[name] = value
        elif name == "threshold":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RulesError(f"{key}: expected a number or null, got {value!r}")
            values[name] = None if value is None else float(value)
        else:  # optional paths
            if value is not None and not isinstance(value, str):
                raise RulesError(f"{key}: expected a path string or null, got {value!r}")
            values[name] = value
    return cls(**values)


def _sampling_table(value, key: str) -> tuple:
    if not isinstance(value, list) or not value:
        raise RulesError(f"{key}: expected a list of [max_seconds or null, frames] pairs")
    table = []
    for i, entry in enumerate(value):
        if not (isinstance(entry, list) and len(entry) == 2 and (entry[0] is None or isinstance(entry[0], (int, float)))
                and isinstance(entry[1], int) and entry[1] >= 1):
            raise RulesError(f"{key}[{i}]: expected [max_seconds or null, frames >= 1], got {entry!r}")
        table.append((None if entry[0] is None else float(entry[0]), int(entry[1])))
    if table[-1][0] is not None:
        raise RulesError(f"{key}: the last row must have max_seconds null (it covers every longer clip)")
    return tuple(table)


def load_rules(path: str | Path | None) -> Rules:
    """The rules from a YAML file (None: every default)."""
    if path is None:
        return Rules()
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RulesError(f"rules file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RulesError(f"rules file {path} is not valid YAML ({err})") from err
    rules = _build(Rules, data or {}, str(path))
    for where, motion in (("video.motion", rules.video.motion),):
        if motion.min_score > motion.max_score:
            raise RulesError(f"{path}: {where}.min_score {motion.min_score} is above max_score {motion.max_score}")
    if rules.video.length.min_seconds > rules.video.length.max_seconds:
        raise RulesError(f"{path}: video.length.min_seconds is above max_seconds")
    models = rules.models
    if bool(models.clip_dir) != bool(models.aesthetic_mlp):
        raise RulesError(f"{path}: models.clip_dir and models.aesthetic_mlp go together; give both or neither")
    base = path.parent
    resolved = {k: (str((base / v).resolve()) if v else v) for k, v in dataclasses.asdict(models).items()}
    return dataclasses.replace(rules, models=Models(**resolved))


def frames_for_length(sampling: Sampling, seconds: float) -> int:
    """The frame count the sampling table gives a clip of `seconds`."""
    for limit, frames in sampling.table:
        if limit is None or seconds <= limit:
            return frames
    return sampling.table[-1][1]
