python bench/bench_ring_attention.py --seq 256 --cp 1,2 --docs 1,2 --heads 4 --groups 2 --head-dim 32 --iters 1 --json WORK/ring.json
