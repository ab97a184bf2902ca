"""Deciding everything but orders: users, assets, markets, deposits, withdrawals, transfers.

Every handler validates first and raises ``Reject`` before emitting; the dispatcher turns a
rejection into the fact that records it, so a refused request is in the log too and changes
nothing. Admin commands are refused unless the request's user has the admin role (the api
checks roles too; the engine does not trust it to).
"""

from __future__ import annotations

from domain.amounts import AmountError, to_units
from domain.ledger import CUSTODY
from domain.markets import DELISTED, HALTED, TRADING, Asset, Market, MarketError
from engine import trading
from engine.exchange import Exchange, Fact, Handler, Reject, RequestRecord
from engine.trading import merge_postings


def register_user(ex: Exchange, req: RequestRecord) -> None:
    cmd = req.command
    roles = list(cmd.get("roles") or ["trader"])
    if roles != ["trader"] and req.actor is not None:
        ex.require_actor(req, "admin")
    if cmd["username"] in ex.usernames:
        raise Reject("user_exists", f"username {cmd['username']!r} is taken")
    ex.emit(
        {
            "type": "UserRegistered",
            "user_id": req.request_id,
            "username": cmd["username"],
            "roles": roles,
            "password_hash": cmd["password_hash"],
        }
    )


def _admin(ex: Exchange, req: RequestRecord) -> None:
    if req.actor is not None:  # None: the operator's own bootstrap, from the server process
        ex.require_actor(req, "admin")


def list_asset(ex: Exchange, req: RequestRecord) -> None:
    _admin(ex, req)
    cmd = req.command
    if cmd["symbol"] in ex.assets:
        raise Reject("asset_exists", f"asset {cmd['symbol']} is listed already")
    try:
        asset = Asset.create(cmd["symbol"], cmd["precision"])
    except MarketError as exc:
        raise Reject("invalid_request", str(exc)) from None
    ex.emit({"type": "AssetListed", "symbol": asset.symbol, "precision": asset.precision})


def list_market(ex: Exchange, req: RequestRecord) -> None:
    _admin(ex, req)
    cmd = req.command
    if cmd["symbol"] in ex.markets:
        raise Reject("market_exists", f"market {cmd['symbol']} is listed already")
    try:
        market = Market.create(
            cmd["symbol"],
            ex.asset(cmd["base"]),
            ex.asset(cmd["quote"]),
            cmd["tick_size"],
            cmd["lot_size"],
            cmd.get("min_notional", "0"),
            cmd.get("maker_fee", "0"),
            cmd.get("taker_fee", "0"),
        )
    except MarketError as exc:
        raise Reject("invalid_market", str(exc)) from None
    ex.emit({"type": "MarketListed", **market.listing()})


def _status_change(allowed_from: tuple[str, ...], to: str) -> Handler:
    def handle(ex: Exchange, req: RequestRecord) -> None:
        _admin(ex, req)
        market = ex.market(req.command["market"])
        current = ex.status[market.symbol]
        if current not in allowed_from:
            raise Reject("market_not_trading", f"{market.symbol} is {current}, cannot become {to}")
        if to == DELISTED:
            for order in list(ex.books[market.symbol].orders_in_priority()):
                trading.close(ex, order, "cancelled", "market_delisted")
        ex.emit({"type": "MarketStatusChanged", "market": market.symbol, "status": to})

    return handle


def _amount(ex: Exchange, asset_symbol: object, text: object) -> tuple[str, int]:
    asset = ex.asset(asset_symbol)
    try:
        amount = to_units(text, asset.precision)
    except AmountError as exc:
        raise Reject("invalid_amount", str(exc)) from None
    if amount <= 0:
        raise Reject("invalid_amount", "the amount must be positive")
    return asset.symbol, amount


def _unused(ex: Exchange, key: str, reference: str) -> None:
    if key in ex.keys:
        raise Reject("duplicate", f"reference {reference!r} was used before")


def deposit(ex: Exchange, req: RequestRecord) -> None:
    _admin(ex, req)
    cmd = req.command
    user = ex.user_by_name(cmd["username"])
    asset, amount = _amount(ex, cmd["asset"], cmd["amount"])
    _unused(ex, f"deposit:{user.user_id}:{cmd['reference']}", cmd["reference"])
    ex.emit(
        {
            "type": "Deposited",
            "deposit_id": req.request_id,
            "user_id": user.user_id,
            "asset": asset,
            "amount": amount,
            "reference": cmd["reference"],
            "postings": merge_postings((CUSTODY, asset, -amount, 0), (user.user_id, asset, amount, 0)),
        }
    )


def request_withdrawal(ex: Exchange, req: RequestRecord) -> None:
    user_id = ex.require_actor(req, "trader")
    cmd = req.command
    asset, amount = _amount(ex, cmd["asset"], cmd["amount"])
    _unused(ex, f"withdrawal:{user_id}:{cmd['reference']}", cmd["reference"])
    available = ex.ledger.available(user_id, asset)
    if amount > available:
        raise Reject("insufficient_funds", f"needs {amount} {asset} units, has {available}")
    ex.emit(
        {
            "type": "WithdrawalRequested",
            "withdrawal_id": req.request_id,
            "user_id": user_id,
            "asset": asset,
            "amount": amount,
            "reference": cmd["reference"],
            "postings": merge_postings((user_id, asset, -amount, amount)),
        }
    )


def _end_withdrawal(completed: bool) -> Handler:
    def handle(ex: Exchange, req: RequestRecord) -> None:
        _admin(ex, req)
        wid = str(req.command["withdrawal_id"])
        w = ex.withdrawals.get(wid)
        if w is None:
            raise Reject("unknown_withdrawal", f"no withdrawal {wid}")
        if w.status != "pending":
            raise Reject("withdrawal_not_pending", f"withdrawal {wid} is {w.status}")
        if completed:
            postings = merge_postings((w.user_id, w.asset, 0, -w.amount), (CUSTODY, w.asset, w.amount, 0))
        else:
            postings = merge_postings((w.user_id, w.asset, w.amount, -w.amount))
        ex.emit(
            {
                "type": "WithdrawalCompleted" if completed else "WithdrawalFailed",
                "withdrawal_id": wid,
                "user_id": w.user_id,
                "asset": w.asset,
                "amount": w.amount,
                "postings": postings,
            }
        )

    return handle


def transfer(ex: Exchange, req: RequestRecord) -> None:
    user_id = ex.require_actor(req, "trader")
    cmd = req.command
    to = ex.user_by_name(cmd["to_username"])
    if to.user_id == user_id:
        raise Reject("self_transfer", "a transfer needs another user")
    asset, amount = _amount(ex, cmd["asset"], cmd["amount"])
    _unused(ex, f"transfer:{user_id}:{cmd['reference']}", cmd["reference"])
    available = ex.ledger.available(user_id, asset)
    if amount > available:
        raise Reject("insufficient_funds", f"needs {amount} {asset} units, has {available}")
    ex.emit(
        {
            "type": "Transferred",
            "transfer_id": req.request_id,
            "from_user_id": user_id,
            "to_user_id": to.user_id,
            "asset": asset,
            "amount": amount,
            "reference": cmd["reference"],
            "postings": merge_postings((user_id, asset, -amount, 0), (to.user_id, asset, amount, 0)),
        }
    )


def rejection(ex: Exchange, req: RequestRecord, reject: Reject) -> Fact:
    """The fact that records a refused request."""
    cmd = req.command
    name = cmd.get("command")
    if name == "PlaceOrder":
        return {
            "type": "OrderRejected",
            "order_id": req.request_id,
            "user_id": req.actor,
            "client_order_id": cmd.get("client_order_id"),
            "market": cmd.get("market"),
            "side": cmd.get("side"),
            "order_type": cmd.get("type"),
            "reason": reject.reason,
            "message": reject.message,
        }
    if name in ("AmendOrder", "CancelOrder"):
        return {
            "type": "AmendRejected" if name == "AmendOrder" else "CancelRejected",
            "order_id": str(cmd.get("order_id")),
            "user_id": req.actor,
            "reason": reject.reason,
            "message": reject.message,
        }
    return {
        "type": "RequestRejected",
        "command": name if isinstance(name, str) else None,
        "reason": reject.reason,
        "message": reject.message,
    }


HANDLERS: dict[str, Handler] = {
    "RegisterUser": register_user,
    "ListAsset": list_asset,
    "ListMarket": list_market,
    "HaltMarket": _status_change((TRADING,), HALTED),
    "ResumeMarket": _status_change((HALTED,), TRADING),
    "DelistMarket": _status_change((TRADING, HALTED), DELISTED),
    "Deposit": deposit,
    "RequestWithdrawal": request_withdrawal,
    "CompleteWithdrawal": _end_withdrawal(True),
    "FailWithdrawal": _end_withdrawal(False),
    "Transfer": transfer,
    "PlaceOrder": trading.place_order,
    "AmendOrder": trading.amend_order,
    "CancelOrder": trading.cancel_order,
    "CancelAllOrders": trading.cancel_all_orders,
}
