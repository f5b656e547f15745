"""Offline preprocessing: manifests of captioned text/images/videos -> IndexedDataset shards.

`manifest` reads and validates rows, `plan` cuts shards and applies the duplicate rule and the Slurm
slice, `worker` turns rows into documents, `shards` writes them atomically, `runner` fans out to
worker processes and builds the report, `cli` is tools/preprocess_data.py, `inspect` is
tools/inspect_data.py. Usage: docs/preprocessing.md.
"""
