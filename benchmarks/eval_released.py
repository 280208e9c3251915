"""Convert every released Paddle file in a folder and evaluate each on ImageNet val; print a table.

    python benchmarks/eval_released.py --weights_dir downloads/ --data_dir /data/ILSVRC2012 \
        --work_dir runs/released

``--weights_dir`` holds the files as downloaded: the 2019 release's ``<Model>_pretrained.tar``
and PaddleClas's ``<Name>_pretrained.pdparams`` (the model name is taken from the file name;
``DarkNet53_ImageNet1k_pretrained.tar`` is DarkNet53; a PaddleClas name such as
``ResNet50_vd_ssld`` is its registry alias, and its published figures are PaddleClas's for that
release, ``flaxcls.registry.PADDLECLAS_ALIASES``, not the 2019 ones of the network). Each one is
converted to ``<work_dir>/weights/<Name>`` (reused when its sidecar names the same source
sha256) and evaluated by the trainer's own evaluation (``flaxcls.evaluate.run_eval``,
as ``launch.py --mode=eval --config.pretrained_model=...``) with the model's own preprocessing
(resize short side, center crop, mean/std from its ModelCfg). ``--data_dir`` is read as
``launch.py`` reads it: ``val_list.txt`` (``path label`` lines) or class folders under
``val/``. Prints a markdown table of our top-1/top-5 next to the published figures and
writes ``<work_dir>/results.json``. ``--set field=value`` overrides any config field.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUFFIXES = ("_pretrained.tar", "_pretrained.pdparams")
# Release file names that are not "<registered name>_pretrained.tar".
FILE_ALIASES = {"DarkNet53_ImageNet1k": "DarkNet53"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights_dir", required=True,
                   help="folder of <Model>_pretrained.tar / .pdparams files")
    p.add_argument("--data_dir", required=True, help="ImageNet folder with val_list.txt or val/")
    p.add_argument("--work_dir", default="runs/released", help="converted weights and results")
    p.add_argument("--data_source", default="auto", choices=("auto", "list", "folder"))
    p.add_argument("--val_list", default="val_list.txt")
    p.add_argument("--batch_size", type=int, default=100, help="global eval batch")
    p.add_argument("--models", default="*", help="comma list of file-name patterns (ResNet50*)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (repeatable), e.g. --set dtype=bfloat16")
    args = p.parse_args(argv)
    if not Path(args.weights_dir).is_dir():
        p.error(f"--weights_dir {args.weights_dir}: not a folder")
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r}: expected FIELD=VALUE")
    return args


def release_name(path: Path) -> str:
    """The release's name in the file name: ``ResNet50_vd_ssld_pretrained.pdparams`` ->
    ``ResNet50_vd_ssld``."""
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    raise ValueError(f"{path.name}: expected <Model>{' or <Model>'.join(SUFFIXES)}")


def model_name_from_file(path: Path) -> str:
    """``ResNet50_vd_pretrained.tar`` -> ``ResNet50_vd`` (with the release's naming quirks)."""
    stem = release_name(path)
    return FILE_ALIASES.get(stem, stem)


def published(name: str) -> tuple[float | None, float | None]:
    """(top-1, top-5) published for the release ``name``: PaddleClas's for its own names (an
    SSLD release is another set of weights for the same network), else the model table's."""
    import flaxcls
    from flaxcls.registry import PADDLECLAS_ALIASES

    for alias, (_, top1, top5) in PADDLECLAS_ALIASES.items():
        if alias.lower() == name.lower() and top1 is not None:
            return top1, top5
    cfg = flaxcls.get_model_cfg(name)
    return cfg.top1, cfg.top5


def _parse_value(text: str, kind: type) -> Any:
    """``text`` as a value of the field's type (a field left unset, None, still has one)."""
    if kind is str:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"--set: {text!r} is not a {kind.__name__}") from e
    return tuple(value) if kind is tuple else value


def make_config(model: str, weights: Path, args: argparse.Namespace, num_classes: int):
    from flaxcls.config import default_config

    c = default_config()
    c.model = model
    c.num_classes = num_classes
    c.pretrained_model = str(weights)
    c.data_dir = args.data_dir
    c.data_source = args.data_source
    c.val_list = args.val_list
    c.test_batch_size = c.batch_size = args.batch_size
    c.compilation_cache = False
    for item in args.set:
        field, text = item.split("=", 1)
        if field not in c:
            raise ValueError(f"--set {field}: no such config field")
        setattr(c, field, _parse_value(text, c.get_type(field)))
    return c


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: our top-1/top-5 (%) beside the published ones, the difference, image count."""
    header = ("| model | top-1 % (ours) | top-1 % (published) | diff | top-5 % (ours) "
              "| top-5 % (published) | images |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | failed: {r['error'].splitlines()[0]} "
                         "|  |  |  |  |  |")
            continue
        diff = ("" if r.get("published_top1") is None
                else f"{100 * (r['top1'] - r['published_top1']):+.2f}")
        lines.append(f"| {r['model']} | {_pct(r['top1'])} | {_pct(r.get('published_top1'))} "
                     f"| {diff} | {_pct(r['top5'])} | {_pct(r.get('published_top5'))} "
                     f"| {r['num_examples']} |")
    return "\n".join(lines)


def _converted(tar: Path, model: str, out: Path) -> dict[str, Any]:
    from flaxcls.checksum import file_sha256
    from flaxcls.convert.importer import SIDECAR, convert_to_checkpoint

    sidecar = out / SIDECAR
    if sidecar.exists():
        old = json.loads(sidecar.read_text())
        if old.get("source_sha256") == file_sha256(tar) and old.get("model") == model:
            return old
        raise ValueError(f"{out} holds a conversion of another file; remove it")
    return convert_to_checkpoint(tar, model, out)


def evaluate_tar(tar: Path, args: argparse.Namespace) -> dict[str, Any]:
    import flaxcls
    from flaxcls.evaluate import run_eval

    name = model_name_from_file(tar)
    cfg = flaxcls.get_model_cfg(name)
    top1, top5 = published(name)
    label = cfg.name if name.lower() == cfg.name.lower() else name  # ResNet50_vd_ssld
    row: dict[str, Any] = {"model": label, "network": cfg.name, "file": tar.name,
                           "published_top1": top1, "published_top5": top5}
    work = Path(args.work_dir)
    t0 = time.time()
    sidecar = _converted(tar, name, work / "weights" / label)
    config = make_config(cfg.name, work / "weights" / label, args, sidecar["num_classes"])
    result = run_eval(config, str(work / "eval" / label))
    row.update(top1=result["top1"], top5=result["top5"], num_examples=result["num_examples"],
               seconds=round(time.time() - t0, 1))
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr, force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    patterns = [p.strip() for p in args.models.split(",") if p.strip()]
    tars = sorted(t for suffix in SUFFIXES for t in Path(args.weights_dir).glob(f"*{suffix}")
                  if any(fnmatch.fnmatch(t.name, p) or fnmatch.fnmatch(t.name, p + suffix)
                         for p in patterns))
    if not tars:
        print(f"no *{' or *'.join(SUFFIXES)} matching {args.models!r} in {args.weights_dir}",
              file=sys.stderr)
        return 2
    rows = []
    for tar in tars:
        try:
            rows.append(evaluate_tar(tar, args))
        except Exception as e:  # noqa: BLE001 (one bad file must not stop the others)
            logging.getLogger("flaxcls").error("%s: %s", tar.name, e)
            rows.append({"model": release_name(tar), "file": tar.name,
                         "error": f"{type(e).__name__}: {e}"})
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.work_dir) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(format_table(rows))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
