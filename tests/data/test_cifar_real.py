"""Real CIFAR-10 JPEGs (../shared/data/cifar10-jpeg.tar.gz, where present): the speed-run recipe
(configs/cifar10.py, shortened and narrowed for 2 CPU cores) learns from a few thousand of them,
device-resident, to well above chance on held-out test images."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
from conftest import REPO

TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cifar_subset(out: Path, per_class: dict[str, int]) -> Path:
    """The first ``per_class[split]`` JPEGs of each class of each split, as class folders under
    ``out/cifar10``."""
    if not TARBALL.exists():
        pytest.skip(f"{TARBALL} not present (the real CIFAR-10 JPEGs)")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(TARBALL) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 4 or not member.isfile() or parts[1] not in per_class:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) >= per_class[parts[1]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = out / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return out / "cifar10"


def _config(**overrides):
    spec = importlib.util.spec_from_file_location("_cifar10_config", REPO / "configs" / "cifar10.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.compilation_cache = False
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@pytest.mark.slow
def test_the_speed_recipe_learns_real_cifar10(tmp_path):
    from flaxcls.train.loop import train_and_evaluate

    data = cifar_subset(tmp_path / "data", {"train": 300, "test": 100})
    assert len(list((data / "train").rglob("*.jpg"))) == 3000
    workdir = tmp_path / "run"
    # 3,000 train images, 30 steps an epoch: the recipe's lr and warm-up scaled to the batch
    result = train_and_evaluate(_config(
        data_dir=str(data), model="SpeedNet_cifar_x0_5", dtype="float32", batch_size=100,
        test_batch_size=500, num_epochs=4.0, lr=0.4, end_lr=0.03, warm_up_epochs=1.0,
        log_every_steps=30), str(workdir))
    assert result["num_examples"] == 1000
    assert result["top1"] > 0.3, result  # chance is 0.1
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    timing = [r for r in records if r["split"] == "timing"]
    assert len(timing) == 1 and timing[0]["steps"] == 120 and timing[0]["train_s"] > 0
    assert timing[0]["decode_s"] > 0
