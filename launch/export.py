"""Export a DeepSpeed checkpoint as a transformers model folder (config, safetensors weights, tokenizer).

    python launch/export.py CHECKPOINT_DIR OUT_DIR [--tokenizer DIR]

CHECKPOINT_DIR is a checkpoint tag folder (``OUTPUT/checkpoints/step-00000200``) or the checkpoints folder
itself (its latest complete checkpoint is exported). ZeRO-partitioned checkpoints are reassembled into fp32
weights. The result loads with ``BertForMaskedLM.from_pretrained(OUT_DIR)``, ``BertTokenizer.from_pretrained
(OUT_DIR)`` and ``pipeline("fill-mask", model=OUT_DIR)``. OUT_DIR also gets a model card (README.md) with what
the checkpoint, its run config, the run's metrics.jsonl and the corpus's stats.json tell.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def main(argv: list[str] | None = None) -> int:
    """Parse arguments, export, and print where the model went."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", type=Path, help="checkpoint tag folder, or the checkpoints folder")
    parser.add_argument("out_dir", type=Path, help="transformers folder to write")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer folder (default: the checkpoint's hf_config/, else the run's tokenizer)")
    args = parser.parse_args(argv)
    from framework.console import configure_logging
    from framework.training.export import ExportError, export_checkpoint  # torch: only once the arguments parse

    configure_logging(logging.INFO, stream=sys.stderr)
    try:
        out = export_checkpoint(args.checkpoint_dir, args.out_dir, tokenizer_dir=args.tokenizer)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint_dir} to {out} (model card: {out / 'README.md'})")
    print(f'load it with BertForMaskedLM.from_pretrained("{out}") or pipeline("fill-mask", model="{out}")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
