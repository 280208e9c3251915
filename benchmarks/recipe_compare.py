"""Variants of one recipe trained on a real data set for a fixed budget; one JSON line each.

    python benchmarks/recipe_compare.py --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --epochs 3 --variant momentum --variant adamw --variant momentum_ema \
        --variant adamw_ema --variant distill

Trains with the loop itself (``flaxcls.train.loop.train_and_evaluate``) on class folders
(``train/<class>/*.jpg``, ``test/<class>/*.jpg``; a ``.tar.gz`` of them is unpacked once into
``--cache-dir``) and reports per variant: the final test top-1 (and the EMA's where there is
one), the mean training img/s of the logged windows after the first (the first holds the
compile), the wall time and the run's settings. A variant is a preset name or
``NAME:FIELD=VALUE,FIELD=VALUE`` (config fields, values as on the command line). Presets:

- ``momentum``: the base recipe (SGD momentum 0.9, lr 0.1 per 256 images, L2 5e-4, cosine with
  a 1-epoch warm-up, label smoothing 0.1);
- ``adamw``: AdamW, lr 2e-3 per 256 images, weight_decay 0.05, no L2;
- ``momentum_ema`` / ``adamw_ema``: the same with an EMA of the weights (decay 0.998, warm-up);
- ``distill``: ``--student`` trained from the best variant so far as the teacher (its EMA
  where it had one), ``soft_hard`` at temperature 2, alpha 0.5, with the momentum recipe.

Needs TensorFlow (the tf.data input pipeline); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import statistics
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10-jpeg.tar.gz")

PRESETS = {
    "momentum": {},
    "adamw": {"optimizer": "adamw", "lr": 2e-3, "l2_decay": 0.0, "weight_decay": 0.05},
    "momentum_ema": {"ema_decay": 0.998, "ema_warmup": True},
    "adamw_ema": {"optimizer": "adamw", "lr": 2e-3, "l2_decay": 0.0, "weight_decay": 0.05,
                  "ema_decay": 0.998, "ema_warmup": True},
    "distill": {"distill_loss": "soft_hard", "distill_temperature": 2.0, "distill_alpha": 0.5},
}


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    fields = dict(PRESETS.get(name, {}))
    if not rest and name not in PRESETS:
        raise SystemExit(f"--variant {text!r}: not a preset ({', '.join(PRESETS)}) and no fields")
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: expected FIELD=VALUE, got {item!r}")
        try:
            fields[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            fields[key] = value
    return name, fields


def class_folders(path: str, cache_dir: str) -> str:
    """``path`` itself when it holds train/ and test/, else the unpacked tarball's folder."""
    if os.path.isdir(path):
        for root, dirs, _ in os.walk(path):
            if "train" in dirs and "test" in dirs:
                return root
        raise SystemExit(f"--data-dir {path}: no folder with train/ and test/ under it")
    if not path.endswith((".tar.gz", ".tgz", ".tar")):
        raise SystemExit(f"--data-dir {path}: not found (a folder or a .tar.gz of one)")
    out = os.path.join(cache_dir, os.path.basename(path).split(".")[0])
    if not os.path.isfile(os.path.join(out, ".unpacked")):
        os.makedirs(out, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(out, filter="data")
        open(os.path.join(out, ".unpacked"), "w").close()
    return class_folders(out, cache_dir)


def base_config(args, data_dir: str):
    from flaxcls.config import default_config

    c = default_config()
    c.model, c.num_classes = args.model, 10
    c.data_dir, c.data_source, c.eval_split = data_dir, "folder", "test"
    c.crop_size = c.resize_short_size = 32
    c.lower_scale, c.random_flip = 0.35, True
    c.batch_size, c.test_batch_size = args.batch, 500
    epochs = args.epochs
    c.num_epochs = float(epochs)
    c.warm_up_epochs = min(1.0, epochs / 2)
    c.lr_strategy, c.lr, c.lr_base_batch_size = "cosine_decay_warmup", 0.1, 256
    c.l2_decay = 5e-4
    c.use_label_smoothing, c.label_smoothing_epsilon = True, 0.1
    c.log_every_steps, c.checkpoint_every_steps = 50, 10**9
    c.eval_every_epochs = 10**6
    c.dtype, c.random_seed, c.compilation_cache = args.dtype, args.seed, False
    return c


def train_images_per_sec(workdir: str) -> float | None:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    rates = [r["images_per_sec"] for r in rows if r.get("split") == "train"
             and r.get("images_per_sec")]
    return round(statistics.mean(rates[1:] or rates), 1) if rates else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA,
                   help="class folders (train/, test/) or a .tar.gz of them")
    p.add_argument("--cache-dir", default=os.path.join(REPO, "runs", "data"))
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "recipe_compare"))
    p.add_argument("--model", default="ResNet_tiny")
    p.add_argument("--student", default="ShuffleNetV2_x0_5", help="the distill variant's model")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[],
                   help="a preset or NAME:FIELD=VALUE,...; repeatable, run in order")
    p.add_argument("--csv", default=_common.default_csv("recipe_compare"),
                   help="append results here ('' = don't)")
    p.add_argument("--tag", default="", help="free label stored with each result")
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant or ["momentum", "adamw"]]
    # The loop's progress goes to stderr; stdout keeps the JSON lines only.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("absl").setLevel(logging.WARNING)
    data_dir = class_folders(args.data_dir, args.cache_dir)

    from flaxcls.train.loop import train_and_evaluate

    best: tuple[float, str, str, bool] | None = None  # (top1, workdir, model, has EMA)
    for name, fields in variants:
        c = base_config(args, data_dir)
        fields = dict(fields)
        if name == "distill":
            if best is None:
                raise SystemExit("--variant distill needs a variant before it (its teacher)")
            c.model = args.student
            fields.setdefault("distill_teacher", best[2])
            fields.setdefault("distill_teacher_weights", os.path.join(best[1], "checkpoints"))
        c.update(fields)
        workdir = os.path.join(args.workdir, f"{name}-{args.seed}")
        if os.path.exists(os.path.join(workdir, "checkpoints")):
            raise SystemExit(f"{workdir} has checkpoints of an earlier run: remove it or "
                             "pass another --workdir")
        t0 = time.time()
        result = train_and_evaluate(c, workdir)
        wall = time.time() - t0
        row = {"benchmark": "recipe_compare", "variant": name, "model": c.model,
               "top1": round(result["top1"], 4),
               "top1_raw": round(result.get("raw", result)["top1"], 4),
               "top1_ema": round(result["ema"]["top1"], 4) if "ema" in result else None,
               "epochs": args.epochs, "batch": args.batch, "dtype": args.dtype,
               "train_images_per_sec": train_images_per_sec(workdir),
               "wall_s": round(wall, 1), "fields": json.dumps(fields, sort_keys=True),
               "data_dir": args.data_dir, "seed": args.seed, "tag": args.tag,
               **_common.run_info()}
        _common.emit(row, args.csv)
        if name != "distill" and (best is None or result["top1"] > best[0]):
            best = (result["top1"], workdir, c.model, "ema" in result)


if __name__ == "__main__":
    main()
