"""One INSERT of a model's row, its statement built once from the model's metadata, for the ingest hot paths.

`/events/` and the channel API store one row per request, and the ORM's `create` compiled the same INSERT
anew each time: the largest share of a request's CPU after the checks (bench/ingest.py; bench/RESULTS.md,
"ingest.py"). Here the statement is built once per model and database vendor from `_meta` (so it follows
migrations), and each value is prepared by its own field exactly as `Model.save` does (`pre_save`, then
`get_db_prep_save`: an EncryptedTextField still seals, a JSONField still encodes). What is skipped is what
these rows do not use: save signals (none is connected to them; `check_no_signals` says so in the tests),
parent models, deferred fields and `update_fields`. The row is committed by the caller's transaction, or
by itself in autocommit, as `create` would be.
"""

from functools import lru_cache

from django.db import connections, models
from django.db.models.signals import post_save, pre_save


@lru_cache(maxsize=16)
def _statement(model: type[models.Model], alias: str) -> tuple[str, tuple[models.Field, ...], bool]:
    connection = connections[alias]
    meta = model._meta
    if meta.parents or not isinstance(meta.pk, models.AutoField):
        raise TypeError(f"{meta.label}: only a model with its own auto primary key is inserted here")
    quote = connection.ops.quote_name
    fields = tuple(f for f in meta.concrete_fields if not f.primary_key)
    returning = connection.features.can_return_columns_from_insert
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(str(f.column)) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    ) + (f" RETURNING {quote(str(meta.pk.column))}" if returning else "")
    return sql, fields, returning


def insert(obj: models.Model, *, using: str = "default") -> models.Model:
    """INSERT `obj` (a new row of a model with an auto primary key); sets its pk and returns it.

    Raises what the database raises (IntegrityError for a unique key), as `create` does."""
    sql, fields, returning = _statement(type(obj), using)
    connection = connections[using]
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        pk = cursor.fetchone()[0] if returning else cursor.lastrowid
    obj.pk = pk
    obj._state.adding, obj._state.db = False, using
    return obj


def check_no_signals(*models_: type[models.Model]) -> list[str]:
    """The models among these that a pre_save or post_save receiver listens to (`insert` would skip it)."""
    return [m._meta.label for m in models_ if pre_save.has_listeners(m) or post_save.has_listeners(m)]


@lru_cache(maxsize=16)
def _converters(model: type[models.Model], names: tuple[str, ...], alias: str) -> tuple[tuple, ...]:
    """Per field of `names` (attnames of `model`): the converters the ORM would apply to its column's value, the
    backend's first, then the field's own (from_db_value), as the SQL compiler orders them."""
    connection = connections[alias]
    meta = model._meta
    by_attname = {f.attname: f for f in meta.concrete_fields}
    out = []
    for name in names:
        field = by_attname[name]
        column = field.get_col(meta.db_table)
        out.append(
            (column, tuple(connection.ops.get_db_converters(column)) + tuple(field.get_db_converters(connection)))
        )
    return tuple(out)


def load(model: type[models.Model], names: tuple[str, ...], values, *, using: str = "default") -> models.Model:
    """A model instance from one row of a raw query, its `names` (attnames) read and converted as the ORM would
    (the other fields load on access, as deferred fields do): the ORM's row handling without its per-call setup."""
    connection = connections[using]
    converted = []
    for (column, converters), value in zip(_converters(model, names, using), values, strict=True):
        for convert in converters:
            value = convert(value, column, connection)
        converted.append(value)
    return model.from_db(using, list(names), converted)
