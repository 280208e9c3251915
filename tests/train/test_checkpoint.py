"""Orbax checkpoints: roundtrip onto shardings, keep-N, errors, and a save killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxcls.checkpoint import Checkpointer, read_variables, restore_from
from flaxcls.config import default_config
from flaxcls.specs import OptimSpec
from flaxcls.train import optim
from flaxcls.train.loss_scale import LossScale


@flax.struct.dataclass
class State:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    loss_scale: Any = None


def mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def make_state(seed: int = 0, width: int = 4, step: int = 7) -> State:
    rng = np.random.default_rng(seed)
    params = {
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, width)), jnp.float32)},
        "bn": {"scale": jnp.asarray(rng.normal(size=(width,)), jnp.float32),
               "bias": jnp.asarray(rng.normal(size=(width,)), jnp.float32)},
        "fc": {"kernel": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)},
    }
    spec = OptimSpec.from_config(default_config())
    tx = optim.make_optimizer(spec, optim.make_schedule(spec, 10, 256))
    opt_state = tx.init(params)
    # Give the momentum buffers non-trivial values.
    grads = jax.tree.map(lambda p: p * 0.5, params)
    _, opt_state = tx.update(grads, opt_state, params)
    state = State(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        batch_stats={"bn": {"mean": jnp.asarray(rng.normal(size=(width,)), jnp.float32)}},
        opt_state=opt_state,
        rng=jax.random.key_data(jax.random.key(seed)),
        loss_scale=LossScale.create(2.0**15),
    )
    rep = NamedSharding(mesh(), PartitionSpec())
    return jax.device_put(state, rep)


def abstract(state: State, sharding_for=None) -> Any:
    rep = NamedSharding(mesh(), PartitionSpec())
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=(sharding_for or {}).get(
            x.shape, rep)), state)


def assert_same(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.subprocess
@pytest.mark.devices(8)
def test_roundtrip_onto_given_shardings(tmp_path):
    state = make_state()
    config = ml_collections.ConfigDict({"model": "ResNet50", "lr": 0.1})
    meta = {"epoch": 3, "model": "ResNet50", "config": config, "top1": np.float32(0.5)}
    with Checkpointer(tmp_path, keep=3) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(7, state, meta)
        assert not ckpt.save(7, state, meta)  # a step is written once
        ckpt.wait()
        assert ckpt.latest_step() == 7

        # Restore with the fc kernel split over the data axis of 8 fake devices (conftest: a
        # child pytest), one row each; the other leaves replicated.
        assert len(jax.devices()) == 8
        split = NamedSharding(mesh(), PartitionSpec("data"))
        target = abstract(state, {(8, 5): split})
        restored, got_meta = ckpt.restore(None, target)

    assert isinstance(restored, State)
    assert_same(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert got.sharding == want.sharding
    fc = restored.params["fc"]["kernel"]
    assert [s.data.shape for s in fc.addressable_shards] == [(1, 5)] * 8
    assert restored.loss_scale.growth_interval == 2000
    key = jax.random.wrap_key_data(restored.rng)  # the PRNG key survives
    np.testing.assert_array_equal(jax.random.key_data(jax.random.split(key)[0]),
                                  jax.random.key_data(jax.random.split(jax.random.key(0))[0]))
    assert float(optim.learning_rate_of(restored.opt_state)) == pytest.approx(0.1)
    assert got_meta == {"epoch": 3, "model": "ResNet50", "config": {"model": "ResNet50", "lr": 0.1},
                        "top1": 0.5}


def test_async_save_roundtrip(tmp_path):
    state = make_state(seed=3)
    ckpt = Checkpointer(tmp_path, keep=2, async_save=True)
    assert ckpt.save(1, state, {"epoch": 0})
    ckpt.wait()
    restored, meta = ckpt.restore(1, abstract(state))
    ckpt.close()
    assert_same(restored, state)
    assert meta == {"epoch": 0}


def test_keeps_the_newest_n(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in (10, 20, 30, 40):
            assert ckpt.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), {"s": step})
        ckpt.wait()
        assert ckpt.all_steps() == [30, 40]
        assert ckpt.latest_step() == 40
        restored, meta = ckpt.restore(30, abstract(state))
    assert int(restored.step) == 30 and meta == {"s": 30}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["30", "40"]
    # A new Checkpointer on the same workdir (a resumed job) sees the same steps.
    with Checkpointer(tmp_path, keep=2) as again:
        assert again.latest_step() == 40


def test_restore_from_step_dir_checkpoints_dir_or_workdir(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, keep=3) as ckpt:
        ckpt.save(1, state.replace(step=jnp.asarray(1, jnp.int32)), {"s": 1})
        ckpt.save(2, state.replace(step=jnp.asarray(2, jnp.int32)), {"s": 2})
    target = abstract(state)
    for path, step in [(tmp_path, 2), (tmp_path / "checkpoints", 2),
                       (tmp_path / "checkpoints" / "1", 1), (str(tmp_path / "checkpoints/2"), 2)]:
        restored, meta = restore_from(path, target)
        assert int(restored.step) == step and meta == {"s": step}, path
    restored, _ = restore_from(tmp_path, target)
    assert_same(restored, state.replace(step=jnp.asarray(2, jnp.int32)))

    variables = read_variables(tmp_path / "checkpoints" / "1")
    assert sorted(variables) == ["batch_stats", "params"]
    assert isinstance(variables["params"]["conv"]["kernel"], np.ndarray)
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state.params["fc"]["kernel"])

    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_from(tmp_path / "nope", target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        restore_from(tmp_path / "empty", target)


def test_another_architecture_gives_one_clear_error(tmp_path):
    with Checkpointer(tmp_path, keep=1) as ckpt:
        ckpt.save(5, make_state(width=4), {})
        wider = abstract(make_state(width=8))
        with pytest.raises(ValueError, match="another architecture") as err:
            ckpt.restore(5, wider)
        msg = str(err.value)
        assert "params/conv/kernel: checkpoint (3, 3, 2, 4) vs model (3, 3, 2, 8)" in msg
        assert "params/bn/scale" in msg

        other = abstract(make_state())
        other = other.replace(params={**other.params, "head": other.params["fc"]})
        with pytest.raises(ValueError, match="params/head/kernel: missing from the checkpoint"):
            ckpt.restore(5, other)

        fewer = abstract(make_state())
        fewer = fewer.replace(batch_stats={})
        with pytest.raises(ValueError, match="batch_stats/bn/mean: in the checkpoint but not in "
                                             "the model"):
            ckpt.restore(5, fewer)
        # ... unless a partial restore is asked for.
        restored, _ = ckpt.restore(5, {"params": fewer.params}, partial=True)
        assert sorted(restored) == ["params"]
        assert restored["params"]["fc"]["kernel"].shape == (8, 5)

        no_sharding = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                   abstract(make_state()))
        with pytest.raises(ValueError, match="has no sharding"):
            ckpt.restore(5, no_sharding)


# The child saves step 1, then starts saving a 200 MB step 2 and is SIGKILLed by the test while
# step 2 is in its tmp directory. Orbax's final rename (its "commit") is replaced by a hook that
# marks the point and waits forever, so the kill always lands before step 2 could be renamed into
# place: without it a fast disk could finish the save before the signal arrives. To kill with
# the arrays partly written, the test stops the child (SIGSTOP) once some of step 2 is on disk,
# checks what is there, and kills it stopped: the kill lands on exactly what it checked.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import jax
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from flaxcls.checkpoint import Checkpointer

    workdir = Path(sys.argv[1])
    ckpt = Checkpointer(workdir, keep=3)
    small = {"w": jnp.arange(1000, dtype=jnp.float32), "step": jnp.asarray(1, jnp.int32)}
    ckpt.save(1, small, {"epoch": 1})
    ckpt.wait()

    async def commit_never(tmp_dir, **kwargs):
        (workdir / "all_written").touch()
        time.sleep(3600)

    atomicity.on_commit_callback = commit_never
    # Random bits, so that it does not compress: 200 MB really go to disk. (Uniform floats
    # would: their exponents repeat.)
    big = {"w": jax.random.bits(jax.random.key(0), (4, 12_500_000), jnp.uint32),
           "step": jnp.asarray(2, jnp.int32)}
    ckpt.save(2, big, {"epoch": 2})
    """)
PARTLY_WRITTEN = 16 << 20  # bytes of step 2 on disk before the kill
ARRAY_BYTES = 4 * 12_500_000 * 4  # step 2's array: all of it is on disk once written


def _bytes_under(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


@pytest.mark.subprocess
@pytest.mark.parametrize("kill_at", ["arrays_partly_written", "all_written_not_renamed"])
def test_killed_while_saving_keeps_the_previous_checkpoint(tmp_path, kill_at):
    from orbax.checkpoint._src.path import atomicity

    assert hasattr(atomicity, "on_commit_callback"), "orbax moved its commit hook; update CHILD"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt_dir, all_written = tmp_path / "checkpoints", tmp_path / "all_written"

    def step2_bytes() -> int:
        tmp = list(ckpt_dir.glob("2.orbax-checkpoint-tmp*"))
        return _bytes_under(tmp[0]) if tmp else 0

    def time_to_kill() -> bool:
        if kill_at == "all_written_not_renamed":
            return all_written.exists()
        return all_written.exists() or step2_bytes() >= PARTLY_WRITTEN

    deadline = time.time() + 60
    try:
        while not time_to_kill():
            if child.poll() is not None or time.time() > deadline:
                out = child.stdout.read().decode()[-3000:] if child.stdout else ""
                pytest.fail(f"child never got to {kill_at} (rc={child.returncode}):\n{out}")
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGSTOP)
        _, status = os.waitpid(child.pid, os.WUNTRACED)  # returns once it is stopped
        assert os.WIFSTOPPED(status)
        at_kill, finished = step2_bytes(), all_written.exists()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    tmp_dirs = list(ckpt_dir.glob("2.orbax-checkpoint-tmp*"))
    assert tmp_dirs and not (ckpt_dir / "2").exists()  # killed mid-save, step 2 unfinished
    assert step2_bytes() == at_kill  # nothing was written after the check
    if kill_at == "arrays_partly_written":  # the kill landed inside the array writes
        assert not finished and PARTLY_WRITTEN <= at_kill < ARRAY_BYTES, (finished, at_kill)
    else:  # every byte written, only the rename missing
        assert finished and at_kill >= ARRAY_BYTES, at_kill

    small = {"w": jnp.arange(1000, dtype=jnp.float32), "step": jnp.asarray(1, jnp.int32)}
    target = abstract(small)
    # A reader (read-only, cleans nothing) ignores the unfinished step.
    restored, meta = restore_from(tmp_path, target)
    assert_same(restored, small)
    assert meta == {"epoch": 1}

    with Checkpointer(tmp_path, keep=3) as ckpt:  # the resumed job
        assert ckpt.latest_step() == 1
        assert ckpt.all_steps() == [1]
        restored, meta = ckpt.restore(None, target)
        assert_same(restored, small)
        assert meta == {"epoch": 1}
        step2 = {"w": small["w"] + 1, "step": jnp.asarray(2, jnp.int32)}
        assert ckpt.save(2, step2, {"epoch": 2})
        ckpt.wait()
        assert ckpt.latest_step() == 2
        restored, _ = ckpt.restore(2, target)
        assert_same(restored, step2)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["1", "2"]  # leftover removed
