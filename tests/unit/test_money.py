from decimal import Decimal

import pytest

from core.money import Money, MoneyError, minor_unit


@pytest.mark.parametrize(("currency", "digits"), [("EUR", 2), ("JPY", 0), ("KWD", 3), ("USD", 2), ("BHD", 3)])
def test_minor_units_come_from_iso_4217(currency: str, digits: int) -> None:
    assert minor_unit(currency) == digits


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [("120", "EUR", "120.00"), ("129.9", "EUR", "129.90"), ("0", "EUR", "0.00"), ("1500", "JPY", "1500"),
     ("1.234", "KWD", "1.234"), ("999999999999999999.99", "EUR", "999999999999999999.99")],
)
def test_amounts_are_scaled_to_the_minor_unit_exactly(amount: str, currency: str, expected: str) -> None:
    money = Money.parse(amount, currency)
    assert format(money.amount, "f") == expected
    assert money.amount == Decimal(amount)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("120.001", "EUR"), ("1.5", "JPY"), ("1.2345", "KWD"), ("-1.00", "EUR"), ("+1", "EUR"), ("1e3", "EUR"),
     ("01.00", "EUR"), ("", "EUR"), (" 1", "EUR"), ("1.", "EUR"), (".5", "EUR"), ("NaN", "EUR"),
     ("Infinity", "EUR"), ("1" * 19, "EUR"), ("1,00", "EUR")],
)
def test_bad_amounts_are_refused_not_rounded(amount: str, currency: str) -> None:
    with pytest.raises(MoneyError):
        Money.parse(amount, currency)


@pytest.mark.parametrize("currency", ["EURO", "eur", "XXX", "XAU", "ABC", "DEM", ""])
def test_only_active_currencies_with_a_minor_unit(currency: str) -> None:
    with pytest.raises(MoneyError):
        Money.parse("1", currency)
