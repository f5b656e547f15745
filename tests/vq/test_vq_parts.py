"""The VQ trainer's parts on tiny real objects: the training forward matches transformers'
encode/decode, LPIPS loads the standard layouts, PSNR/SSIM match scikit-image, the data order is a
function of the step, and bad configs fail with errors that name the key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megatron_emu3.config.loading import ConfigError
from megatron_emu3.data.vision_tokenizer import Emu3VisionTokenizer, tiny_vq_config
from megatron_emu3.vq import config as vq_config, data, lpips as lpips_mod, quality
from megatron_emu3.vq.model import vq_forward
from tests.media_samples import pan_frames, photo, save_photo


@pytest.fixture(scope="module")
def model():
    from transformers import Emu3VQVAE

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Emu3VQVAE(tiny_vq_config()).eval()


def _photo_pixels(name: str, size: int = 32) -> torch.Tensor:
    img = np.array(photo(name).convert("RGB").resize((size, size)))
    return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1


@torch.no_grad()
def test_training_forward_is_transformers_encode_and_decode(model):
    tok = Emu3VisionTokenizer(model)
    stills = torch.stack([_photo_pixels("astronaut"), _photo_pixels("coffee")])
    out = vq_forward(model, stills[:, None], still=True)
    codes = tok.encode_images_as_clips(stills)  # transformers' own 4-repeated-frame path
    assert np.array_equal(out.codes[:, 0].numpy(), codes)
    torch.testing.assert_close(out.recon[:, 0], model.decode(torch.from_numpy(codes)), rtol=1e-4, atol=1e-4)
    clip = torch.from_numpy(np.stack(pan_frames("rocket", 4, (32, 32)))).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = vq_forward(model, clip[None], still=False)
    video_codes = tok.encode_videos(clip[None])
    assert np.array_equal(out.codes.numpy(), video_codes)
    torch.testing.assert_close(out.recon, model.decode(torch.from_numpy(video_codes)), rtol=1e-4, atol=1e-4)
    # the losses of the quantiser: both are ||z - e||^2 in value
    assert out.codebook_loss > 0 and torch.isclose(out.codebook_loss, out.commitment_loss)


def test_straight_through_reaches_the_encoder_and_the_codebook(model):
    model.zero_grad()
    out = vq_forward(model, _photo_pixels("chelsea")[None, None], still=True)
    (out.recon.pow(2).mean() + out.codebook_loss + 0.25 * out.commitment_loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    used = model.quantize.embedding.weight.grad.abs().sum(1) > 0
    assert used.sum() == len(torch.unique(out.codes))  # only the chosen codes move
    model.zero_grad()


def test_lpips_layouts_and_errors(tmp_path):
    weights = lpips_mod.save_random_weights(tmp_path / "random_lpips")
    a, b = _photo_pixels("astronaut", 64)[None], _photo_pixels("camera", 64)[None]
    net = lpips_mod.load_lpips(weights)
    assert float(net(a, a)) == 0.0 and float(net(a, b)) > 0
    # the lpips package's single-file layout (net.sliceK.N.*, linK.model.1.weight) gives the same number
    vgg = torch.load(weights / "vgg16.pth")
    lins = torch.load(weights / "vgg.pth")
    def slice_of(key):  # features.N.* -> net.sliceK.N.*
        return sum(int(key.split(".")[1]) >= start for start in lpips_mod.SLICE_STARTS)

    full = {f"net.slice{slice_of(key)}.{key.split('.', 1)[1]}": v for key, v in vgg.items()}
    full.update(lins)
    torch.save(full, tmp_path / "lpips_full.pth")
    assert torch.equal(lpips_mod.load_lpips(tmp_path / "lpips_full.pth")(a, b), net(a, b))
    (weights / "vgg.pth").unlink()
    with pytest.raises(lpips_mod.LPIPSWeightsError, match="lacks"):
        lpips_mod.load_lpips(weights)
    torch.save(vgg, tmp_path / "only_vgg.pth")
    with pytest.raises(lpips_mod.LPIPSWeightsError, match="lin"):
        lpips_mod.load_lpips(tmp_path / "only_vgg.pth")


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = np.asarray(photo("coffee").convert("RGB").resize((64, 48)))
    noisy = np.clip(ref.astype(int) + np.random.default_rng(0).integers(-30, 30, ref.shape), 0, 255).astype(np.uint8)
    t = lambda x: torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float()  # noqa: E731
    assert float(quality.psnr(t(ref), t(noisy))) == pytest.approx(peak_signal_noise_ratio(ref, noisy), abs=1e-6)
    expected = structural_similarity(ref, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=2)
    # scikit-image averages over the image minus a 3-pixel border of its padded result; we use the valid region
    assert float(quality.ssim(t(ref), t(noisy))) == pytest.approx(expected, abs=0.01)
    assert float(quality.ssim(t(ref), t(ref))) == pytest.approx(1.0)


def test_samples_depend_only_on_seed_and_index(tmp_path):
    rows = [{"text": n, "image": save_photo(tmp_path / f"{n}.jpg", n).name} for n in ("astronaut", "coffee", "rocket")]
    rows.append({"text": "just text"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, left_out = data.read_items([str(tmp_path / "m.jsonl")])
    assert len(items) == 3 and left_out == {"text-only rows": 1}
    cfg = vq_config.DataConfig(resolution=32, short_side_scale=[1.0, 3.0])
    a, b = data.TrainSamples(items, cfg, 7), data.TrainSamples(items, cfg, 7)
    for index in (5, 0, 4):
        assert torch.equal(a[index]["pixels"], b[index]["pixels"])
    assert a[0]["pixels"].shape == (1, 3, 32, 32)
    # DP=2 with micro-batch 1 reads what one rank with micro-batch 2 reads, step by step
    one = [data.sample_indices(s, m, 0, 1, 2, 2) for s in range(3) for m in range(2)]
    two = [data.sample_indices(s, m, r, 2, 1, 2) for s in range(3) for m in range(2) for r in range(2)]
    assert sum(one, []) == sum(two, [])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'loss.lpips_wieght'"):
        vq_config.resolve(None, ["data.manifests=[a.jsonl]", "loss.lpips_wieght=1"])
    with pytest.raises(ConfigError, match="loss.lpips_weights"):
        vq_config.resolve(None, ["data.manifests=[a.jsonl]", "loss.lpips_weight=1"])
    with pytest.raises(ConfigError, match="clip_frames"):
        vq_config.resolve(None, ["data.manifests=[a.jsonl]", "loss.lpips_weight=0", "data.clip_frames=6"])
    cfg = vq_config.resolve(None, ["data.manifests=[a.jsonl]", "loss.lpips_weight=0", "optim.lr=1e-3"])
    assert cfg.optim.lr == 1e-3


def test_paper_recipe_resolves(tmp_path, monkeypatch):
    from pathlib import Path

    recipe = str(Path(__file__).resolve().parents[2] / "examples/recipes/vq_emu3.yaml")
    monkeypatch.delenv("EMU3_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setenv("EMU3_VQ_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match="unset environment variable"):
        vq_config.resolve(recipe)
    monkeypatch.setenv("EMU3_LPIPS_WEIGHTS", str(lpips_mod.save_random_weights(tmp_path / "random_lpips")))
    cfg = vq_config.resolve(recipe)
    assert cfg.model.preset == "emu3" and cfg.data.manifests[0] == f"{tmp_path}/images.jsonl"
    assert cfg.loss.l2_weight > 0 and cfg.loss.lpips_weight > 0 and cfg.loss.disc_weight > 0
    assert cfg.loss.commitment_beta > 0 and cfg.disc.clips == "3d" and cfg.data.clip_frames % 4 == 0
