"""The VQ wrapper: 2-D image path == transformers' 4-frame path, videos, batching, decoding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_emu3.data import media
from megatron_emu3.data.vision_tokenizer import Emu3VisionTokenizer, VisionTokenizerError, load_vq_model

from tests.preprocess import corpus


def pictures(n, h=64, w=64):
    return np.stack([media.to_pixel_values(corpus.gradient(w, h, seed=i)) for i in range(n)])


def test_model_is_in_eval_mode(vision_tokenizer):
    assert not vision_tokenizer.model.training
    assert all(not m.training for m in vision_tokenizer.model.modules())


def test_2d_path_codes_equal_4_frame_path(vision_tokenizer):
    x = pictures(3, 64, 48)
    two_d = vision_tokenizer.encode_images(x)
    four = vision_tokenizer.encode_images_as_clips(x)
    assert two_d.shape == (3, 8, 6)
    np.testing.assert_array_equal(two_d, four)
    assert len(np.unique(two_d)) > 3  # not a degenerate constant grid


def test_image_equals_a_video_of_four_identical_frames(vision_tokenizer):
    x = pictures(1)
    clip = np.repeat(x[:, None], 4, axis=1)
    np.testing.assert_array_equal(vision_tokenizer.encode_videos(clip)[:, 0], vision_tokenizer.encode_images(x))


def test_video_codes_shape_and_frame_multiple(vision_tokenizer):
    clip = pictures(8)[None]
    assert vision_tokenizer.encode_videos(clip).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        vision_tokenizer.encode_videos(pictures(6)[None])
    with pytest.raises(ValueError, match="multiple of 8"):
        vision_tokenizer.encode_images(pictures(1, 60, 64))


def test_batching_by_resolution_keeps_order_and_codes(vision_tokenizer):
    images = [pictures(1, 64, 64)[0], pictures(1, 32, 48)[0], media.to_pixel_values(corpus.gradient(64, 64, 5)),
              pictures(1, 32, 48)[0] * 0.5]
    batched = vision_tokenizer.encode_image_list(images, max_batch=8)
    for img, codes in zip(images, batched):
        np.testing.assert_array_equal(codes, vision_tokenizer.encode_images(img[None])[0])


def test_decode_gives_pixels(vision_tokenizer):
    codes = vision_tokenizer.encode_images(pictures(1))[0]
    img = vision_tokenizer.decode(codes)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    video = vision_tokenizer.decode(np.stack([codes, codes]))
    assert video.shape == (8, 64, 64, 3)


def test_missing_or_bad_vq_dir(tmp_path):
    with pytest.raises(VisionTokenizerError, match="no config.json"):
        load_vq_model(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(VisionTokenizerError, match="cannot load"):
        load_vq_model(tmp_path)


@pytest.mark.gpu
def test_gpu_bf16_codes_match_the_2d_and_4_frame_paths(vq_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    vt = Emu3VisionTokenizer.from_dir(vq_dir, device="cuda")
    assert vt.dtype == torch.bfloat16
    x = pictures(4)
    np.testing.assert_array_equal(vt.encode_images(x), vt.encode_images_as_clips(x))


def test_quantize_in_pieces_equals_the_whole_search(vision_tokenizer):
    """Bounded memory: pieces of latent vectors (across frames and rows, or one vector) give the
    quantizer's own codes."""
    import torch

    from megatron_emu3.data.vision_tokenizer import quantize

    model = vision_tokenizer.model
    dim = model.quantize.embedding.embedding_dim
    latents = torch.randn(3, 2, dim, 5, 7, generator=torch.Generator().manual_seed(0))
    whole = model.quantize(latents)
    books = model.quantize.embedding.num_embeddings
    for budget in (5 * 7 * books * 2, 7 * books * 2, 13 * books, 1):  # 2 frames, 2 rows, 13 vectors, 1
        assert torch.equal(quantize(model, latents, max_elements=budget), whole)
    assert torch.equal(quantize(model, latents), whole)  # the CPU default: pieces of 16 vectors
