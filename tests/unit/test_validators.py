"""Built-in validators: digits and hex digits are ASCII ones."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.mapping.convert import ValueProblem, check_id_number, check_phone, check_sha256


@pytest.mark.parametrize(
    ("check", "value", "ok"),
    [
        (check_phone, "13800138000", True),
        (check_phone, "020-12345678", True),
        (check_phone, "1380013800٠", False),  # an Arabic-Indic zero: \d without re.ASCII took it
        (check_phone, "138００138000", False),  # fullwidth digits
        (check_sha256, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", True),
        (check_sha256, "9F86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", False),
        (check_sha256, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0", False),
        (check_sha256, "9f86d081884c7d659a2feaa0c55ad015 3bf4f1b2b0b822cd15d6c15b0f00a08", False),
        (check_sha256, "٩f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", False),
    ],
)
def test_phone_and_digest_checks_take_ascii_only(check: Any, value: str, ok: bool) -> None:
    if ok:
        assert check(value) == []
    else:
        with pytest.raises(ValueProblem):
            check(value)


def _with_check_digit(body: str) -> str:
    from stdnum.cn import ric

    return body + ric.calc_check_digit(body + "0")


@pytest.mark.parametrize("born", ["19910230", "19911301", "20230229", "00000101"])
def test_an_id_number_with_an_impossible_birth_date_is_refused_every_time(born: str) -> None:
    value = _with_check_digit(f"440305{born}024")
    for _ in range(2):  # the birth dates' cache must not remember a refusal as a pass
        with pytest.raises(ValueProblem) as err:
            check_id_number(value)
        assert err.value.code == "INVALID_ID_NUMBER"
        assert "impossible birth date" in err.value.message


def test_an_id_number_with_a_real_birth_date_passes_every_time() -> None:
    value = _with_check_digit("440305" + "20240229" + "024")  # a leap day
    assert check_id_number(value) == []
    assert check_id_number(value) == []
