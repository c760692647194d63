"""Parameters, MACs, latency and throughput, measured the same way by every tool.

Conventions, so numbers compare across tools:
- MACs: one multiply-add = 1 MAC, counted by ``torch.utils.flop_counter`` (FLOPs // 2),
  for a single forward pass in eval mode. Matmuls, convolutions and attention matmuls
  (scaled_dot_product_attention, on every backend) are counted; element-wise ops
  (norms, activations, softmax) are not, as in fvcore and the papers.
- Latency: per-call wall time of a forward pass under ``inference_mode``, after warm-up,
  with device synchronisation around each timed call.
- Throughput: images per second for back-to-back batches, synchronised at the ends.
- Speed comparisons: models timed interleaved in one run (see :func:`compare_speed`),
  because a shared machine drifts between runs and only same-run ratios are trustworthy.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from shared.intervals import ratio_spread

__all__ = [
    "compare_speed",
    "count_macs",
    "count_params",
    "measure_latency",
    "measure_throughput",
    "profile_summary",
]

Inputs = torch.Tensor | Sequence[Any]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; a parameter shared between modules counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------
# MACs


def _as_args(inputs: Inputs) -> tuple[Any, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    return tuple(inputs)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every submodule's own training flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _attention_flops(
    query_shape: Any,
    key_shape: Any,
    value_shape: Any,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of softmax(q k^T) v: two matmuls, 2 FLOPs per multiply-add.

    Shapes are (..., L, E) for the query and (..., S, E), (..., S, Ev) for key and value;
    grouped-query attention (fewer key/value heads) costs the same as full heads.
    """
    *lead, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    batch = math.prod(lead)
    return 2 * batch * s_q * s_k * d + 2 * batch * s_q * s_k * d_v


def _extra_flop_formulas() -> dict[Any, Any]:
    """SDPA kernels that torch's flop counter leaves at zero.

    On CPU, ``F.scaled_dot_product_attention`` (used by timm ViTs) runs
    ``aten._scaled_dot_product_flash_attention_for_cpu``, which torch 2.14's registry
    does not know, so attention matmuls would silently count as 0 MACs.
    """
    from torch.utils.flop_counter import flop_registry

    names = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math_for_mps",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    mapping: dict[Any, Any] = {}
    for name in names:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            mapping[packet] = _attention_flops
    return mapping


def count_macs(model: nn.Module, inputs: Inputs) -> int:
    """Multiply-accumulates of one forward pass of ``model(*inputs)`` (1 multiply-add = 1).

    Runs the model once in eval mode under ``no_grad`` (training flags restored after).
    ``inputs`` is a tensor or a tuple of positional arguments.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with _eval_mode(model), torch.no_grad(), counter:
        model(*_as_args(inputs))
    return int(counter.get_total_flops()) // 2


def profile_summary(model: nn.Module, example_input: Inputs) -> dict[str, float | int]:
    """Parameter count and MACs in one dict: ``params``, ``mparams``, ``macs``, ``gmacs``."""
    params = count_params(model)
    macs = count_macs(model, example_input)
    return {"params": params, "mparams": params / 1e6, "macs": macs, "gmacs": macs / 1e9}


# --------------------------------------------------------------------------------------
# Timing


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _to_device(inputs: Inputs, device: torch.device) -> tuple[Any, ...]:
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in _as_args(inputs))


def _batch_size(args: tuple[Any, ...]) -> int:
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return 1


def _sync(device: torch.device) -> None:
    """Wait for queued kernels, so the clock measures work done, not work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _prepare(
    model: nn.Module, inputs: Inputs, device: str | torch.device | None
) -> tuple[torch.device, tuple[Any, ...]]:
    """Resolve the device (default: where the model lives) and move model and inputs."""
    if device is None:
        dev = _model_device(model)
    else:
        dev = torch.device(device)
        model.to(dev)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev, _to_device(inputs, dev)


def _time_calls(
    model: nn.Module, args: tuple[Any, ...], device: torch.device, amp: bool, n: int
) -> float:
    """Seconds for ``n`` back-to-back forward passes, synchronised at both ends."""
    with _autocast(device, amp):
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            model(*args)
        _sync(device)
        return time.perf_counter() - start


def measure_latency(
    model: nn.Module,
    example_input: Inputs,
    warmup: int = 5,
    iters: int = 20,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> dict[str, float]:
    """Per-call latency in ms of one forward pass on the batch as given.

    Returns ``mean_ms``, ``median_ms``, ``std_ms`` and ``min_ms``. ``device`` defaults to
    the model's; giving one moves the model there. ``amp`` runs under bf16 autocast.
    """
    if iters < 1:
        raise ValueError("iters must be at least 1")
    dev, args = _prepare(model, example_input, device)
    times: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        if warmup > 0:
            _time_calls(model, args, dev, amp, warmup)
        for _ in range(iters):
            times.append(_time_calls(model, args, dev, amp, 1) * 1e3)
    return {
        "mean_ms": statistics.fmean(times),
        "median_ms": statistics.median(times),
        "std_ms": statistics.stdev(times) if len(times) > 1 else 0.0,
        "min_ms": min(times),
    }


def measure_throughput(
    model: nn.Module,
    batch_input: Inputs,
    warmup: int = 3,
    iters: int = 10,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> dict[str, float]:
    """Images per second for back-to-back forward passes of ``batch_input``.

    Returns ``images_per_s``, ``batch_size`` and ``ms_per_batch``. The batch size is the
    first dimension of the first tensor argument.
    """
    if iters < 1:
        raise ValueError("iters must be at least 1")
    dev, args = _prepare(model, batch_input, device)
    batch = _batch_size(args)
    with _eval_mode(model), torch.inference_mode():
        if warmup > 0:
            _time_calls(model, args, dev, amp, warmup)
        seconds = _time_calls(model, args, dev, amp, iters)
    return {
        "images_per_s": batch * iters / seconds,
        "batch_size": batch,
        "ms_per_batch": seconds * 1e3 / iters,
    }


def round_order(names: Sequence[str], i: int) -> list[str]:
    """Round i of an interleaved timing starts at name i mod N: over N rounds each leads
    once, and no one always runs right after the same other."""
    k = i % len(names)
    return [*names[k:], *names[:k]]


def compare_speed(
    models: Mapping[str, nn.Module],
    make_input: Callable[[int], Inputs],
    batch_sizes: Sequence[int] = (1,),
    warmup: int = 3,
    iters: int = 5,
    repeats: int = 5,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> list[dict[str, Any]]:
    """Time several models interleaved in one run and report ratios to the first model.

    For each batch size, every model is warmed up, then timed ``repeats`` times in
    round-robin order (the order rotates each round so no model always runs right after
    another), ``iters`` forward passes per timing; the median over rounds is kept. A slow
    spell of the machine then hits all models alike, which separate runs cannot promise.

    ``make_input(batch_size)`` returns a tensor or a tuple of arguments. One row per
    (batch size, model): ``model``, ``batch_size``, ``ms_per_batch`` (median),
    ``images_per_s``, ``speedup`` (first model's time / this model's time, >1 is faster)
    ``time_ratio`` (the inverse), ``speedup_rounds`` (the per-round ratios' median, range
    and t interval, `shared.intervals.ratio_spread`) and ``round_ms`` (every round's time).
    """
    if not models:
        raise ValueError("compare_speed needs at least one model")
    if iters < 1 or repeats < 1:
        raise ValueError("iters and repeats must be at least 1")
    names = list(models)
    rows: list[dict[str, Any]] = []
    for bs in batch_sizes:
        prepared = {n: _prepare(models[n], make_input(bs), device) for n in names}
        samples: dict[str, list[float]] = {n: [] for n in names}
        with contextlib.ExitStack() as stack:
            for n in names:
                stack.enter_context(_eval_mode(models[n]))
            stack.enter_context(torch.inference_mode())
            for n in names:
                if warmup > 0:
                    dev, args = prepared[n]
                    _time_calls(models[n], args, dev, amp, warmup)
            for r in range(repeats):
                for n in round_order(names, r):
                    dev, args = prepared[n]
                    samples[n].append(_time_calls(models[n], args, dev, amp, iters) / iters)
        medians = {n: statistics.median(samples[n]) * 1e3 for n in names}
        base = medians[names[0]]
        for n in names:
            batch = _batch_size(prepared[n][1])
            rows.append(
                {
                    "model": n,
                    "batch_size": batch,
                    "ms_per_batch": medians[n],
                    "images_per_s": batch * 1e3 / medians[n],
                    "speedup": base / medians[n],
                    "time_ratio": medians[n] / base,
                    # per-round ratios (round i of both models back to back): the spread
                    "speedup_rounds": ratio_spread(samples[names[0]], samples[n]),
                    "round_ms": [t * 1e3 for t in samples[n]],
                }
            )
    return rows
