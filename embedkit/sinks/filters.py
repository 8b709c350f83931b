"""What a search filter means, written once as qdrant-client filter models: the server and client-local
engines send them as they are, the Qdrant Edge engine translates them (embedkit.sinks.edge.edge_filter)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from qdrant_client import models

from embedkit.errors import InputError
from embedkit.ingestion.records import DOC_ID, METADATA, SOURCE

__all__ = ["OWN_FIELDS", "doc_filter", "has_field", "metadata_condition", "payload_fields"]

OWN_FIELDS = (DOC_ID, SOURCE)  # embedkit's top-level payload fields, which a plain filter key also reaches


def metadata_condition(metadata_filter: Mapping[str, Any] | None) -> models.Filter | None:
    """A Qdrant filter keeping the points whose every key equals its value; None for no filter.

    Keys: a plain KEY is the metadata key KEY; `doc_id` and `source` also match embedkit's own top-level
    fields of that name (a point matches when either does: `source` is LangChain's usual metadata key
    too); `metadata.KEY` is the metadata key alone. Values match by type, as JSON stored them: a str
    only a string, an int only an integer, a bool only a boolean, a float any number equal to it.
    A list (or tuple, set) accepts any of its values, which may mix types: the CLI passes "2024" as
    ["2024", 2024] to find both. Raises InputError for a key that is not a non-empty str, or a value
    of another type (None, a dict, a nested list, nan).
    """
    if not metadata_filter:
        return None
    if not isinstance(metadata_filter, Mapping):
        raise InputError(f"metadata filter must be a mapping of key to value, got {type(metadata_filter).__name__}")
    conditions: list[models.Condition] = []
    for key, value in metadata_filter.items():
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        matches = [match for field in payload_fields(key) for match in _matches(field, key, values)]
        # MatchAny takes one type only, so a mixed key is a `should` of one condition per type
        conditions.append(matches[0] if len(matches) == 1 else models.Filter(should=matches))
    return models.Filter(must=conditions)


def payload_fields(key: object) -> list[str]:
    """The payload paths a filter key reaches: the metadata key, and for doc_id / source the top-level field."""
    if not isinstance(key, str) or not key:
        raise InputError(f"metadata filter keys must be non-empty strings, got {key!r}")
    if key.startswith(f"{METADATA}."):
        if key == f"{METADATA}.":
            raise InputError("metadata filter key 'metadata.' names no key; write metadata.KEY")
        return [key]
    return [key, f"{METADATA}.{key}"] if key in OWN_FIELDS else [f"{METADATA}.{key}"]


def _matches(field: str, key: str, values: list[Any]) -> list[models.Condition]:
    """One condition per value type: strings and integers each as one match, booleans and floats one each."""
    strings: list[str] = []
    integers: list[int] = []
    others: list[models.Condition] = []
    for value in values:
        if isinstance(value, bool):  # before int: True is an int in Python, not in Qdrant
            others.append(models.FieldCondition(key=field, match=models.MatchValue(value=value)))
        elif isinstance(value, int):
            integers.append(value)
        elif isinstance(value, str):
            strings.append(value)
        elif isinstance(value, float) and math.isfinite(value):
            # Qdrant matches floats by range only; an equal range also finds an integer stored as 2 for 2.0
            others.append(models.FieldCondition(key=field, range=models.Range(gte=value, lte=value)))
        else:
            raise InputError(
                f"metadata filter {key!r}: match a str, int, bool, finite float or a list of them, got {value!r}"
            )
    conditions: list[models.Condition] = [
        models.FieldCondition(
            key=field, match=models.MatchValue(value=group[0]) if len(group) == 1 else models.MatchAny(any=group)
        )
        for group in (strings, integers)
        if group
    ]
    conditions.extend(others)
    # an empty list matches nothing, as MatchAny([]) always has
    return conditions or [models.FieldCondition(key=field, match=models.MatchAny(any=[]))]


def has_field(field: str) -> models.Filter:
    """Points where `field` holds a value: not missing, null or [] (nothing a filter value could match;
    embedkit writes a null `source` when a run names none)."""
    return models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=field))])


def doc_filter(doc_id: str, *extra: models.Condition) -> models.Filter:
    """The points of document `doc_id` (and `extra` conditions)."""
    return models.Filter(must=[models.FieldCondition(key=DOC_ID, match=models.MatchValue(value=doc_id)), *extra])
