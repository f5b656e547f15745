"""Import a Hugging Face Emu3 checkpoint (e.g. a released stage-1 model) to start training from it.

    python tools/convert_from_hf.py --hf DIR --output runs/init/checkpoints [--tp 2] [--pp 2] [--recipe R] [--verify]

Writes a model-only checkpoint (iter_0000000 + latest) in megatron-core's layout-independent format
(load it from any layout with checkpoint.load_weights_from=OUTPUT: tensors are stored by global layer,
so any tensor or pipeline split reads it); --tp/--cp/--pp record the layout in its config.yaml. --verify runs transformers' model and ours on the same random tokens, prints the largest
logit difference and exits 1 above --tolerance (default 1e-4, fp32 maths).
"""

from __future__ import annotations

import argparse
import sys

from megatron_emu3.logs import configure_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="Hugging Face Emu3 directory")
    parser.add_argument("--output", required=True, help="checkpoints directory to write")
    parser.add_argument("--recipe", help="recipe whose non-model settings the saved config.yaml takes")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--cp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1, help="pipeline stages recorded in config.yaml")
    parser.add_argument("--vocab-size", type=int, help="expected vocabulary (checked against the HF config)")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    configure_logging(fmt="%(levelname)s %(name)s: %(message)s")
    from megatron_emu3.convert.hf_config import check_emu3_directory

    try:
        check_emu3_directory(args.hf)  # a wrong directory fails before seconds of importing torch and transformers
    except (FileNotFoundError, ValueError) as err:
        print(f"convert_from_hf: {err}", file=sys.stderr)
        return 2

    from megatron_emu3.convert.export import load_hf_model, max_logit_difference, report_verify
    from megatron_emu3.convert.import_hf import import_from_hf

    try:
        cfg, gpt, path = import_from_hf(args.hf, args.output, args.recipe,
                                        [f"parallel.tp={args.tp}", f"parallel.cp={args.cp}",
                                                                  f"parallel.pp={args.pp}"], args.vocab_size)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"convert_from_hf: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    if args.verify:
        hf_model, _ = load_hf_model(args.hf)
        diff = max_logit_difference(gpt, hf_model, cfg.model.vocab_size)
        return report_verify(diff, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
