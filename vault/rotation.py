"""Key rotation: every encrypted field of every installed model, re-encrypted with the first key.

The plan is read from the model registry (every `EncryptedTextField` of every model), so a secret added
later is rotated without anyone remembering to list it. Rows are rewritten one at a time under their row
lock, so a token refresh running meanwhile is never overwritten; a row no key decrypts is named (by the
fields its model lists in `VAULT_LABEL_FIELDS`, never a secret) and the others go on.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.apps import apps
from django.db import models, transaction
from django.db.models import Q

from . import spool
from .fields import DecryptionError, EncryptedTextField


@dataclass
class Outcome:
    """What rotation did to one model's rows."""

    model: type[models.Model]
    fields: list[str]
    done: int = 0
    unreadable: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.model._meta.verbose_name_plural)


def plan() -> list[tuple[type[models.Model], list[str]]]:
    """(model, its encrypted fields) for every installed, concrete model that has any."""
    found = []
    for model in apps.get_models():
        if model._meta.abstract or model._meta.proxy:
            continue
        names = [f.attname for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
        if names:
            found.append((model, names))
    return found


def _label(model: type[models.Model], pk) -> str:
    fields = getattr(model, "VAULT_LABEL_FIELDS", ())
    row = model._default_manager.filter(pk=pk).values(*fields).first() if fields else None
    details = ", ".join(f"{name} {value}" for name, value in (row or {}).items())
    return f"{model._meta.verbose_name} {pk}" + (f" ({details})" if details else "")


def rotate(*, dry_run: bool = False, progress: Callable[[str], None] | None = None) -> Iterator[Outcome]:
    """Re-encrypt (or, with `dry_run`, only decrypt) every stored secret; yields one Outcome per model."""
    for model, names in plan():
        outcome = Outcome(model, names)
        manager = model._default_manager
        holding = Q()
        for name in names:
            holding |= ~Q(**{name: ""})
        ids = manager.filter(holding).order_by("pk").values_list("pk", flat=True)
        for position, pk in enumerate(ids.iterator(chunk_size=500), start=1):
            try:
                with transaction.atomic():
                    rows = manager.filter(pk=pk)
                    row = (rows if dry_run else rows.select_for_update()).first()
                    if row is not None:
                        if not dry_run:
                            # Loaded decrypted with whichever key fits; saving encrypts with the first one.
                            row.save(update_fields=names)
                        outcome.done += 1
            except DecryptionError:
                outcome.unreadable.append(_label(model, pk))
            if progress is not None and position % 500 == 0:
                progress(f"  {outcome.name}: {position} ...")
        yield outcome


def rotate_spools(*, dry_run: bool = False) -> Iterator[tuple[str, int, list[str]]]:
    """Re-encrypt (or only open) every registered spool's held files: (spool name, count, unreadable files)."""
    for held in spool.SPOOLS.values():
        done, unreadable = held.rotate(dry_run=dry_run)
        yield held.name, done, unreadable
