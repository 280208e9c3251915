"""The baseline to beat: torchvision ResNet50 with torch.compile, bf16 autocast and
channels_last, trained (SGD momentum) or run for inference on the same batch sizes.

Every function returns None and prints why when torch, torchvision or a CUDA device is
missing, so the JAX benchmarks still run (``FLAXCLS_TORCH_PEER_CPU=1`` allows the CPU, for
testing this code only). Import and run it BEFORE jax grabs the GPU, or with jax's
preallocation off; ``release()`` hands torch's cached GPU memory back afterwards.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

import _common


def _torch_device() -> tuple[Any, Any, str] | None:
    try:
        import torch
        import torchvision
    except ImportError as e:
        print(f"torch peer skipped: {e}", file=sys.stderr, flush=True)
        return None
    if torch.cuda.is_available():
        return torch, torchvision, "cuda"
    if os.environ.get("FLAXCLS_TORCH_PEER_CPU") == "1":
        return torch, torchvision, "cpu"
    print("torch peer skipped: torch sees no CUDA device", file=sys.stderr, flush=True)
    return None


def _info(torch, torchvision, device: str) -> dict[str, Any]:
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return {"framework": "torch", "torch": torch.__version__,
            "torchvision": torchvision.__version__, "device": name}


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _compiled(torch, model, mode: str):
    """torch.compile with static shapes (one graph per batch size); mode "none": eager."""
    return model if mode == "none" else torch.compile(model, mode=mode, dynamic=False)


def _autocast(torch, device: str, dtype: str):
    if dtype == "float32":
        return torch.autocast(device_type=device, enabled=False)
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


def train_throughput(
    batch: int, *, steps: int = 20, warmup: int = 5, repeats: int = 5, dtype: str = "bfloat16",
    image_size: int = 224, num_classes: int = 1000, compile_mode: str = "default",
) -> dict[str, Any] | None:
    """Images/s of a full SGD-momentum train step (forward, loss, backward, update) on
    device-resident random data; the median of ``repeats`` windows of ``steps`` steps."""
    found = _torch_device()
    if found is None:
        return None
    torch, torchvision, device = found
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=num_classes).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    cmodel = _compiled(torch, model, compile_mode)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    # float16 needs a loss scaler to train; bf16 (the reference) does not.
    scaler = torch.amp.GradScaler(device) if dtype == "float16" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(torch, device, dtype):
            loss = loss_fn(cmodel(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    first, windows = _common.time_calls(step, lambda _: _sync(torch, device), warmup=warmup,
                                        calls=steps, repeats=repeats)
    step_s = statistics.median(windows)
    out = {"benchmark": "train_step", "model": "torchvision_resnet50", "batch": batch,
           "image_size": image_size, "dtype": dtype,
           "images_per_sec": round(batch / step_s, 1), "step_ms": round(step_s * 1e3, 3),
           "step_ms_min": round(min(windows) * 1e3, 3), "first_step_s": round(first, 2),
           "compile_mode": compile_mode, "steps": steps, "repeats": repeats,
           **_info(torch, torchvision, device)}
    return out


def inference(
    batches: list[int], *, iters: int = 20, latency_iters: int = 100, repeats: int = 5,
    dtype: str = "bfloat16", image_size: int = 224, compile_mode: str = "default",
) -> list[dict[str, Any]]:
    """Per batch size: the median time of one forward (batch 1: each call synchronised, the
    latency; larger batches: windows of ``iters`` calls, the throughput)."""
    found = _torch_device()
    if found is None:
        return []
    torch, torchvision, device = found
    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(device).to(memory_format=torch.channels_last).eval()
    cmodel = _compiled(torch, model, compile_mode)
    results = []
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)

        def forward(x=x):
            with torch.inference_mode(), _autocast(torch, device, dtype):
                return cmodel(x)

        # Batch 1: each call synchronised (the latency); larger batches: windows of ``iters``.
        calls, windows = (1, latency_iters) if batch == 1 else (iters, repeats)
        first, times = _common.time_calls(forward, lambda _: _sync(torch, device), warmup=5,
                                          calls=calls, repeats=windows)
        t = statistics.median(times)
        results.append({
            "benchmark": "inference", "model": "torchvision_resnet50", "batch": batch,
            "image_size": image_size, "dtype": dtype, "folded_bn": False,
            "latency_ms": round(t * 1e3, 4), "images_per_sec": round(batch / t, 1),
            "first_call_s": round(first, 2), "compile_mode": compile_mode,
            "repeats": len(times), **_info(torch, torchvision, device)})
    return results


def release() -> None:
    """Returns torch's cached GPU memory to the driver (before jax allocates its pool)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()
