"""megatron-emu3: pretraining Emu3-class multimodal models on megatron-core."""

from megatron_emu3 import mcore_jit

mcore_jit.install()
