python bench/bench_attention.py --seqs 256,512 --heads 4 --kv-heads 2 --dim 32 --iters 1 --json WORK/attention.json
