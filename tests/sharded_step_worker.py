"""Runs three train steps of a small model on a fixed batch and saves losses and parameters.

Started by test_parallel.py in a subprocess with 1 or 8 (fake CPU) devices: the mesh, the
sharded batch and the global-batch BatchNorm must give the same numbers either way.
"""

import sys

import jax
import numpy as np

import flaxcls
from flaxcls import parallel
from flaxcls.config import default_config
from flaxcls.train import optim
from flaxcls.train.state import create_train_state
from flaxcls.train.step import TRAIN_METRICS, fetch_metrics, make_train_step, zeros_metrics


def main(out_path: str, model_name: str = "ResNet_tiny") -> None:
    c = default_config()
    c.model, c.num_classes, c.crop_size, c.resize_short_size = model_name, 10, 32, 32
    c.batch_size, c.lr, c.use_label_smoothing = 16, 0.05, True
    mesh = parallel.make_mesh()
    model = flaxcls.create_model(c.model, num_classes=c.num_classes)
    schedule = optim.make_schedule(c, 10, c.batch_size)
    tx = optim.make_optimizer(c, schedule)
    state = create_train_state(model, tx, image_size=c.crop_size, seed=0, mesh=mesh)
    step = make_train_step(model, tx, c, mesh)
    rng = np.random.RandomState(0)
    losses = []
    for _ in range(3):
        batch = {
            "image": rng.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8),
            "label": rng.randint(0, 10, (16,)).astype(np.int32),
        }
        metrics = zeros_metrics(TRAIN_METRICS, mesh)
        state, metrics = step(state, metrics, parallel.host_to_global(batch, mesh))
        losses.append(fetch_metrics(metrics)["loss"])
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(
            {"params": state.params, "batch_stats": state.batch_stats})
    }
    np.savez(out_path, losses=np.asarray(losses), devices=jax.device_count(), **flat)


if __name__ == "__main__":
    main(*sys.argv[1:])
