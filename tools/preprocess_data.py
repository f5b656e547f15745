"""Tokenize a captioned corpus (text, images, videos) into megatron-core IndexedDataset shards.

    python tools/preprocess_data.py --input data/manifest.jsonl --output-prefix shards/demo \
        --vq-dir models/Emu3-VisionTokenizer --workers 2 --report shards/report.json

See docs/preprocessing.md (manifest format, flags, report, resume, Slurm arrays).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
    from megatron_emu3.preprocess.cli import main

    sys.exit(main())
