"""Assets and markets: what may be traded, on which tick and lot, at which fees.

A market's sizes are fixed at listing. They are checked once here so that every valid order
has an exact integer cost: the lot is a whole number of base units and tick × lot is a whole
number of quote units. Only the status changes afterwards (trading → halted → trading, or →
delisted, which is final).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from domain.amounts import AmountError, decimal_to_units, parse_decimal, rate_fraction

SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9]{1,11}$")
MAX_PRECISION = 18

TRADING = "trading"
HALTED = "halted"
DELISTED = "delisted"


class MarketError(ValueError):
    """A listing that cannot be accepted; ``code`` is the API's reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Asset:
    symbol: str
    precision: int

    @classmethod
    def create(cls, symbol: str, precision: int) -> Asset:
        if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
            raise MarketError("invalid_symbol", f"asset symbol {symbol!r} must be 2-12 capitals")
        if not isinstance(precision, int) or isinstance(precision, bool):
            raise MarketError("invalid_precision", "precision must be an integer")
        if not 0 <= precision <= MAX_PRECISION:
            raise MarketError("invalid_precision", f"precision must be 0..{MAX_PRECISION}")
        return cls(symbol, precision)

    @property
    def unit(self) -> Decimal:
        return Decimal(1).scaleb(-self.precision)


@dataclass(frozen=True, slots=True)
class Market:
    """A listed market; the integer fields are derived from the decimal strings once."""

    symbol: str
    base: str
    quote: str
    tick_size: str
    lot_size: str
    min_notional: str
    maker_fee: str
    taker_fee: str
    base_precision: int
    quote_precision: int
    lot_units: int  # base units in one lot
    notional_units: int  # quote units in one tick × one lot
    min_notional_units: int
    maker_fee_rate: tuple[int, int]
    taker_fee_rate: tuple[int, int]

    @classmethod
    def create(
        cls,
        symbol: str,
        base: Asset,
        quote: Asset,
        tick_size: str,
        lot_size: str,
        min_notional: str = "0",
        maker_fee: str = "0",
        taker_fee: str = "0",
    ) -> Market:
        """Validate a listing; raises MarketError with a clear message and a code."""
        expected = f"{base.symbol}-{quote.symbol}"
        if symbol != expected:
            raise MarketError("invalid_symbol", f"market symbol must be {expected!r}")
        if base.symbol == quote.symbol:
            raise MarketError("invalid_market", "base and quote must differ")
        try:
            tick = parse_decimal(tick_size, "tick_size")
            lot = parse_decimal(lot_size, "lot_size")
            min_n = parse_decimal(min_notional, "min_notional")
            maker = rate_fraction(maker_fee, "maker_fee")
            taker = rate_fraction(taker_fee, "taker_fee")
            if tick <= 0 or lot <= 0 or min_n < 0:
                raise AmountError("tick_size and lot_size must be positive, min_notional ≥ 0")
            lot_units = decimal_to_units(lot, base.unit, "lot_size")
            notional_units = decimal_to_units(tick * lot, quote.unit, "tick_size × lot_size")
            min_notional_units = decimal_to_units(min_n, quote.unit, "min_notional")
        except AmountError as exc:
            raise MarketError("invalid_market", str(exc)) from None
        return cls(
            symbol=symbol,
            base=base.symbol,
            quote=quote.symbol,
            tick_size=str(tick),
            lot_size=str(lot),
            min_notional=str(min_n),
            maker_fee=maker_fee,
            taker_fee=taker_fee,
            base_precision=base.precision,
            quote_precision=quote.precision,
            lot_units=lot_units,
            notional_units=notional_units,
            min_notional_units=min_notional_units,
            maker_fee_rate=maker,
            taker_fee_rate=taker,
        )

    def listing(self) -> dict[str, str]:
        """The decimal strings a MarketListed fact records."""
        return {
            "symbol": self.symbol,
            "base": self.base,
            "quote": self.quote,
            "tick_size": self.tick_size,
            "lot_size": self.lot_size,
            "min_notional": self.min_notional,
            "maker_fee": self.maker_fee,
            "taker_fee": self.taker_fee,
        }

    # -- edge conversions: decimal strings → integer ticks and lots ------------------------

    def price_ticks(self, price: object) -> int:
        value = parse_decimal(price, "price")
        if value <= 0:
            raise AmountError(f"price {price} must be positive")
        try:
            return decimal_to_units(value, Decimal(self.tick_size), "price")
        except AmountError:
            raise AmountError(f"price {price} is not on the tick size {self.tick_size}") from None

    def quantity_lots(self, quantity: object) -> int:
        value = parse_decimal(quantity, "quantity")
        if value <= 0:
            raise AmountError(f"quantity {quantity} must be positive")
        try:
            return decimal_to_units(value, Decimal(self.lot_size), "quantity")
        except AmountError:
            raise AmountError(
                f"quantity {quantity} is not a multiple of the lot size {self.lot_size}"
            ) from None

    # -- rendering -----------------------------------------------------------------------

    def format_price(self, ticks: int) -> str:
        tick = Decimal(self.tick_size)
        return str((tick * ticks).quantize(tick if tick < 1 else Decimal(1)))

    def format_quantity(self, lots: int) -> str:
        lot = Decimal(self.lot_size)
        return str((lot * lots).quantize(lot if lot < 1 else Decimal(1)))

    # -- money arithmetic (integers only) ------------------------------------------------

    def cost(self, ticks: int, lots: int) -> int:
        """Quote units paid for ``lots`` at ``ticks``."""
        return ticks * lots * self.notional_units

    def base_units(self, lots: int) -> int:
        return lots * self.lot_units


def fee(amount: int, rate: tuple[int, int]) -> int:
    """The fee on ``amount`` units at an exact rate, rounded up to a whole unit."""
    num, den = rate
    return -((-amount * num) // den)
