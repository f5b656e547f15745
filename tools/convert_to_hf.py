"""Export a training checkpoint to a Hugging Face directory.

    python tools/convert_to_hf.py --checkpoint runs/x/checkpoints --output hf/x [--vq-dir VQ] [--verify]

Without --vq-dir the result loads as transformers' Emu3ForCausalLM (text model); with it, as
Emu3ForConditionalGeneration with the VQ tokenizer. Tokenizer files are written so AutoTokenizer gives
the training ids. --verify reloads the export with transformers, runs both models on the same random
tokens, prints the largest logit difference and exits 1 above --tolerance (default 1e-4, fp32 maths).
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_emu3.logs import configure_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoints dir (uses 'latest') or an iter_ dir")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--vq-dir", help="Emu3VQVAE directory (save_pretrained) to bundle: Emu3ForConditionalGeneration")
    parser.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default="bf16")
    parser.add_argument("--vocab-size", type=int, help="expected real vocabulary (checked against the checkpoint)")
    parser.add_argument("--max-shard-gb", type=float, default=5.0)
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    configure_logging(fmt="%(levelname)s %(name)s: %(message)s")
    from megatron_emu3.checkpoint.layout import resolve_checkpoint_path

    try:
        resolve_checkpoint_path(args.checkpoint)  # a wrong path fails before seconds of importing torch
    except FileNotFoundError as err:
        print(f"convert_to_hf: {err}", file=sys.stderr)
        return 2

    from megatron_emu3.convert.export import export_to_hf, load_checkpoint_model, report_verify, verify_export

    try:
        summary = export_to_hf(args.checkpoint, args.output, args.vq_dir, args.dtype, args.vocab_size,
                               int(args.max_shard_gb * 2**30))
    except (FileNotFoundError, ValueError) as err:
        print(f"convert_to_hf: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if args.verify:
        from megatron_emu3.convert.export import load_hf_model  # noqa: F401  (import errors surface early)
        from megatron_emu3.parallel.setup import destroy_distributed

        destroy_distributed()
        cfg, gpt, _ = load_checkpoint_model(args.checkpoint)
        diff = verify_export(gpt, cfg, args.output)
        return report_verify(diff, args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
