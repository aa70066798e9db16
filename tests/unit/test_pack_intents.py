"""A batch's intents cross to the writer process packed as runs of one class: unpacked, they
are the same intents in the same order, as unpickling each one gives."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from gateway.auth import Caller
from gateway.services.submission import SubmitRequestIntent
from gateway.store.intents import ClaimIntent, ExtendLeaseIntent, SubmitCaseIntent
from gateway.store.writer import Intent, pack_intents, unpack_intents


def _case(n: int) -> SubmitCaseIntent:
    return SubmitCaseIntent(
        partner="zs",
        request_id=f"r-{n}",
        body_hash=f"{n:064x}",
        exchange_id=f"x-{n}",
        receiving_city="442000",
        handling_city="440300",
        case_number=f"442000-2026-{n:06d}",
        canonical='{"case_number":"申请"}'.encode(),
        mapping_versions="zhongshan.case@1",
        target_partner="sz",
        response=b"\n\x03x-" + bytes([48 + n]),
    )


def _cross(intents: list[Intent]) -> list[Intent]:
    data = pickle.dumps((1.5, pack_intents(intents)), protocol=pickle.HIGHEST_PROTOCOL)
    now, packed = pickle.loads(data)
    assert now == 1.5
    return unpack_intents(packed)


def test_runs_of_several_classes_come_back_in_order() -> None:
    intents: list[Intent] = [
        _case(1),
        _case(2),
        ClaimIntent("w1", 10, 30.0),
        _case(3),
        ExtendLeaseIntent(7, "w1", 99.0, 2),
        ExtendLeaseIntent(8, "w2", 98.0, 1),
    ]
    packed = pack_intents(intents)
    assert [cls for cls, _ in packed] == [
        SubmitCaseIntent,
        ClaimIntent,
        SubmitCaseIntent,
        ExtendLeaseIntent,
    ]
    back = _cross(intents)
    assert back == intents
    assert [type(i) for i in back] == [type(i) for i in intents]
    # Equal to what pickling each intent by itself gives.
    assert back == [pickle.loads(pickle.dumps(i)) for i in intents]


def test_a_deferred_intent_crosses_without_its_context() -> None:
    intent = SubmitRequestIntent(Caller("zs", "442000"), b"\x0a\x01r", 3)
    intent.context = object()  # the writer process gets it once, by its token
    (back,) = _cross([intent])
    assert isinstance(back, SubmitRequestIntent)
    assert (back.caller, back.body, back.token, back.context) == (
        intent.caller,
        intent.body,
        3,
        None,
    )


@dataclass
class _OwnWay(Intent):
    """An intent that pickles itself its own way: kept as it is."""

    n: int

    def __reduce__(self) -> tuple[Any, ...]:
        return (_OwnWay, (self.n * 10,))


def test_an_intent_that_pickles_its_own_way_keeps_its_way() -> None:
    intents: list[Intent] = [_case(1), _OwnWay(2), _OwnWay(3), _case(4)]
    packed = pack_intents(intents)
    assert [cls for cls, _ in packed] == [SubmitCaseIntent, None, SubmitCaseIntent]
    back = _cross(intents)
    assert back == [_case(1), _OwnWay(20), _OwnWay(30), _case(4)]


def test_nothing_packs_to_nothing() -> None:
    assert pack_intents([]) == []
    assert _cross([]) == []
