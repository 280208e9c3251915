"""Each optimizer's first steps against a plain numpy (float64) implementation of its update
rule, on a tiny model whose gradients numpy computes itself; and their config checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcls.config import ConfigError, default_config, validate
from flaxcls.specs import OptimSpec
from flaxcls.train import optim

STEPS = 5
# float32 against float64 over five steps: relative 2e-5 (Adam's and LAMB's divisions by small
# second moments are the loosest).
RTOL, ATOL = 2e-5, 1e-6


def tiny_problem(seed: int = 0):
    """A per-feature affine "BatchNorm" (scale, bias) and a linear classifier, softmax
    cross-entropy on a fixed batch: (params, numpy gradient function)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, 6))
    y = np.eye(4)[rng.integers(0, 4, size=16)]
    params = {"bn": {"scale": 1.0 + 0.1 * rng.normal(size=6), "bias": 0.1 * rng.normal(size=6)},
              "fc": {"kernel": 0.3 * rng.normal(size=(6, 4)), "bias": np.zeros(4)}}

    def grads(p):
        h = x * p["bn"]["scale"] + p["bn"]["bias"]
        logits = h @ p["fc"]["kernel"] + p["fc"]["bias"]
        e = np.exp(logits - logits.max(1, keepdims=True))
        d = (e / e.sum(1, keepdims=True) - y) / len(x)  # d loss / d logits
        dh = d @ p["fc"]["kernel"].T
        return {"bn": {"scale": (dh * x).sum(0), "bias": dh.sum(0)},
                "fc": {"kernel": h.T @ d, "bias": d.sum(0)}}

    return params, grads


def decayed(name: str, exclude: bool) -> bool:
    """Whether the decay (and LAMB's/LARS's trust ratio) applies: kernels only by default."""
    return name == "fc/kernel" or not exclude


def numpy_steps(spec: OptimSpec, lr: float, params, grads_fn, steps: int):
    """``steps`` updates of ``spec.optimizer`` written out per tensor in float64."""
    names = ["bn/scale", "bn/bias", "fc/kernel", "fc/bias"]
    get = lambda tree, n: tree[n.split("/")[0]][n.split("/")[1]]
    p = {n: np.array(get(params, n), np.float64) for n in names}
    zeros = {n: np.zeros_like(v) for n, v in p.items()}
    m, v, s = dict(zeros), dict(zeros), {n: np.ones_like(a) for n, a in p.items()}
    b1, b2 = spec.betas or optim.DEFAULT_BETAS.get(spec.optimizer, (0.9, 0.999))
    eps = optim.DEFAULT_EPS.get(spec.optimizer, 0.0) if spec.eps is None else spec.eps
    mom, wd, name = spec.momentum_rate, spec.weight_decay, spec.optimizer
    for t in range(1, steps + 1):
        tree = {"bn": {"scale": p["bn/scale"], "bias": p["bn/bias"]},
                "fc": {"kernel": p["fc/kernel"], "bias": p["fc/bias"]}}
        g = {n: get(grads_fn(tree), n) for n in names}
        if spec.clip_grad_norm:
            norm = np.sqrt(sum(np.sum(a * a) for a in g.values()))
            g = {n: a * min(1.0, spec.clip_grad_norm / norm) for n, a in g.items()}
        for n in names:
            on = decayed(n, spec.weight_decay_exclude_bn_bias)
            wdp = wd * p[n] if on else 0.0
            gi = g[n]
            if spec.l2_decay and decayed(n, spec.l2_decay_exclude_bn_bias):
                gi = gi + spec.l2_decay * p[n]
            if name in ("momentum", "nesterov"):
                m[n] = mom * m[n] + gi
                step = gi + mom * m[n] if (name == "nesterov" or spec.nesterov) else m[n]
                p[n] = p[n] - lr * (step + wdp)
            elif name in ("adamw", "lamb"):
                m[n] = b1 * m[n] + (1 - b1) * gi
                v[n] = b2 * v[n] + (1 - b2) * gi * gi
                u = (m[n] / (1 - b1 ** t)) / (np.sqrt(v[n] / (1 - b2 ** t)) + eps)
                r = u + wdp
                if name == "lamb" and on:
                    pn, rn = np.linalg.norm(p[n]), np.linalg.norm(r)
                    r = r * (pn / rn if pn > 0 and rn > 0 else 1.0)
                p[n] = p[n] - lr * r
            elif name == "lars":
                r = gi + wdp
                if on:
                    pn, rn = np.linalg.norm(p[n]), np.linalg.norm(r)
                    r = r * (spec.lars_trust_coefficient * pn / rn if pn > 0 and rn > 0 else 1.0)
                m[n] = mom * m[n] + lr * r
                p[n] = p[n] - (lr * r + mom * m[n] if spec.nesterov else m[n])
            elif name == "rmsprop_tf":
                s[n] = spec.rmsprop_decay * s[n] + (1 - spec.rmsprop_decay) * gi * gi
                m[n] = mom * m[n] + lr * (gi / np.sqrt(s[n] + eps) + wdp)
                p[n] = p[n] - m[n]
            else:
                assert name == "lion"
                u = np.sign(b1 * m[n] + (1 - b1) * gi)
                m[n] = b2 * m[n] + (1 - b2) * gi
                p[n] = p[n] - lr * (u + wdp)
    return p


def optax_steps(spec: OptimSpec, lr: float, params, grads_fn, steps: int):
    """The same steps through ``optim.make_optimizer`` in float32, jitted as the train step is."""
    tx = optim.make_optimizer(spec, lr)
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    state = tx.init(p32)
    update = jax.jit(tx.update)
    for _ in range(steps):
        g = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                         grads_fn(jax.tree.map(lambda a: np.asarray(a, np.float64), p32)))
        updates, state = update(g, state, p32)
        p32 = jax.tree.map(lambda a, b: a + b, p32, updates)
    return p32, state


def spec_of(**overrides) -> OptimSpec:
    c = default_config()
    c.update(overrides)
    validate_optim(c)
    return OptimSpec.from_config(c)


def validate_optim(c) -> None:
    c.data_dir = "unused"
    validate(c)


CASES = [
    ("momentum", {}, 0.1),
    ("momentum", {"weight_decay": 0.05, "l2_decay": 0.0}, 0.1),  # SGDW
    ("momentum", {"weight_decay": 0.05, "weight_decay_exclude_bn_bias": False,
                  "clip_grad_norm": 0.05}, 0.1),
    ("nesterov", {"weight_decay": 0.01}, 0.1),
    ("adamw", {"l2_decay": 0.0, "weight_decay": 0.05}, 0.01),
    ("adamw", {"l2_decay": 0.0, "weight_decay": 0.05, "opt_betas": (0.8, 0.99),
               "opt_eps": 1e-6, "weight_decay_exclude_bn_bias": False}, 0.01),
    ("lamb", {"l2_decay": 0.0, "weight_decay": 0.02}, 0.01),
    ("lars", {"l2_decay": 0.0, "weight_decay": 1e-3}, 1.0),
    ("lars", {"l2_decay": 0.0, "weight_decay": 1e-3, "nesterov": True,
              "lars_trust_coefficient": 0.01}, 1.0),
    ("rmsprop_tf", {"l2_decay": 1e-3}, 0.01),
    ("rmsprop_tf", {"l2_decay": 0.0, "weight_decay": 0.01, "rmsprop_decay": 0.95}, 0.01),
    ("lion", {"l2_decay": 0.0, "weight_decay": 0.1}, 1e-3),
]


@pytest.mark.parametrize("optimizer, fields, lr", CASES,
                         ids=[f"{o}-{i}" for i, (o, _, _) in enumerate(CASES)])
def test_first_steps_match_the_update_rule_in_numpy(optimizer, fields, lr):
    spec = spec_of(optimizer=optimizer, **fields)
    params, grads_fn = tiny_problem()
    want = numpy_steps(spec, lr, params, grads_fn, STEPS)
    got, state = optax_steps(spec, lr, params, grads_fn, STEPS)
    for name, value in want.items():
        a, b = name.split("/")
        assert not np.allclose(value, params[a][b]), f"{name} did not move"
        np.testing.assert_allclose(np.asarray(got[a][b]), value, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{optimizer} {name}")
    assert float(optim.learning_rate_of(state)) == pytest.approx(lr)


def test_the_default_is_the_2019_momentum_with_l2_and_its_state_layout():
    """Checkpoints of earlier runs keep their optimizer state's tree: trace state only."""
    spec = spec_of()
    assert (spec.optimizer, spec.weight_decay, spec.clip_grad_norm) == ("momentum", 0.0, 0.0)
    params, _ = tiny_problem()
    state = optim.make_optimizer(spec, 0.1).init(jax.tree.map(jnp.asarray, params))
    kinds = [type(s).__name__ for s in state.inner_state]
    assert kinds == ["EmptyState", "TraceState", "EmptyState"], kinds


def test_fine_tuning_groups_take_any_optimizer():
    """A frozen backbone stays as it was with AdamW too; the head moves."""
    spec = spec_of(optimizer="adamw", l2_decay=0.0, weight_decay=0.05, freeze_backbone=True)
    params, grads_fn = tiny_problem()
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    tx = optim.make_optimizer(spec, 0.01, head={"fc/kernel", "fc/bias"})
    state = tx.init(p)
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads_fn(params)), state, p)
    assert not np.any(np.asarray(updates["bn"]["scale"]))
    assert np.all(np.asarray(updates["fc"]["kernel"]) != 0)


@pytest.mark.parametrize("fields, says", [
    ({"optimizer": "adam"}, "config.optimizer='adam': must be one of"),
    ({"optimizer": "adamw"}, "config.l2_decay=0.0001: optimizer='adamw' takes the decoupled"),
    ({"weight_decay": -1.0}, "config.weight_decay=-1.0"),
    ({"clip_grad_norm": -1.0}, "config.clip_grad_norm=-1.0"),
    ({"optimizer": "lion", "l2_decay": 0.0, "opt_betas": (0.9,)}, "config.opt_betas=(0.9,)"),
    ({"optimizer": "adamw", "l2_decay": 0.0, "opt_betas": (0.9, 1.0)}, "config.opt_betas="),
    ({"opt_eps": -1e-8}, "config.opt_eps=-1e-08"),
    ({"optimizer": "adamw", "l2_decay": 0.0, "nesterov": True}, "config.nesterov=True"),
    ({"momentum_rate": 1.0}, "config.momentum_rate=1.0"),
    ({"optimizer": "rmsprop_tf", "rmsprop_decay": 1.0}, "config.rmsprop_decay=1.0"),
    ({"optimizer": "lars", "l2_decay": 0.0, "lars_trust_coefficient": 0.0},
     "config.lars_trust_coefficient=0.0"),
])
def test_bad_values_name_the_field(fields, says):
    c = default_config()
    c.update(fields)
    with pytest.raises(ConfigError, match=None) as e:
        validate_optim(c)
    assert str(e.value).startswith(says), str(e.value)
