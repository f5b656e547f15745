"""Scene splitting: PySceneDetect finds the cuts (AdaptiveDetector by default: ContentDetector alone
takes a fast camera pan for a string of cuts), PyAV writes each scene as its own clip file.

A clip whose start and end fall on keyframes of the source (or the end of the file) is a stream copy
of those packets, bit-exact and instant; any other cut is re-encoded (H.264, yuv420p, CRF 18) from
the decoded frames of the scene. The row of a clip records which of the two happened.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

from megatron_emu3.curate.rules import ScenesRule
from megatron_emu3.curate.video import Probe, video_error
from megatron_emu3.data.media import MediaError

KEYFRAME_TOLERANCE = 1e-3  # seconds


class ScenesUnavailable(RuntimeError):
    """Scene splitting is on but PySceneDetect (or OpenCV) is missing."""


def detect_scenes(path: str | Path, rule: ScenesRule, info: Probe) -> list[tuple[float, float]]:
    """[(start, end)] in seconds from the first frame, covering the whole video; one span without cuts."""
    if not rule.enabled:
        return [(0.0, info.seconds)]
    try:
        from scenedetect import AdaptiveDetector, ContentDetector, detect
    except ImportError as err:
        raise ScenesUnavailable(f"scene splitting needs PySceneDetect ({err}); pip install -e '.[curate]' or set "
                                "video.scenes.enabled: false") from err
    min_len = max(1, round(rule.min_scene_seconds * info.fps))
    try:
        if rule.detector == "adaptive":
            detector = AdaptiveDetector(adaptive_threshold=rule.threshold or 3.0, min_scene_len=min_len)
        else:
            detector = ContentDetector(threshold=rule.threshold or 27.0, min_scene_len=min_len)
        scenes = detect(str(path), detector)
    except Exception as err:  # noqa: BLE001 - OpenCV/scenedetect raise many kinds; the row is reported
        raise MediaError(f"scene detection failed ({type(err).__name__}: {err})") from err
    if not scenes:
        return [(0.0, info.seconds)]
    cuts = [round(float(start.seconds), 6) for start, _ in scenes[1:]]
    bounds = [0.0, *cuts, info.seconds]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _at_keyframe(t: float, info: Probe) -> bool:
    return t >= info.seconds - KEYFRAME_TOLERANCE or any(abs(t - k) <= KEYFRAME_TOLERANCE for k in info.keyframes)


def write_clip(src: str | Path, dst: Path, start: float, end: float, info: Probe) -> str:
    """Write [start, end) of `src` to `dst` (atomically); returns "copy" or "reencode"."""
    import av

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial{dst.suffix}")
    method = "copy" if _at_keyframe(start, info) and _at_keyframe(end, info) else "reencode"
    try:
        (_copy if method == "copy" else _reencode)(av, str(src), str(tmp), start, end, info)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise video_error(err) from err
    os.replace(tmp, dst)
    return method


def _copy(av, src: str, dst: str, start: float, end: float, info: Probe) -> None:
    """Remux the packets of [start, end), timestamps shifted to start at 0."""
    lo, hi = info.first_pts + round(start / info.time_base), info.first_pts + round(end / info.time_base)
    with av.open(src) as inp, av.open(dst, mode="w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        inp.seek(lo, stream=in_stream, backward=True)  # the keyframe at or before the start
        for packet in inp.demux(in_stream):
            if packet.pts is None or not lo <= packet.pts < hi:
                continue
            packet.pts -= lo
            if packet.dts is not None:
                packet.dts -= lo
            packet.stream = out_stream
            out.mux(packet)


def _reencode(av, src: str, dst: str, start: float, end: float, info: Probe) -> None:
    """Decode the frames of [start, end) and encode them as H.264 at the source's frame rate."""
    first, base = info.first_pts, info.time_base
    rate = Fraction(info.fps).limit_denominator(1001)
    with av.open(src) as inp, av.open(dst, mode="w") as out:
        in_stream = inp.streams.video[0]
        inp.seek(first + round(start / base), stream=in_stream, backward=True)  # the keyframe at or before the start
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = info.width - info.width % 2, info.height - info.height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        index = 0
        for frame in inp.decode(in_stream):
            t = float((frame.pts - first) * base) if frame.pts is not None else index / info.fps
            if t + KEYFRAME_TOLERANCE < start:
                continue
            if t >= end - KEYFRAME_TOLERANCE:
                break
            image = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            image.pts, image.time_base = index, Fraction(1) / rate
            for packet in stream.encode(image):
                out.mux(packet)
            index += 1
        for packet in stream.encode():
            out.mux(packet)
