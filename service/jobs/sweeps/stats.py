"""Mean, standard deviation and the 95 % Student-t confidence interval of a few runs.

For ``n`` values with mean ``m`` and sample standard deviation ``s`` (divisor ``n - 1``),
the two-sided 95 % interval of the mean is ``m +- t(0.975, n - 1) * s / sqrt(n)``
(Student 1908; e.g. NIST/SEMATECH e-Handbook of Statistical Methods, section 7.2.2.1,
https://www.itl.nist.gov/div898/handbook/prc/section2/prc221.htm). ``t(0.975, df)`` for
``df <= 30`` is the table of critical values in the same handbook (section 1.3.6.7.2,
https://www.itl.nist.gov/div898/handbook/eda/section3/eda3672.htm), to three decimals;
beyond 30 it is the Cornish-Fisher expansion of the t quantile in the normal one
(Abramowitz & Stegun, Handbook of Mathematical Functions, 26.7.5), whose error there is
below 1e-4. One value gives no interval (``None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
    17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
    25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip
"""t(0.975, df): the upper 2.5 % point of Student's t with ``df`` degrees of freedom."""

Z_975 = 1.959963984540054
"""The upper 2.5 % point of the standard normal distribution."""


def t_quantile_975(df: int) -> float:
    """``t(0.975, df)``, the two-sided 95 % critical value of Student's t.

    Raises:
        ValueError: ``df < 1``.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df in T_975:
        return T_975[df]
    z, v = Z_975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


class Summary(TypedDict):
    """The statistics of one figure over a variant's runs (``None`` where undefined)."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    values: list[float]


def summarize(values: Sequence[float]) -> Summary:
    """n, mean, sample std (``n - 1``) and the 95 % t interval of the mean of ``values``.

    No values: everything ``None``; one value: its mean, no std and no interval.
    """
    data = [float(v) for v in values]
    n = len(data)
    if n == 0:
        return Summary(n=0, mean=None, std=None, ci_low=None, ci_high=None, values=[])
    mean = math.fsum(data) / n
    if n == 1:
        return Summary(n=1, mean=mean, std=None, ci_low=None, ci_high=None, values=data)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in data) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Summary(n=n, mean=mean, std=std, ci_low=mean - half, ci_high=mean + half, values=data)
