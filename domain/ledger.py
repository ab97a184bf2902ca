"""The double-entry ledger: balances per account and asset, changed only by postings.

A posting is ``[account, asset, available_delta, frozen_delta]``. Every fact that moves money
carries postings that sum to zero per asset, so the sum over all accounts of each asset is zero
at every position. User accounts never go negative in either column; system accounts
(``@custody`` for what is deposited or withdrawn, ``@fees`` for fees) hold the other side.
The checks are pure functions that return violations, shared by the engine, tests and auditor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CUSTODY = "@custody"
FEES = "@fees"
SYSTEM_ACCOUNTS = (CUSTODY, FEES)

# A posting as facts carry it: the JSON array [account, asset, available delta, frozen delta]
# (a list, as the engine makes it and as the decoders give it back). The compiled build checks
# this annotation at run time, so it must say list.
Posting = list[Any]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: a code, what it concerns and a sentence saying why."""

    code: str
    subject: str
    message: str


def is_system(account: str) -> bool:
    return account.startswith("@")


class Ledger:
    """Balances keyed by (account, asset) as mutable ``[available, frozen]`` pairs."""

    __slots__ = ("balances",)

    def __init__(self) -> None:
        self.balances: dict[tuple[str, str], list[int]] = {}

    def available(self, account: str, asset: str) -> int:
        row = self.balances.get((account, asset))
        return row[0] if row else 0

    def frozen(self, account: str, asset: str) -> int:
        row = self.balances.get((account, asset))
        return row[1] if row else 0

    def apply(self, postings: Iterable[Posting]) -> None:
        """Apply postings as recorded; validation happened before the fact was made."""
        balances = self.balances
        for account, asset, d_available, d_frozen in postings:
            key = (account, asset)
            row = balances.get(key)
            if row is None:
                balances[key] = [d_available, d_frozen]
            else:
                row[0] += d_available
                row[1] += d_frozen


def check_postings_balance(postings: Iterable[Posting]) -> list[Violation]:
    """Per asset, the postings of one fact must sum to zero."""
    sums: dict[str, int] = {}
    for _account, asset, d_available, d_frozen in postings:
        sums[asset] = sums.get(asset, 0) + d_available + d_frozen
    return [
        Violation("unbalanced_postings", asset, f"postings in {asset} sum to {total}, not 0")
        for asset, total in sorted(sums.items())
        if total
    ]


def check_conservation(balances: Mapping[tuple[str, str], list[int]]) -> list[Violation]:
    """Per asset, the sum of available + frozen over every account must be exactly zero."""
    sums: dict[str, int] = {}
    for (_account, asset), (available, frozen) in balances.items():
        sums[asset] = sums.get(asset, 0) + available + frozen
    return [
        Violation("conservation", asset, f"all accounts of {asset} sum to {total}, not 0")
        for asset, total in sorted(sums.items())
        if total
    ]


def check_non_negative(balances: Mapping[tuple[str, str], list[int]]) -> list[Violation]:
    """User accounts never hold a negative available or frozen balance; system frozen is 0."""
    out = []
    for (account, asset), (available, frozen) in sorted(balances.items()):
        if is_system(account):
            if frozen:
                out.append(Violation("system_frozen", f"{account}/{asset}", "system accounts never freeze"))
            continue
        if available < 0 or frozen < 0:
            out.append(
                Violation(
                    "negative_balance",
                    f"{account}/{asset}",
                    f"available {available}, frozen {frozen}: neither may be negative",
                )
            )
    return out


def check_holds(
    balances: Mapping[tuple[str, str], list[int]], holds: Mapping[tuple[str, str], int]
) -> list[Violation]:
    """Each user's frozen balance equals the sum of what its open orders and withdrawals hold."""
    out = []
    keys = {k for k, row in balances.items() if row[1]} | {k for k, v in holds.items() if v}
    for key in sorted(keys):
        frozen = balances.get(key, [0, 0])[1]
        held = holds.get(key, 0)
        if frozen != held:
            out.append(
                Violation(
                    "frozen_mismatch",
                    f"{key[0]}/{key[1]}",
                    f"frozen {frozen} but open orders and withdrawals hold {held}",
                )
            )
    return out
