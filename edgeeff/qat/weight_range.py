"""The weight range rule of NNCF's PTQ, as a torchao observer for the QAT graph's weight quantizers.

NNCF (3.4.0) quantizes a weight per output channel and symmetrically: scale = m / 127, where m
is the channel's largest magnitude. Channels that are almost zero would get a scale near zero,
so NNCF raises m to at least 1% of the largest m of the whole tensor, and to at least 8e-5
(`fix_zero_filters_symmetric`). XNNPACKQuantizer's observers instead keep every scale at or
above 2^-12, one absolute floor, so the two rules give different scales to near-zero channels.

`NNCFWeightRangeObserver` applies NNCF's rule to the current weights, so the QAT graph before
training quantizes every weight as NNCF's PTQ model does, and `convert_pt2e` writes the same
rule into the INT8 program.
"""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.observer import MovingAveragePerChannelMinMaxObserver

# NNCF's `fix_zero_filters_symmetric`: the relative and the absolute floor of a channel's range.
RELATIVE_FLOOR = 0.01
ABSOLUTE_FLOOR = 8e-5


class NNCFWeightRangeObserver(MovingAveragePerChannelMinMaxObserver):
    """Per-channel symmetric min/max observer whose ranges follow NNCF's floor for near-zero channels."""

    def calculate_qparams(self):
        if self.min_val.numel() == 0 or not torch.isfinite(self.min_val).all():
            return super().calculate_qparams()
        magnitude = torch.maximum(self.max_val.clamp(min=0), (-self.min_val).clamp(min=0))
        floor = torch.clamp(magnitude.max() * RELATIVE_FLOOR, min=ABSOLUTE_FLOOR)
        magnitude = torch.maximum(magnitude, floor)
        return self._calculate_qparams(-magnitude, magnitude)
