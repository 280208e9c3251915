"""Shared test helpers: where the repo and the shared data are, and how to run launch.py.

Tests live by area (models/, data/, train/, convert/, serve/, benchmarks/). A test that starts
a python process carries ``@pytest.mark.subprocess``; the fixture below fails any other test
that tries. ``@pytest.mark.heavy`` marks in-process tests that compile a big model or train end
to end; ``pytest -m "not slow and not subprocess and not heavy"`` is the developer's subset.

A test that needs N devices carries ``@pytest.mark.devices(N)`` (and ``subprocess``): where the
process has another device count (in-process tests see one CPU device; XLA_FLAGS fakes more only
for a new process), the test runs itself in a child pytest with N fake CPU devices.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLAXCLS_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def _subprocesses_only_when_marked(request, monkeypatch):
    """Keeps the fast subset honest: only tests marked ``subprocess`` may start a python
    process (libraries' own helpers, such as ``uname`` behind ``platform``, may still run)."""
    if request.node.get_closest_marker("subprocess") is not None:
        return
    real_init = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
        if os.path.basename(os.fsdecode(program)).split()[0].startswith("python") or \
                os.fsdecode(program) == sys.executable:
            raise AssertionError(f"{request.node.nodeid} starts a python process ({args!r}): "
                                 "mark it @pytest.mark.subprocess")
        real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


def pytest_collection_modifyitems(config, items):
    """The long tests first (those that start processes, then the heavy in-process ones), so
    that with ``-n 2`` the short ones fill the gaps at the end instead of one long test
    running alone. Stable: the order within each group is the collection order."""
    def rank(item) -> int:
        if item.get_closest_marker("subprocess") is not None:
            return 0
        return 1 if item.get_closest_marker("heavy") is not None else 2

    items.sort(key=rank)


DEVICES_ENV = "FLAXCLS_TEST_DEVICES"  # set in the child pytest that runs a devices(N) test


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """``@pytest.mark.devices(N)``: run the test where ``jax.device_count() == N``. In a process
    with another count it is run again, alone, in a child pytest with N fake CPU devices, and
    passes, fails or skips as the child does."""
    marker = pyfuncitem.get_closest_marker("devices")
    if marker is None:
        return None
    (wanted,) = marker.args
    if pyfuncitem.get_closest_marker("subprocess") is None:
        raise AssertionError(f"{pyfuncitem.nodeid}: a devices({wanted}) test may start a "
                             "python process: mark it @pytest.mark.subprocess too")
    import jax

    if os.environ.get(DEVICES_ENV) == str(wanted):  # the child: the flag must have worked
        assert jax.device_count() == wanted, (
            f"{pyfuncitem.nodeid} needs {wanted} devices, got {jax.device_count()}")
        return None
    if jax.device_count() == wanted:
        return None
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-rs", pyfuncitem.nodeid],
        cwd=pyfuncitem.config.rootpath, env=subprocess_env(wanted, **{DEVICES_ENV: str(wanted)}),
        capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    tail = out[-6000:]
    if proc.returncode == 0 and re.search(r"^1 passed\b", out, re.MULTILINE):
        return True
    if proc.returncode == 0 and re.search(r"^1 skipped\b", out, re.MULTILINE):
        pytest.skip(f"skipped on {wanted} devices:\n{tail}")
    pytest.fail(f"{pyfuncitem.nodeid} on {wanted} fake devices (child pytest exited "
                f"{proc.returncode}):\n{tail}", pytrace=False)


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_launch(args: list[str], *, devices: int = 1, timeout: float = 600, check: bool = True,
               **env_extra: str) -> subprocess.CompletedProcess:
    """Runs ``python launch.py ARGS`` from the repo root, as a user would."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO, env=subprocess_env(devices, **env_extra), capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"launch.py {' '.join(args)} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def checkpoint_params(workdir, ema: bool = False) -> dict[str, np.ndarray]:
    """params and batch_stats of the newest checkpoint in a workdir (with ``ema``: of its
    moving average), flattened to path -> array."""
    import jax

    from flaxcls.checkpoint import read_variables

    which: dict[str, str] = {}
    variables = read_variables(str(workdir), ema=ema, which=which)
    assert which["weights"] == ("ema" if ema else "raw"), which
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(variables)}


def no_tensorflow_env(tmp_path, devices: int = 1) -> dict[str, str]:
    """``subprocess_env(devices)`` where ``import tensorflow`` fails, as on the GPU machines."""
    blocker = tmp_path / "no_tf" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('tensorflow is not installed here')\n")
    env = subprocess_env(devices)
    env["PYTHONPATH"] = f"{blocker.parent}:{env['PYTHONPATH']}"
    return env


def digits_run_config(digits_dir, **overrides):
    """configs/digits.py on an already written digits folder, no compilation cache."""
    from configs import digits as digits_config

    c = digits_config.get_config()
    c.data_dir = str(digits_dir)
    c.builtin_dataset = ""
    c.compilation_cache = False
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The built-in digits data set, written once per test session."""
    from flaxcls.data import digits

    out = tmp_path_factory.mktemp("digits") / "digits"
    digits.write_digits_dataset(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A workdir-style Orbax checkpoint (step 7) of ResNet_tiny with 10 classes: initialised
    params and batch statistics moved off their init values, so eval-mode BatchNorm does work.
    Shared by the eval, infer, export and fine-tune tests."""
    import jax

    import flaxcls
    from flaxcls.checkpoint import Checkpointer

    out = tmp_path_factory.mktemp("tiny_ckpt")
    model = flaxcls.create_model("ResNet_tiny", num_classes=10)
    v = jax.jit(model.init)(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
    rng = np.random.default_rng(0)
    stats = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.0, 0.2, a.shape).astype(a.dtype),
                         v["batch_stats"])
    tree = {"params": jax.tree.map(np.asarray, v["params"]), "batch_stats": stats}
    with Checkpointer(out, keep=1) as ckpt:
        ckpt.save(7, tree, {"step": 7, "model": "ResNet_tiny", "num_classes": 10})
        ckpt.wait()
    return out
