"""Motion of a clip from dense optical flow (OpenCV's Farneback) between consecutive frames.

The paper filters with RAFT; Farneback is the CPU-friendly dense flow of OpenCV and gives the same
kind of number. Frames are resampled to `fps` and scaled to `short_side` pixels, so the score is in
short sides per second whatever the clip's resolution and rate. A flow that cannot explain the next
frame (large warp residual) means motion too fast to track: such a clip is dropped as too fast even
if the flow it found is small (Farneback under-estimates displacements it cannot follow).
"""

from __future__ import annotations

import numpy as np

from megatron_emu3.curate.rules import MotionRule


class MotionUnavailable(RuntimeError):
    """The motion rule is on but OpenCV is missing."""


def motion_scores(frames: list[np.ndarray], fps: float) -> dict[str, float]:
    """{"motion": mean flow magnitude in short sides per second, "flow_residual": mean |warped - frame|}."""
    try:
        import cv2
    except ImportError as err:
        raise MotionUnavailable(f"the motion rule needs opencv-python-headless ({err}); pip install -e "
                                "'.[curate]' or set video.motion.enabled: false") from err
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    h, w = grey[0].shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    magnitudes, residuals = [], []
    for a, b in zip(grey, grey[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 3, 5, 1.2, 0)
        magnitudes.append(float(np.linalg.norm(flow, axis=-1).mean()))
        warped = cv2.remap(b, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        residuals.append(float(np.abs(warped.astype(np.float32) - a).mean()))
    short = min(h, w)
    return {"motion": round(float(np.mean(magnitudes)) / short * fps, 4),
            "flow_residual": round(float(np.mean(residuals)), 3)}


def check_motion(rule: MotionRule, scores: dict[str, float]):
    if scores["motion"] < rule.min_score:
        return ("video.motion.static", scores["motion"], f"motion {scores['motion']} < {rule.min_score} short sides/s")
    if scores["flow_residual"] > rule.max_residual:
        return ("video.motion.too_fast", scores["flow_residual"],
                f"flow residual {scores['flow_residual']} > {rule.max_residual}: motion too fast to track")
    if scores["motion"] > rule.max_score:
        return ("video.motion.too_fast", scores["motion"], f"motion {scores['motion']} > {rule.max_score} short sides/s")
    return None
