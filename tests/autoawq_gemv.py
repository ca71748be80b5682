"""AutoAWQ 0.2.9's GEMV packing (awq/modules/linear/gemv.py), for tests that need a GEMV checkpoint without
installing AutoAWQ (its CUDA extension does not build here)."""

from __future__ import annotations

import torch


def autoawq_calculate_zeros_width(in_features, group_size=128, pack_num=8):
    """AutoAWQ 0.2.9 awq/modules/linear/gemv.py, verbatim (with its `make_divisible`)."""
    def make_divisible(c, divisor):
        return (c + divisor - 1) // divisor

    if group_size >= 128:
        size_multiplier = 1
    elif group_size == 64:
        size_multiplier = 2
    elif group_size == 32:
        size_multiplier = 4
    else:
        raise NotImplementedError

    base_width = make_divisible(in_features // group_size, pack_num)
    base_width = make_divisible(base_width, size_multiplier) * size_multiplier
    return base_width


def autoawq_gemv_from_linear(weight, scales, zeros, group_size, w_bit=4):
    """AutoAWQ 0.2.9 `WQLinear_GEMV.from_linear` from `scale_zeros` on (verbatim apart from `linear.` /
    `awq_linear.` attributes made arguments; weight [out, in], scales and zeros [out, groups])."""
    in_features = weight.shape[1]
    scale_zeros = zeros * scales

    pack_num = 32 // w_bit
    qscales = torch.zeros(
        (
            scales.shape[0],
            autoawq_calculate_zeros_width(in_features, group_size) * pack_num,
        ),
        dtype=torch.float16,
        device=scales.device,
    )
    qscales[:, : scales.shape[1]] = scales

    intweight = []
    for idx in range(in_features):
        intweight.append(
            torch.round(
                (weight[:, idx] + scale_zeros[:, idx // group_size])
                / qscales[:, idx // group_size]
            ).to(torch.int)[:, None]
        )
    intweight = torch.cat(intweight, dim=1)
    intweight = intweight.to(dtype=torch.int32)
    qweight = torch.zeros(
        (intweight.shape[0], intweight.shape[1] // 32 * w_bit),
        dtype=torch.int32,
        device=intweight.device,
    )

    for col in range(intweight.shape[1] // pack_num):
        if w_bit == 4:
            order_map = [0, 1, 2, 3, 4, 5, 6, 7]
        else:
            raise NotImplementedError("Only 4-bit are supported for now.")
        for i in range(pack_num):
            qweight_col = intweight[:, col * pack_num + order_map[i]]
            qweight[:, col] |= qweight_col << (i * w_bit)

    zeros = zeros.to(dtype=torch.int32)
    qzeros = torch.zeros(
        (zeros.shape[0], autoawq_calculate_zeros_width(in_features, group_size)),
        dtype=torch.int32,
        device=zeros.device,
    )

    for col in range((zeros.shape[1] + pack_num - 1) // pack_num):
        if w_bit == 4:
            order_map = [0, 1, 2, 3, 4, 5, 6, 7]
        else:
            raise NotImplementedError("Only 4-bit are supported for now.")
        for i in range(pack_num):
            if col * pack_num + order_map[i] >= zeros.shape[1]:
                continue
            qzero_col = zeros[:, col * pack_num + order_map[i]]
            qzeros[:, col] |= qzero_col << (i * w_bit)
    return {"qweight": qweight, "qzeros": qzeros, "scales": qscales}
# --- end of AutoAWQ GEMV code.
