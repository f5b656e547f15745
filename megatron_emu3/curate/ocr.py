"""Text area from a real OCR text detector that runs offline: PaddleOCR's PP-OCRv4 detection model
(ONNX) as shipped inside the `rapidocr-onnxruntime` wheel, run by its own DB detector.

The measured value is the fraction of the picture covered by the detected text boxes (their union).
The package is imported on first use; a missing package with the rule on is one clear error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OcrUnavailable(RuntimeError):
    """The OCR rule is on but its package or model is missing."""


class TextAreaDetector:
    def __init__(self, model_path: str | None = None, threads: int = 1):
        try:
            import cv2
            import rapidocr_onnxruntime
            import yaml
            from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
        except ImportError as err:
            raise OcrUnavailable(
                f"the OCR rule needs rapidocr-onnxruntime ({err}); pip install -e '.[curate]' or turn "
                "image.ocr / video.ocr off in the rules file") from err
        package = Path(rapidocr_onnxruntime.__file__).parent
        config = yaml.safe_load((package / "config.yaml").read_text())["Det"]
        config["model_path"] = model_path or str(package / config["model_path"])
        if not Path(config["model_path"]).is_file():
            raise OcrUnavailable(f"OCR detection model {config['model_path']} does not exist")
        config["intra_op_num_threads"] = config["inter_op_num_threads"] = threads
        self._cv2 = cv2
        self._detector = TextDetector(config)
        self.model = Path(config["model_path"]).name

    def text_area(self, rgb: np.ndarray) -> float:
        """Fraction (0-1) of an RGB uint8 picture covered by detected text."""
        boxes, _ = self._detector(np.ascontiguousarray(rgb[:, :, ::-1]))  # the detector takes BGR
        if boxes is None or len(boxes) == 0:
            return 0.0
        mask = np.zeros(rgb.shape[:2], np.uint8)
        self._cv2.fillPoly(mask, [np.asarray(b, dtype=np.int32) for b in boxes], 1)
        return round(float(mask.mean()), 4)
