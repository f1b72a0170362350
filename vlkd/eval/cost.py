"""What a computation costs: FLOPs and peak tensor memory of one call, on CPU.

Used by the benchmarks, which report every cost as a ratio to a baseline measured
in the same run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()``, forward and (if ``fn`` runs one) backward.

    ``torch.utils.flop_counter.FlopCounterMode`` with two additions: PyTorch's fused
    multi-head-attention fast path is switched off while counting, so that the attention
    projections are counted, and CPU flash attention (forward and backward) is counted
    with PyTorch's own SDPA formulas.
    """
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    # FlopCounterMode looks operators up by overload packet (``aten.op``, not ``aten.op.default``).
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
    }
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
    return int(counter.get_total_flops())


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes of tensor memory allocated during ``fn()`` (``torch.profiler`` memory events).

    Tensors that exist before the call (weights, inputs) are not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def time_round_robin(calls: dict[str, Callable[[], object]], repeats: int, progress: str | None = None
                     ) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` runs of every call, taken in turns (call 1, 2, ..., 1, 2, ...).

    Taking turns means a change of load on a shared machine hits every call alike, so ratios
    between them stay fair. Warm up the calls first; this only times them.
    """
    import time

    from tqdm import tqdm

    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in tqdm(range(repeats), desc=progress or "timing", disable=progress is None, leave=False):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times
