"""vlkd.eval.cost: FLOPs (attention included, forward and backward) and peak tensor memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from vlkd.eval.cost import count_flops, peak_memory


def test_a_matrix_product_costs_two_flops_per_multiply_add_and_backward_twice_more():
    x, layer = torch.randn(4, 16, requires_grad=True), torch.nn.Linear(16, 32, bias=False)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 32
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 16 * 32


def test_attention_is_counted_forward_and_backward():
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    forward = sdpa_flop_count(q.shape, k.shape, v.shape)
    assert forward > 0
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    backward = sdpa_backward_flop_count(q.shape, q.shape, k.shape, v.shape)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == forward + backward


def test_multi_head_attention_counts_its_projections_and_scores_even_on_the_fast_path():
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    projections = 2 * 2 * 10 * 32 * (3 * 32 + 32)  # in_proj (q, k, v) and out_proj
    scores = sdpa_flop_count((2, 4, 10, 8), (2, 4, 10, 8), (2, 4, 10, 8))
    with torch.no_grad():
        assert count_flops(lambda: attention(x, x, x, need_weights=False)) == projections + scores


def test_peak_memory_sees_what_the_call_allocates():
    assert peak_memory(lambda: torch.empty(1_000_000)) >= 4_000_000
    weights = torch.empty(1_000_000)  # allocated before: not counted
    assert peak_memory(lambda: weights.add_(1)) < 1_000_000
