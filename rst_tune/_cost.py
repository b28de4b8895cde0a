"""What training costs, counted in passes: a forward pass weighs 1/3 and a backward pass 2/3 of one
SGD step (a forward-backward pair, the unit), the usual FLOP ratio of convolutional and linear nets."""

from __future__ import annotations

import math
from fractions import Fraction

PASS_WEIGHTS: dict[str, Fraction] = {"forward": Fraction(1, 3), "backward": Fraction(2, 3)}

_DENOMINATOR = math.lcm(*(weight.denominator for weight in PASS_WEIGHTS.values()))
_FORWARD, _BACKWARD = (int(PASS_WEIGHTS[p] * _DENOMINATOR) for p in ("forward", "backward"))


def pass_cost(forwards: int, backwards: int) -> float:
    """The cost of `forwards` forward and `backwards` backward passes, in SGD steps (exact when whole)."""
    return (forwards * _FORWARD + backwards * _BACKWARD) / _DENOMINATOR


FORWARD_COST: float = float(PASS_WEIGHTS["forward"])
"""The cost of one forward-only pass (an EMA model's, say), in SGD steps."""
