"""The auditor's own ledger: balances, holds, fees and idempotency keys folded from recorded facts.

It deliberately shares no state with ``domain.ledger.Ledger`` or the engine: it reads only the
facts of the exchange log (their ``postings`` and the fields named in ``docs/events.md``) and
checks, after every fact,

- ``unbalanced_postings``: a fact's postings sum to zero per asset;
- ``negative_balance`` / ``system_frozen``: no user account is negative in either column and a
  system account (``@custody``, ``@fees``) never freezes;
- ``frozen_mismatch``: a user's frozen balance equals what its open orders and pending
  withdrawals hold, holds being tracked from the facts (accepted, used by trades, amended,
  released on close, withdrawal requested and ended); ``hold_overdrawn`` / ``hold_not_released``
  / ``unknown_hold`` when a hold is used beyond what it held, not fully released at close, or
  never created;
- ``fee_mismatch`` / ``trade_amounts``: a trade's fees are the market's rates applied to its
  amounts (rounded up, ``domain.markets.fee``), in the asset the side receives, and are what the
  ``@fees`` account is credited; its amounts are its lots and ticks in units;
- ``trade_id_sequence``: trade ids count 1, 2, 3…;
- ``duplicate_key`` / ``duplicate_id``: a client order id or reference is applied once per user
  forever, an order, deposit, withdrawal or transfer id once;

and, after each outcome, ``conservation``: for every asset the sum over all accounts is zero.
Checks return ``(code, message)`` pairs; the caller adds where in the log they happened.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from domain.amounts import rate_fraction
from domain.markets import fee

Fact = dict[str, Any]
Problem = tuple[str, str]
Touched = dict[tuple[str, str], None]  # the keys a fact changed, in order (a dict: an ordered set)
FEES = "@fees"


class _MarketTerms:
    """What a trade's arithmetic needs from a listing, parsed once."""

    __slots__ = ("base", "lot_units", "maker_rate", "notional_units", "quote", "taker_rate")

    def __init__(self, listing: Fact, precisions: dict[str, int]) -> None:
        from decimal import Decimal

        self.base, self.quote = listing["base"], listing["quote"]
        lot, tick = Decimal(listing["lot_size"]), Decimal(listing["tick_size"])
        self.lot_units = int(lot.scaleb(precisions[self.base]))
        self.notional_units = int((tick * lot).scaleb(precisions[self.quote]))
        self.maker_rate = rate_fraction(listing["maker_fee"])
        self.taker_rate = rate_fraction(listing["taker_fee"])


class LedgerCheck:
    """Folds postings and holds fact by fact; see the module docstring for what it checks."""

    def __init__(self) -> None:
        self.balances: dict[tuple[str, str], list[int]] = {}
        self.totals: dict[str, int] = {}
        self.holds: dict[str, list[Any]] = {}  # hold id → [account, asset, amount]
        self.held: dict[tuple[str, str], int] = {}  # (account, asset) → sum of its holds
        self.precisions: dict[str, int] = {}
        self.markets: dict[str, _MarketTerms] = {}
        self.keys: set[str] = set()
        self.ids: set[str] = set()
        self.last_trade_id = 0
        self.counts: Counter[str] = Counter()
        self._touched_assets: set[str] = set()

    # -- per outcome ------------------------------------------------------------------------

    def outcome(self, facts: list[Fact]) -> list[Problem]:
        """Fold one outcome's facts; the problems found, in the order they were found."""
        out: list[Problem] = []
        self._touched_assets = set()
        for fact in facts:
            try:
                self._fact(fact, out)
            except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
                out.append(("malformed_fact", f"{fact.get('type')!r} fact cannot be folded: {exc!r}"))
        totals = self.totals
        for asset in sorted(self._touched_assets):
            if totals.get(asset, 0):
                out.append(("conservation", f"all accounts of {asset} sum to {totals[asset]}, not 0"))
        return out

    def _fact(self, f: Fact, out: list[Problem]) -> None:
        kind = f["type"]
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        # the (account, asset) keys this fact changed, in the order first changed (so that the
        # problems about them come in a fixed order)
        touched: dict[tuple[str, str], None] = {}
        postings = f.get("postings")
        if postings is not None:
            self._post(kind, postings, touched, out)
        rule = _RULES.get(kind)
        if rule is not None:
            rule(self, f, touched, out)
        balances, held = self.balances, self.held
        for key in touched:
            row = balances.get(key)
            if row is None:
                available = frozen = 0
            else:  # a row is always [available, frozen] (made by _post or seeded so)
                available, frozen = row[0], row[1]
            account = key[0]
            if account[:1] == "@":
                if frozen:
                    out.append(("system_frozen", f"{account}/{key[1]} frozen {frozen} after {kind}"))
                continue
            if available < 0 or frozen < 0:
                out.append(
                    (
                        "negative_balance",
                        f"{account}/{key[1]} available {available}, frozen {frozen} after {kind}",
                    )
                )
            want = held.get(key, 0)
            if frozen != want:
                out.append(
                    (
                        "frozen_mismatch",
                        f"{account}/{key[1]} frozen {frozen} but its holds are {want} after {kind}",
                    )
                )

    def _post(self, kind: str, postings: list[Any], touched: Touched, out: list[Problem]) -> None:
        sums: dict[str, int] = {}
        balances = self.balances
        for posting in postings:
            if type(posting) is list and len(posting) == 4:  # as always: by index, not unpacked
                row4: list[Any] = posting
                account, asset, d_available, d_frozen = row4[0], row4[1], row4[2], row4[3]
            else:  # unpacked, to fail as it always did
                account, asset, d_available, d_frozen = posting
            if type(d_available) is not int or type(d_frozen) is not int:
                raise TypeError(f"posting deltas must be integers: {d_available!r}, {d_frozen!r}")
            key = (account, asset)
            row = balances.get(key)
            if row is None:
                balances[key] = [d_available, d_frozen]
            else:
                row[0] += d_available
                row[1] += d_frozen
            sums[asset] = sums.get(asset, 0) + d_available + d_frozen
            touched[key] = None
        # The totals over all accounts move only by what a fact fails to balance.
        if not any(sums.values()):
            return
        for asset, total in sorted(sums.items()):
            if total:
                self.totals[asset] = self.totals.get(asset, 0) + total
                self._touched_assets.add(asset)
                out.append(("unbalanced_postings", f"{kind} postings in {asset} sum to {total}, not 0"))

    # -- holds ------------------------------------------------------------------------------

    def _hold(self, hold_id: str, account: str, asset: str, amount: int, touched: Touched) -> None:
        self.holds[hold_id] = [account, asset, amount]
        key = (account, asset)
        self.held[key] = self.held.get(key, 0) + amount
        touched[key] = None

    def _change_hold(
        self,
        hold_id: str,
        delta: int,
        touched: Touched,
        out: list[Problem],
        why: str,
        of: object = "",
        then: str = "",
    ) -> list[Any] | None:
        """``f"{why}{of}{then}"`` says what changes the hold, put together only for a problem
        (formatting it for every fact cost about as much as the rest of the change)."""
        hold = self.holds.get(hold_id)
        if hold is None:
            out.append(("unknown_hold", f"{why}{of}{then}: no open hold {hold_id}"))
            return None
        hold[2] += delta
        key = (hold[0], hold[1])
        self.held[key] += delta
        touched[key] = None
        if hold[2] < 0:
            out.append(("hold_overdrawn", f"{why}{of}{then}: hold {hold_id} is now {hold[2]}"))
        return hold

    def _unique(self, space: set[str], key: str, code: str, out: list[Problem], what: str) -> None:
        if key in space:
            out.append((code, f"{what} was applied before"))
        space.add(key)


# -- the rules per fact type ----------------------------------------------------------------


def _asset_listed(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
    lc.precisions[f["symbol"]] = f["precision"]


def _market_listed(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
    lc.markets[f["symbol"]] = _MarketTerms(f, lc.precisions)


def _keyed(kind: str, id_field: str, user_field: str) -> Any:
    def rule(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
        user, ref = f[user_field], f["reference"]
        lc._unique(
            lc.keys, f"{kind}:{user}:{ref}", "duplicate_key", out, f"{kind} reference {ref!r} of {user}"
        )
        lc._unique(lc.ids, f[id_field], "duplicate_id", out, f"{kind} id {f[id_field]}")
        if kind == "withdrawal":
            lc._hold("w:" + f[id_field], f["user_id"], f["asset"], f["amount"], touched)

    return rule


def _withdrawal_ended(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
    why = f"{f['type']} {f['withdrawal_id']}"
    hold = lc._change_hold("w:" + f["withdrawal_id"], -f["amount"], touched, out, why)
    if hold is not None:
        if hold[2] != 0:
            out.append(("hold_not_released", f"{why}: hold left at {hold[2]}"))
        del lc.holds["w:" + f["withdrawal_id"]]


def _order_accepted(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
    oid, user = f["order_id"], f["user_id"]
    lc._unique(lc.ids, oid, "duplicate_id", out, f"order id {oid}")
    coid = f.get("client_order_id")
    if coid is not None:
        lc._unique(
            lc.keys, f"order:{user}:{coid}", "duplicate_key", out, f"client order id {coid!r} of {user}"
        )
    lc._hold(oid, user, f["hold_asset"], f["hold"], touched)


def _trade_executed(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
    tid = f["trade_id"]
    if tid != lc.last_trade_id + 1:
        out.append(("trade_id_sequence", f"trade id {tid} follows {lc.last_trade_id}"))
    lc.last_trade_id = tid
    m = lc.markets[f["market"]]
    lots = f["quantity"]
    base_amount, quote_amount = lots * m.lot_units, f["price"] * lots * m.notional_units
    if (f["base_amount"], f["quote_amount"]) != (base_amount, quote_amount):
        out.append(
            (
                "trade_amounts",
                f"trade {tid}: {lots} lots at {f['price']} ticks are {base_amount} {m.base} and "
                f"{quote_amount} {m.quote}, recorded {f['base_amount']} and {f['quote_amount']}",
            )
        )
    buy = f["taker_side"] == "buy"
    # (fee, asset) per side, taker then maker: each pays in the asset it receives
    taker_fee = fee(base_amount if buy else quote_amount, m.taker_rate)
    taker_asset = m.base if buy else m.quote
    maker_fee = fee(quote_amount if buy else base_amount, m.maker_rate)
    maker_asset = m.quote if buy else m.base
    fees_by_asset: dict[str, int] = {}
    _fee(f, tid, "taker", f["taker_fee"], f["taker_fee_asset"], taker_fee, taker_asset, fees_by_asset, out)
    _fee(f, tid, "maker", f["maker_fee"], f["maker_fee_asset"], maker_fee, maker_asset, fees_by_asset, out)
    credited: dict[str, int] = {}
    for posting in f["postings"]:
        if type(posting) is list and len(posting) == 4:  # by index, as in _post
            row4: list[Any] = posting
            account, asset, d_available = row4[0], row4[1], row4[2]
        else:
            account, asset, d_available, _d_frozen = posting
        if account == FEES:
            credited[asset] = credited.get(asset, 0) + d_available
    # equal dicts stay equal with their zero entries left out: filter only when they differ
    if credited != fees_by_asset and {a: v for a, v in credited.items() if v} != {
        a: v for a, v in fees_by_asset.items() if v
    }:
        out.append(("fee_mismatch", f"trade {tid}: @fees credited {credited}, the fees are {fees_by_asset}"))
    lc._change_hold(f["maker_order_id"], -f["maker_hold_used"], touched, out, "trade ", tid, " maker")
    lc._change_hold(f["taker_order_id"], -f["taker_hold_used"], touched, out, "trade ", tid, " taker")


def _fee(
    f: Fact,
    tid: Any,
    side: str,
    got_fee: Any,
    got_asset: Any,
    amount: int,
    asset: str,
    fees_by_asset: dict[str, int],
    out: list[Problem],
) -> None:
    """One side's recorded fee against what it should be; added to ``fees_by_asset``."""
    if got_fee != amount or got_asset != asset:
        out.append(
            (
                "fee_mismatch",
                f"trade {tid}: {side} fee should be {amount} {asset}, recorded {got_fee} {got_asset}",
            )
        )
    fees_by_asset[got_asset] = fees_by_asset.get(got_asset, 0) + got_fee


def _order_amended(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
    hold = lc.holds.get(f["order_id"])
    delta = 0 if hold is None else f["hold"] - hold[2]
    lc._change_hold(f["order_id"], delta, touched, out, "amend of ", f["order_id"])


def _order_closed(lc: LedgerCheck, f: Fact, touched: Touched, out: list[Problem]) -> None:
    oid = f["order_id"]
    hold = lc._change_hold(oid, -f["released"], touched, out, "close of ", oid)
    if hold is not None:
        if hold[2] != 0:
            out.append(("hold_not_released", f"order {oid} closed with {hold[2]} still held"))
        del lc.holds[oid]


_RULES = {
    "AssetListed": _asset_listed,
    "MarketListed": _market_listed,
    "Deposited": _keyed("deposit", "deposit_id", "user_id"),
    "Transferred": _keyed("transfer", "transfer_id", "from_user_id"),
    "WithdrawalRequested": _keyed("withdrawal", "withdrawal_id", "user_id"),
    "WithdrawalCompleted": _withdrawal_ended,
    "WithdrawalFailed": _withdrawal_ended,
    "OrderAccepted": _order_accepted,
    "TradeExecuted": _trade_executed,
    "OrderAmended": _order_amended,
    "OrderClosed": _order_closed,
}
