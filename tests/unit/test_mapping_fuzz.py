"""Fuzz every mapping's input: any JSON value either translates or fails with a MappingError."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.mapping import MappingError, MappingSet

leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["20261131093000", "440305199103150248", "NaN", ""])
)


def values(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), inner, max_size=8)
        ),
        max_leaves=30,
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_json_translates_or_fails_cleanly(mapping_set: MappingSet, data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(mapping_set.schema_names()))
    cm = mapping_set.compiled.get(schema)
    keys = (
        list(cm.mapping.schema.properties) if cm else ["name", "applicant", "status", "materials"]
    )
    value = data.draw(values(keys))
    kind = mapping_set.kind_of(schema)
    target = data.draw(
        st.sampled_from([s for s in mapping_set.schema_names() if mapping_set.kind_of(s) == kind])
    )
    try:
        result = mapping_set.translate(schema, target, value)
    except MappingError:
        return
    assert isinstance(result.record, dict)
