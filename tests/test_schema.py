"""Every table declared in mist.traces.schema: labelled, versioned, and round-tripped
through the project's own Parquet writer and reader with schema and values intact."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mist.traces import schema as schema_module
from mist.traces.io import read_table, write_table
from mist.traces.schema import from_columns


def _declared() -> dict[str, pa.Schema]:
    """Every schema constant of the module, including those in dicts (BUNDLE_TABLES),
    by the name it is declared under."""
    found = {}
    for name, value in vars(schema_module).items():
        if name.startswith("_") or name == "SCHEMAS":
            continue
        if isinstance(value, pa.Schema):
            found[name] = value
        elif isinstance(value, dict) and value and all(isinstance(v, pa.Schema) for v in value.values()):
            found.update({f"{name}[{k!r}]": v for k, v in value.items()})
    return found


DECLARED = _declared()


def _value(kind: pa.DataType, i: int):
    """A non-null sample value of type ``kind``, different for each ``i``."""
    if pa.types.is_list(kind):
        return [_value(kind.value_type, i), _value(kind.value_type, i + 1)]
    if pa.types.is_integer(kind):
        return i + 1
    if pa.types.is_floating(kind):
        return 0.25 * (i + 1)
    if pa.types.is_string(kind):
        return f"v{i}"
    raise AssertionError(f"no sample value for {kind}")


def _plain(kind: pa.DataType) -> pa.DataType:
    """``kind`` with list items named as Arrow names them; Parquet calls them "element"
    (the compliant nested layout), which is the same type under another field name."""
    return pa.list_(_plain(kind.value_type)) if pa.types.is_list(kind) else kind


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, _plain(f.type), f.nullable, f.metadata) for f in schema],
                     schema.metadata)


def _sample(schema: pa.Schema) -> pa.Table:
    """Three rows: all values set, then nulls wherever the schema allows them, then set again."""
    columns = {f.name: [_value(f.type, 0), None if f.nullable else _value(f.type, 1), _value(f.type, 2)]
               for f in schema}  # fmt: skip
    return from_columns(schema, columns)


def test_declared_schemas_are_found():
    for name in ("REQUESTS", "TOKENS", "STEPS", "OPERATOR_PROFILE", "CALIBRATION_GRIDS",
                 "BUNDLE_TABLES['dense']", "BUNDLE_TABLES['engine_steps']"):  # fmt: skip
        assert name in DECLARED


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_schema_is_labelled_and_versioned(name):
    meta = DECLARED[name].metadata or {}
    assert meta.get(b"mist.table"), name
    assert meta.get(b"mist.version", b"").decode().isdigit(), name


def test_table_names_are_unique():
    labels = [s.metadata[b"mist.table"] for s in DECLARED.values()]
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_write_read_round_trip(name, tmp_path):
    schema = DECLARED[name]
    table = _sample(schema)
    path = tmp_path / "t.parquet"
    write_table(table, path)
    back = read_table(path, expect=schema.metadata[b"mist.table"].decode())
    assert _plain_schema(back.schema).equals(schema, check_metadata=True)
    assert back.to_pylist() == table.to_pylist()


def test_from_columns_rejects_unknown_and_missing_required_columns():
    with pytest.raises(KeyError, match="unknown columns for tokens"):
        from_columns(schema_module.TOKENS, {"request_id": ["a"], "token_index": [0], "time_s": [0.0],
                                            "typo": [1]})  # fmt: skip
    with pytest.raises(KeyError, match="'time_s' is required"):
        from_columns(schema_module.TOKENS, {"request_id": ["a"], "token_index": [0]})
