"""One INSERT of a model's row, its statement built once from the model's metadata, for the ingest hot paths.

`/events/` and the channel API store one row per request, and the ORM's `create` compiled the same INSERT
anew each time: the largest share of a request's CPU after the checks (bench/ingest.py; bench/RESULTS.md,
"ingest.py"). Here the statement is built once per model and database vendor from `_meta` (so it follows
migrations), and each value is prepared by its own field exactly as `Model.save` does (`pre_save`, then
`get_db_prep_save`: an EncryptedTextField still seals, a JSONField still encodes). What is skipped is what
these rows do not use: save signals (none is connected to them; `check_no_signals` says so in the tests),
parent models, deferred fields and `update_fields`. The row is committed by the caller's transaction, or
by itself in autocommit, as `create` would be.

`insert_unless(obj, sql, params)` stores the row only if `sql` (a SELECT) finds nothing, in the same statement
(`INSERT ... SELECT ... WHERE NOT EXISTS (...)`): `/events/`' duplicate check and its INSERT in one round trip.
"""

from functools import lru_cache

from django.db import connections, models
from django.db.models.signals import post_save, pre_save


@lru_cache(maxsize=32)
def _statement(
    model: type[models.Model], alias: str, tail: str | None = None
) -> tuple[str, tuple[models.Field, ...], bool]:
    connection = connections[alias]
    meta = model._meta
    if meta.parents or not isinstance(meta.pk, models.AutoField):
        raise TypeError(f"{meta.label}: only a model with its own auto primary key is inserted here")
    quote = connection.ops.quote_name
    fields = tuple(f for f in meta.concrete_fields if not f.primary_key)
    returning = connection.features.can_return_columns_from_insert
    values = ", ".join(["%s"] * len(fields))
    # (PostgreSQL gives the SELECT's untyped parameters the target columns' types, as it does VALUES'.)
    source = f"VALUES ({values})" if tail is None else f"SELECT {values} {tail}"
    sql = f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(str(f.column)) for f in fields)}) {source}" + (
        f" RETURNING {quote(str(meta.pk.column))}" if returning else ""
    )
    return sql, fields, returning


# Fields whose value, when it is a str (exactly) or None, Django stores as it is: their pre_save reads the
# attribute and their get_db_prep_save returns a str unchanged on every backend (tests/inbox/test_rows.py
# compares both ways). Every other field and value goes through the field, as Model.save does.
_TEXT_FIELDS = (models.CharField, models.TextField)


@lru_cache(maxsize=32)
def _plain(model: type[models.Model], alias: str, tail: str | None) -> tuple[bool, ...]:
    return tuple(type(f) in _TEXT_FIELDS for f in _statement(model, alias, tail)[1])


def statement(obj: models.Model, *, using: str = "default", tail: str | None = None) -> tuple[str, list]:
    """The INSERT of `obj` and its parameters, as `insert` runs it (RETURNING the pk where the database can):
    for a caller that runs it inside a statement of its own, then calls `stored`. `tail` ("WHERE ...",
    "FROM ...") makes it `INSERT ... SELECT <the values> <tail>`; the tail's parameters follow the values'."""
    sql, fields, _returning = _statement(type(obj), using, tail)
    connection = connections[using]
    values = obj.__dict__
    params = []
    for field, plain in zip(fields, _plain(type(obj), using, tail), strict=True):
        value = values.get(field.attname) if plain else None
        if value is None or type(value) is not str:  # (a text field's None is prepared too: it may be a default)
            value = field.get_db_prep_save(field.pre_save(obj, True), connection)
        params.append(value)
    return sql, params


def stored(obj: models.Model, pk, *, using: str = "default") -> models.Model:
    """`obj` as saved under `pk` (what `insert` does once its statement ran)."""
    obj.pk = pk
    obj._state.adding, obj._state.db = False, using
    return obj


def insert(obj: models.Model, *, using: str = "default") -> models.Model:
    """INSERT `obj` (a new row of a model with an auto primary key); sets its pk and returns it.

    Raises what the database raises (IntegrityError for a unique key), as `create` does."""
    _insert(obj, using, None, [])
    return obj


def insert_unless(obj: models.Model, sql: str, params: list, *, using: str = "default") -> bool:
    """INSERT `obj` as `insert` does, unless the SELECT `sql` (with `params`) finds a row, checked in the INSERT's
    own statement; True when stored (its pk set), False when that found a row (nothing stored, `obj` unsaved)."""
    return _insert(obj, using, f"WHERE NOT EXISTS ({sql})", params)


def insert_where(obj: models.Model, tail: str, params: list, *, using: str = "default") -> bool:
    """INSERT `obj` as `insert` does, only if `tail` (a "WHERE ..." of the statement's own) holds, with `params`;
    True when stored (its pk set), False when the condition did not hold (nothing stored, `obj` unsaved)."""
    return _insert(obj, using, tail, params)


def _insert(obj: models.Model, using: str, tail: str | None, tail_params: list) -> bool:
    sql, params = statement(obj, using=using, tail=tail)
    returning = _statement(type(obj), using, tail)[2]
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params + tail_params)
        if returning:
            found = cursor.fetchone()
            pk = None if found is None else found[0]
        else:
            pk = cursor.lastrowid if cursor.rowcount == 1 else None
    if pk is None:
        return False
    stored(obj, pk, using=using)
    return True


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
