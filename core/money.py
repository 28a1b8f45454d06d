"""Money as exact decimals, with ISO 4217 currencies and their minor units.

Amounts travel as decimal strings, are held as `Decimal` and stored as `numeric`; a float
never touches them. The currency list and minor units come from the `iso4217` package,
which follows the ISO 4217 maintenance agency's published list. `PriceIn` is money as a request
or an import file gives it, checked into `Money` when decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated

import msgspec
from iso4217 import Currency

from core.events import whole


def amount_pattern(fraction_digits: int | None = None) -> str:
    """An amount's decimal string, unanchored (see core.events.whole): no sign, exponent or leading
    zeros, at most 18 integer digits; then a fraction of any length, or of at most `fraction_digits`
    (none when 0)."""
    if fraction_digits is None:
        fraction = r"(\.[0-9]+)?"
    elif fraction_digits:
        fraction = rf"(\.[0-9]{{1,{fraction_digits}}})?"
    else:
        fraction = ""
    return r"(0|[1-9][0-9]{0,17})" + fraction


_AMOUNT = re.compile(amount_pattern())  # used with fullmatch: no final-newline hole

# Active codes that carry a minor unit; funds, metals and test codes have none ("N.A.").
_MINOR_UNITS: dict[str, int] = {c.code: c.exponent for c in Currency if c.exponent is not None}


def currencies_by_minor_unit() -> dict[int, list[str]]:
    """Active currency codes grouped by their number of fraction digits."""
    groups: dict[int, list[str]] = {}
    for code, digits in sorted(_MINOR_UNITS.items()):
        groups.setdefault(digits, []).append(code)
    return groups


class MoneyError(ValueError):
    """An amount or currency that is not valid money."""


def minor_unit(currency: str) -> int:
    """Fraction digits of `currency`; raises MoneyError for a code that is not an active currency."""
    try:
        return _MINOR_UNITS[currency]
    except KeyError:
        raise MoneyError(f"{currency!r} is not an active ISO 4217 currency code") from None


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: str

    @classmethod
    def parse(cls, amount: str, currency: str) -> Money:
        """Parse a decimal string, scaled to the currency's minor unit.

        "120" EUR becomes 120.00; "120.001" EUR is refused rather than rounded.
        """
        digits = minor_unit(currency)
        match = _AMOUNT.fullmatch(amount)
        if match is None:
            raise MoneyError(
                f"amount {amount!r} must be a non-negative decimal string such as '129.90' "
                "(no sign, exponent or leading zeros, at most 18 integer digits)"
            )
        fraction = match.group(2)
        if fraction is not None and len(fraction) - 1 > digits:
            raise MoneyError(f"{currency} has {digits} fraction digits; amount {amount!r} has more")
        return cls(Decimal(amount).quantize(Decimal(1).scaleb(-digits)), currency)


Amount = Annotated[str, msgspec.Meta(pattern=whole(amount_pattern()), examples=["129.90"])]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=whole("[A-Z]{3}"), examples=["EUR"])]


class PriceIn(msgspec.Struct, forbid_unknown_fields=True):
    """Money: a non-negative decimal string with at most the currency's minor-unit digits."""

    amount: Amount
    currency: CurrencyCode

    def __post_init__(self) -> None:
        self.money()  # raises MoneyError (a ValueError), which msgspec reports with its path

    def money(self) -> Money:
        return Money.parse(self.amount, self.currency)
