"""Exact amounts: decimal strings at the edge, integers in smallest units inside.

Invariant: no float ever becomes an amount. ``to_units`` refuses anything that is not a
decimal string, and refuses excess precision instead of rounding it away.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation


class AmountError(ValueError):
    """An amount, price or rate that is not an exact decimal of the required precision."""


def parse_decimal(text: object, what: str = "amount") -> Decimal:
    """Parse a decimal string; floats, ints-as-numbers, NaN and infinities are refused."""
    if not isinstance(text, str):
        raise AmountError(f"{what} must be a decimal string such as \"0.015\", got {text!r}")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise AmountError(f"{what} {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise AmountError(f"{what} {text!r} is not a finite number")
    return value


def decimal_to_units(value: Decimal, unit: Decimal, what: str = "amount") -> int:
    """How many whole ``unit``s make ``value``; an error if it is not a whole number of them."""
    units = value / unit
    if units != units.to_integral_value():
        raise AmountError(f"{what} {value} is not a multiple of {unit}")
    return int(units)


def to_units(text: object, precision: int, what: str = "amount") -> int:
    """``"1.5"`` with precision 8 → ``150000000``; more decimals than the precision is an error."""
    value = parse_decimal(text, what)
    scaled = value.scaleb(precision)
    if scaled != scaled.to_integral_value():
        raise AmountError(f"{what} {text} has more than {precision} decimal places")
    return int(scaled)


def format_units(units: int, precision: int) -> str:
    """``150000000`` with precision 8 → ``"1.50000000"`` (always ``precision`` decimals)."""
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(precision + 1, "0")
    if precision == 0:
        return sign + digits
    return f"{sign}{digits[:-precision]}.{digits[-precision:]}"


def format_decimal(value: Decimal, exponent: int) -> str:
    """Render ``value`` with exactly ``-exponent`` decimals (``exponent`` ≤ 0), without rounding."""
    return format_units(int(value.scaleb(-exponent)), -exponent)


def rate_fraction(text: object, what: str = "rate") -> tuple[int, int]:
    """A rate such as ``"0.001"`` as an exact fraction ``(1, 1000)``; 0 ≤ rate < 1."""
    value = parse_decimal(text, what)
    if value < 0 or value >= 1:
        raise AmountError(f"{what} {text} must be at least 0 and below 1")
    num, den = value.as_integer_ratio()
    return num, den
