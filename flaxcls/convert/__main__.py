"""Convert released weights to a flaxcls checkpoint.

    python -m flaxcls.convert paddle ResNet50_vd_pretrained.tar --model ResNet50_vd \
        --out weights/resnet50_vd

then ``python launch.py --mode=eval ... --config.pretrained_model=weights/resnet50_vd``.
A user error (missing file, unreadable weights, tensors that don't fit the model) prints one
message and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flaxcls.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    paddle = sub.add_parser("paddle", help="Paddle 2019 weights (.tar/.tar.gz/.zip, a folder of "
                                           "per-variable files, a combined file, .pdparams)")
    paddle.add_argument("file", help="the downloaded weights, e.g. ResNet50_vd_pretrained.tar")
    paddle.add_argument("--model", required=True, help="registered model name, e.g. ResNet50_vd")
    paddle.add_argument("--out", required=True, help="output folder (created; must not hold a "
                                                      "checkpoint already)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stdout, force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    from flaxcls.convert.importer import SIDECAR, convert_to_checkpoint

    try:
        sidecar = convert_to_checkpoint(args.file, args.model, args.out)
    except (ValueError, OSError) as e:  # WeightFileError, conversion and registry errors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {sidecar['model']} ({sidecar['num_classes']} classes) to {args.out} "
          f"(see {SIDECAR}); use --config.pretrained_model={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
