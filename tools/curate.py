"""Curate a captioned image/video corpus with the paper's filters before preprocessing.

    python tools/curate.py --input data/raw.jsonl --output-prefix curated/web \
        --config examples/curation/rules.yaml --workers 4
    python tools/preprocess_data.py --input curated/web_kept.jsonl --output-prefix shards/web --vq-dir ...

See docs/curation.md (rules and their defaults, outputs, report, resume, Slurm arrays).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
    from megatron_emu3.curate.cli import main

    sys.exit(main())
