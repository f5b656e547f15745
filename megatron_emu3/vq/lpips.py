"""LPIPS (Zhang et al. 2018, the VGG-16 variant) in plain torch: no torchvision, nothing downloaded.

The weights come from a local path in the standard layouts:
- a directory holding `vgg16.pth` (torchvision's VGG-16 state dict: `features.N.weight/bias`; the
  classifier is ignored) and `vgg.pth` (the LPIPS lin layers, `linK.model.1.weight`, as shipped in
  the `lpips` package under weights/v0.1/ and in taming-transformers);
- or one file holding both: the `lpips` package's full `LPIPS` state dict (`net.sliceK.N.*`,
  `linK.model.1.weight`) or the two dicts above merged.
`save_random_weights` writes a RANDOM backbone in the first layout: for tests only, where the
distance is a deterministic but meaningless number.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# torchvision's vgg16().features: conv channel counts, "M" = max-pool
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS = (64, 128, 256, 512, 512)
SLICE_STARTS = (0, 4, 9, 16, 23)  # the lpips package's net.slice1..5 start at these feature indices


class LPIPSWeightsError(ValueError):
    """Weights that do not fit LPIPS-VGG; the message says what was expected."""


def vgg16_features() -> nn.Sequential:
    layers, in_ch = [], 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Perceptual distance of images in [-1, 1]: (N, 3, H, W) x2 -> (N,). Frozen."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features[:TAPS[-1] + 1]):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for lin, fa, fb in zip(self.lins, self._taps(a), self._taps(b)):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fa - fb).pow(2)).mean(dim=(2, 3))
        return total.flatten()

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)


def _standard_keys(state: dict, source: str) -> dict:
    """Any supported layout -> this module's keys (features.N.*, lins.K.weight)."""
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(?:module\.)?features\.(\d+)\.(weight|bias)", key):
            out[f"features.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"(?:module\.)?net\.slice(\d)\.(\d+)\.(weight|bias)", key):
            out[f"features.{m[2]}.{m[3]}"] = value
        elif m := re.fullmatch(r"(?:module\.)?lin(\d)\.model\.1\.weight", key):
            out[f"lins.{m[1]}.weight"] = value
        elif m := re.fullmatch(r"lins\.(\d)\.weight", key):
            out[key] = value
    if not out:
        raise LPIPSWeightsError(f"{source} holds no VGG-16 or LPIPS keys (found e.g. {list(state)[:3]})")
    return out


def _read(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LPIPSWeightsError(f"cannot read LPIPS weights {path}: {type(err).__name__}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LPIPSWeightsError(f"{path} is not a state dict")
    return _standard_keys(state, str(path))


def load_lpips(path: str | Path, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with the weights at `path` (a directory with vgg16.pth + vgg.pth, or one file)."""
    path = Path(path)
    if path.is_dir():
        files = [path / "vgg16.pth", path / "vgg.pth"]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise LPIPSWeightsError(f"LPIPS weights directory {path} lacks {missing}: it needs vgg16.pth "
                                    "(torchvision VGG-16) and vgg.pth (the LPIPS lin layers)")
        state = {**_read(files[0]), **_read(files[1])}
    elif path.is_file():
        state = _read(path)
    else:
        raise LPIPSWeightsError(f"LPIPS weights {path} do not exist")
    model = LPIPS()
    expected = {k for k in model.state_dict() if k not in ("shift", "scale")}
    missing = sorted(expected - set(state))
    if missing:
        raise LPIPSWeightsError(f"LPIPS weights at {path} lack {len(missing)} tensors (e.g. {missing[:3]}); "
                                "give both the VGG-16 features and the lin layers")
    for key, value in state.items():
        if tuple(value.shape) != tuple(model.state_dict()[key].shape):
            raise LPIPSWeightsError(f"LPIPS weights at {path}: {key} has shape {tuple(value.shape)}, "
                                    f"expected {tuple(model.state_dict()[key].shape)}")
    model.load_state_dict(state, strict=False)
    logger.info("LPIPS (VGG-16) weights from %s", path)
    return model.to(device)


def save_random_weights(directory: str | Path, seed: int = 0) -> Path:
    """A RANDOM-backbone LPIPS in the standard directory layout (tests only: not a perceptual metric)."""
    torch.manual_seed(seed)
    model = LPIPS()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")}, directory / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": lin.weight.abs() for i, lin in enumerate(model.lins)}, directory / "vgg.pth")
    return directory
