"""The statistics of an A/B test on proportions (answers clicked, answers converted): a confidence interval per
arm, a two-proportion z-test between the arms, and the sample size a test needs.

Each answer shown is one Bernoulli trial (clicked or not), so an arm's rate is k successes out of n answers.

    Wilson interval (level 1 - alpha, z = z_{1-alpha/2}):
        centre = (p + z^2 / 2n) / (1 + z^2 / n),  half-width = z sqrt(p(1 - p)/n + z^2 / 4n^2) / (1 + z^2 / n)
        (unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at p = 0 or 1)
    two-proportion z-test (pooled, two-sided):
        p = (k1 + k2) / (n1 + n2),  z = (p2 - p1) / sqrt(p(1 - p)(1/n1 + 1/n2)),  p-value = 2 (1 - Phi(|z|))
    answers per arm to detect p1 -> p2 at level alpha with the given power (equal arms; Fleiss' formula):
        n = (z_{1-alpha/2} sqrt(2 pbar(1 - pbar)) + z_{power} sqrt(p1(1 - p1) + p2(1 - p2)))^2 / (p2 - p1)^2,
        pbar = (p1 + p2) / 2, rounded up

The answers of one shopper are not independent trials; the tests assume they are, which is close when
shoppers see few answers each and optimistic (too narrow intervals) when a few shoppers see many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

ALPHA = 0.05  # the significance level the dashboard reports against
POWER = 0.8
_NORMAL = NormalDist()


def z_of(probability: float) -> float:
    """The standard normal quantile: z_of(0.975) = 1.96."""
    return _NORMAL.inv_cdf(probability)


def wilson(successes: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The Wilson score interval of a proportion at level 1 - alpha; (0, 1) when nothing was observed."""
    if n <= 0:
        return 0.0, 1.0
    z, p = z_of(1 - alpha / 2), successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Comparison:
    """The second arm against the first: difference of rates, z, two-sided p-value."""

    difference: float  # p2 - p1
    z: float
    p_value: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value < alpha


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> Comparison:
    """The pooled two-proportion z-test of k2/n2 against k1/n1 (no difference to test: z 0, p-value 1)."""
    if n1 <= 0 or n2 <= 0:
        return Comparison(0.0, 0.0, 1.0)
    p1, p2, pooled = k1 / n1, k2 / n2, (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both arms all successes or all failures: no evidence of a difference
        return Comparison(p2 - p1, 0.0, 1.0)
    z = (p2 - p1) / se
    return Comparison(p2 - p1, z, 2 * (1 - _NORMAL.cdf(abs(z))))


def answers_per_arm(p1: float, p2: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Answers each arm needs for the z-test to find p1 -> p2 significant at `alpha` with probability `power`."""
    if not (0 <= p1 <= 1 and 0 <= p2 <= 1) or p1 == p2:
        raise ValueError(f"need two different proportions in [0, 1], got {p1} and {p2}")
    pbar = (p1 + p2) / 2
    a = z_of(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar))
    b = z_of(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil((a + b) ** 2 / (p2 - p1) ** 2)
