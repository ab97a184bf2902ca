"""Checks at the edge that give a clear 422 before a request is appended.

Prices must sit on the market's tick, quantities on its lot, amounts within the asset's
precision, when the market or asset is known to the read models. When it is not (yet), the
request goes to the engine, which decides (``unknown_market``...). These checks only refuse
what the engine would refuse too; they never accept what it would not.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from anyio import to_thread

from api.errors import ApiError
from api.services import Services

# What the checks read of a market or an asset never changes once it is listed (listing the same
# symbol again is refused), so each process keeps what it found: an order's checks then cost no
# query. Only what exists is kept: an unknown symbol is asked for again next time.
SPEC_FIELDS = {
    "market": ("symbol", "base", "quote", "tick_size", "lot_size"),
    "asset": ("symbol", "precision"),
}


async def market_spec(services: Services, symbol: str) -> dict[str, Any] | None:
    """A listed market's symbol, base, quote, tick and lot, or None when the read models don't know it."""
    return await _spec(services, "market", symbol)


async def asset_spec(services: Services, symbol: str) -> dict[str, Any] | None:
    """A listed asset's symbol and precision, or None when the read models don't know it."""
    return await _spec(services, "asset", symbol)


def known_spec(services: Services, kind: str, symbol: str) -> dict[str, Any] | None:
    """What this process already keeps of a listed market or asset (``kind``), without a read."""
    return services.specs.get((kind, symbol))


async def _spec(services: Services, kind: str, symbol: str) -> dict[str, Any] | None:
    key = (kind, symbol)
    found = known_spec(services, kind, symbol)
    if found is None:
        read = services.reads.market if kind == "market" else services.reads.asset
        row = await to_thread.run_sync(read, symbol)
        if row is None:
            return None
        found = {k: row[k] for k in SPEC_FIELDS[kind]}
        services.specs[key] = found
    return found


def _multiple(value: str, step: str) -> bool:
    return (Decimal(value) % Decimal(step)) == 0


def check_price(market: dict[str, Any], price: str | None) -> None:
    if price is not None and not _multiple(price, market["tick_size"]):
        raise ApiError(422, "invalid_price",
                       f"price {price} is not on the tick size {market['tick_size']} of {market['symbol']}",
                       {"field": "price", "tick_size": market["tick_size"]})


def check_quantity(market: dict[str, Any], quantity: str | None) -> None:
    if quantity is not None and not _multiple(quantity, market["lot_size"]):
        raise ApiError(422, "invalid_quantity",
                       f"quantity {quantity} is not a multiple of the lot size {market['lot_size']} "
                       f"of {market['symbol']}",
                       {"field": "quantity", "lot_size": market["lot_size"]})


def check_amount(asset: dict[str, Any] | None, amount: str | None, field: str = "amount") -> None:
    if asset is None or amount is None:
        return
    if Decimal(amount).as_tuple().exponent < -int(asset["precision"]):  # type: ignore[operator]
        raise ApiError(422, "invalid_amount",
                       f"{field} {amount} has more than {asset['precision']} decimals for {asset['symbol']}",
                       {"field": field, "precision": asset["precision"]})
    if Decimal(amount) <= 0:
        raise ApiError(422, "invalid_amount", f"{field} must be positive", {"field": field})


def render_quantity(market: dict[str, Any] | None, quantity: str | None) -> str | None:
    """A quantity as the read models render it (the lot's decimals)."""
    if quantity is None or market is None:
        return quantity
    lot = Decimal(market["lot_size"])
    return str(Decimal(quantity).quantize(lot if lot < 1 else Decimal(1)))


def render_price(market: dict[str, Any] | None, price: str | None) -> str | None:
    if price is None or market is None:
        return price
    tick = Decimal(market["tick_size"])
    return str(Decimal(price).quantize(tick if tick < 1 else Decimal(1)))
