"""Offline sharded jobs, shared by preprocessing (`preprocess/`) and curation (`curate/`): the work
plan (manifests cut into row ranges, the Slurm slice) and the worker pool that runs shards in
processes and names the shards of a worker that died."""
