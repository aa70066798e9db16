"""The mapping engine: declarative city mappings, checked at load, compiled, reversible.

Public entry points::

    MappingSet.load(path)          load, check and compile every city under a folder
    MappingSet.translate(a, b, r)  translate a record between two schemas
    run_golden(mapping_set)        run every city's golden samples and round trips
"""

from .errors import (
    Issue,
    KindMismatchError,
    MalformedRecordError,
    MappingError,
    MappingLoadError,
    Problem,
    RecordInvalidError,
    UnknownSchemaError,
)
from .registry import CANONICAL_SCHEMAS, Coverage, MappingSet, TranslationResult, parse_json

__all__ = [
    "CANONICAL_SCHEMAS",
    "Coverage",
    "Issue",
    "KindMismatchError",
    "MalformedRecordError",
    "MappingError",
    "MappingLoadError",
    "MappingSet",
    "Problem",
    "RecordInvalidError",
    "TranslationResult",
    "UnknownSchemaError",
    "parse_json",
]
