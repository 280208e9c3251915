"""From specs to a runnable train step: model, schedule, optimizer, state and the jitted steps.

The loop and every benchmark build their chain here, so a new optimizer, state field or step
option is one change in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from flaxcls import parallel
from flaxcls.specs import Specs
from flaxcls.train import optim
from flaxcls.train.loss_scale import LossScale
from flaxcls.train.state import TrainState, abstract_train_state, create_train_state
from flaxcls.train.step import TRAIN_METRICS, make_eval_step, make_train_step, zeros_metrics


@dataclasses.dataclass
class Trainer:
    """The built chain of one run on one mesh. The steps are jitted on first use."""

    specs: Specs
    mesh: Mesh
    model: flax.linen.Module
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    head: frozenset[str] | None  # the classifier's parameter names while fine-tuning
    teacher: flax.linen.Module | None = None  # distillation's teacher (eval mode, not trained)
    # The teacher's weights on the mesh (load_teacher / random_teacher), an input of each step
    teacher_variables: Any = None
    # A device-resident train split (use_resident): the step draws its batches from it
    resident: Any = None

    @property
    def image_size(self) -> int:
        """The train crop: the size the state is built at."""
        return self.specs.input.crop_size

    @functools.cached_property
    def train_step(self):
        """``step(state, metrics, batch) -> (state, metrics)``, jitted over the mesh."""
        batch_fn = None
        if self.resident is not None:
            from flaxcls.train.resident import make_batch_fn

            spec = self.specs.input
            batch_fn = make_batch_fn(
                num_examples=int(self.resident["label"].shape[0]),
                batch_size=self.specs.run.batch_size, seed=spec.seed,
                padding=spec.crop_padding, flip=spec.random_flip, mesh=self.mesh)
        return make_train_step(self.model, self.tx, self.specs.step, self.mesh, self.head,
                               self.teacher, batch_fn)

    def use_resident(self, data: dict[str, Any]) -> None:
        """Train from ``data`` (device arrays of the whole train split, replicated): the train
        step's third argument is then ``data`` itself at every step. Call before the first use
        of ``train_step``."""
        if "train_step" in self.__dict__:
            raise RuntimeError("use_resident() after train_step was built")
        self.resident = data

    @property
    def step_inputs(self) -> tuple[Any, ...]:
        """What the train step takes after (state, metrics, batch): the teacher's weights when
        distilling, else nothing."""
        if self.teacher is None:
            return ()
        if self.teacher_variables is None:
            raise RuntimeError("distillation: call load_teacher() or random_teacher() first")
        return (self.teacher_variables,)

    def load_teacher(self) -> None:
        """The teacher's weights (config.distill_teacher_weights: its EMA where the checkpoint
        has one and use_ema_weights is on), replicated on the mesh; they must fit the teacher
        exactly, its class count included."""
        from flaxcls.checkpoint import CheckpointError
        from flaxcls.config import ConfigError
        from flaxcls.weights import inference_variables

        path = os.path.abspath(self.specs.run.distill_teacher_weights)
        try:
            self.teacher_variables, _ = inference_variables(
                self.specs.teacher, self.image_size, path, self.mesh,
                ema=self.specs.run.use_ema_weights)
        except CheckpointError as e:
            raise ConfigError(f"config.distill_teacher_weights={path!r} does not fit the "
                              f"teacher config.distill_teacher={self.specs.teacher.name!r} "
                              f"with config.num_classes={self.specs.teacher.num_classes}: "
                              f"{e}") from None

    def random_teacher(self, seed: int = 1) -> None:
        """Freshly initialised teacher weights (benchmarks: the cost, not the accuracy)."""
        size = self.image_size
        self.teacher_variables = jax.jit(
            lambda: self.teacher.init(jax.random.key(seed),
                                      jnp.zeros((1, size, size, 3), jnp.float32), train=False),
            out_shardings=parallel.replicated(self.mesh))()

    @functools.cached_property
    def eval_step(self):
        """``step(variables, metrics, batch) -> metrics``, jitted over the mesh."""
        return make_eval_step(self.model, self.specs.step, self.mesh)

    def loss_scale(self) -> LossScale | None:
        """float16 trains with a dynamic loss scale; other dtypes need none."""
        if self.specs.step.dtype == "float16":
            return LossScale.create(self.specs.run.loss_scale)
        return None

    def init_state(self) -> TrainState:
        """Fresh parameters, optimizer state, loss scale and EMA, replicated on the mesh."""
        return create_train_state(self.model, self.tx, image_size=self.image_size,
                                  seed=self.specs.run.seed, mesh=self.mesh,
                                  loss_scale=self.loss_scale(), ema=self.ema)

    @property
    def ema(self) -> bool:
        """The state keeps an exponential moving average of the weights."""
        return self.specs.step.ema_decay > 0

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of ``init_state()``, computing nothing."""
        return abstract_train_state(self.init_state, self.mesh)

    def zeros_metrics(self) -> dict[str, jax.Array]:
        return zeros_metrics(TRAIN_METRICS, self.mesh)

    def abstract_inputs(self, batch_size: int) -> tuple[Any, dict[str, Any]]:
        """(metrics, batch) as ShapeDtypeStructs on the mesh: what the train step takes besides
        the state, for lowering it without data."""
        rep, data = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
        size = self.image_size
        metrics = {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=rep) for k in TRAIN_METRICS}
        batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8,
                                               sharding=data),
                 "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=data)}
        return metrics, batch


def build(specs: Specs, mesh: Mesh, *, steps_per_epoch: int,
          model: flax.linen.Module | None = None) -> Trainer:
    """The chain of ``specs`` on ``mesh``. ``model`` replaces the spec's model (a benchmark's
    variant of it, say); the learning-rate schedule counts ``steps_per_epoch`` steps an epoch."""
    model = specs.model.build() if model is None else model
    schedule = optim.make_schedule(specs.optim, steps_per_epoch, specs.run.batch_size)
    head = None
    if specs.optim.fine_tuning:
        from flaxcls.weights import head_names

        head = frozenset(n.removeprefix("params/") for n in
                         head_names(specs.model, specs.preprocessing.crop_size))
    tx = optim.make_optimizer(specs.optim, schedule, head)
    teacher = specs.teacher.build() if specs.teacher is not None else None
    return Trainer(specs, mesh, model, schedule, tx, head, teacher)
