"""Secrets held outside the database for a while: encrypted files in a folder, mirrored in the shared cache.

A *spool* keeps a small JSON document per key while the database cannot take it (a rotated token that
arrived during a database outage, see portals.tokens). Each entry is one file, named by a hash of its key,
holding only Fernet ciphertext made with the same keys as `EncryptedTextField`: nothing is written in plain
text. Files are written whole (a temporary file, fsync, rename), so a crash leaves the old entry or the new
one, never half of either. The file is the entry that counts; a copy goes to the default cache as well, so
that with Redis every machine of the deployment sees it even when the folder is not shared. Reading tries
the file first, then the cache.

Spools register here (`register`), so `vault.rotation` re-encrypts their entries with the first key like
every encrypted field.
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.core.cache import cache

from .fields import DecryptionError, decrypt, encrypt

log = logging.getLogger(__name__)

SUFFIX = ".held"


@dataclass(frozen=True)
class Spool:
    """Encrypted entries in the folder `folder()` returns (read from settings at each use)."""

    name: str
    folder: Callable[[], Path]
    # How long the cache keeps its copy (seconds): the life of what is held.
    cache_seconds: int = 86400

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.name}:{key}".encode()).hexdigest()[:40]
        return self.folder() / f"{digest}{SUFFIX}"

    def _cache_key(self, key: str) -> str:
        return "vault-spool:" + hashlib.sha256(f"{self.name}:{key}".encode()).hexdigest()[:40]

    def put(self, key: str, document: dict) -> bool:
        """Hold `document` under `key` (replacing what was held). True when the file was written."""
        ciphertext = encrypt(json.dumps({"key": key, "document": document}))
        written = False
        try:
            folder = self.folder()
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            try:
                with os.fdopen(handle, "w") as out:
                    out.write(ciphertext)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self._path(key))
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            written = True
        except OSError as exc:
            log.error("could not write a held secret to its folder", extra={"spool": self.name, "error": str(exc)})
        try:
            cache.set(self._cache_key(key), ciphertext, self.cache_seconds)
        except Exception as exc:  # a cache that is down holds nothing; the file is the guarantee
            log.warning("could not copy a held secret to the cache", extra={"spool": self.name, "error": str(exc)})
        return written

    def get(self, key: str) -> dict | None:
        """What is held under `key`, or None."""
        ciphertext = None
        try:
            ciphertext = self._path(key).read_text()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("could not read a held secret", extra={"spool": self.name, "error": str(exc)})
        if ciphertext is None:
            try:
                ciphertext = cache.get(self._cache_key(key))
            except Exception:
                ciphertext = None
        if not ciphertext:
            return None
        entry = _open(ciphertext)
        return None if entry is None or entry.get("key") != key else entry.get("document")

    def remove(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        try:
            cache.delete(self._cache_key(key))
        except Exception:
            pass

    def files(self) -> list[Path]:
        try:
            return sorted(self.folder().glob(f"*{SUFFIX}"))
        except OSError:
            return []

    def entries(self) -> Iterator[tuple[str, dict]]:
        """(key, document) of every held file (the cache's copies are read by key only)."""
        for path in self.files():
            try:
                entry = _open(path.read_text())
            except OSError:
                continue
            if entry is not None and isinstance(entry.get("key"), str) and isinstance(entry.get("document"), dict):
                yield entry["key"], entry["document"]

    def rotate(self, *, dry_run: bool = False) -> tuple[int, list[str]]:
        """Re-encrypt every held file with the first key: (count, names of files no key opens)."""
        done, unreadable = 0, []
        for path in self.files():
            try:
                plaintext = decrypt(path.read_text())
            except (OSError, DecryptionError):
                unreadable.append(f"{self.name} spool file {path.name}")
                continue
            if not dry_run:
                entry = json.loads(plaintext)
                self.put(entry["key"], entry["document"])
            done += 1
        return done, unreadable


def _open(ciphertext: str) -> dict | None:
    try:
        entry = json.loads(decrypt(ciphertext))
    except (DecryptionError, ValueError):
        log.error("a held secret cannot be decrypted with the configured keys")
        return None
    return entry if isinstance(entry, dict) else None


SPOOLS: dict[str, Spool] = {}


def register(spool: Spool) -> Spool:
    SPOOLS[spool.name] = spool
    return spool
