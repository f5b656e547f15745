python -m megatron_emu3.train --config examples/recipes/tiny.yaml run_dir=WORK/tiny_run train.iters=4 checkpoint.save_at_end=false
