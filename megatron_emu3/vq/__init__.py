"""Training and evaluating the Emu3 vision tokenizer (transformers' Emu3VQVAE): see docs/vq_training.md."""
