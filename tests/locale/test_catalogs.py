"""The .po catalogs are the source of the translations: every user-facing string has its ru and de
translation, and the committed .mo files are compiled from the .po files as they are now.

Strings are extracted with Babel from the code and templates a portal user sees (Django templates
through Django's own `templatize`, as `makemessages` does), so a string added without a translation
fails here. After changing strings: README, Translations.
"""

import gettext
import io
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract, extract_python
from babel.messages.pofile import read_po
from django.utils.translation.template import templatize

from portals.models import AppStatus

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ["ru", "de"]
# What a portal's users see: every template, the placement pages, the install and error pages. The Django
# admin (portals/admin.py, model field labels) is for the deployment's staff and stays in English.
USER_FACING = ["templates", "placements", "openlines/views.py", "portals/views.py", "portals/frame_post.py"]
KEYWORDS = {
    **DEFAULT_KEYWORDS,
    "gettext_lazy": None,
    "gettext_noop": None,
    "ngettext_lazy": (1, 2),
    "pgettext_lazy": ((1, "c"), 2),
    "npgettext_lazy": ((1, "c"), 2, 3),
}


def _template(fileobj, keywords, comment_tags, options):
    python = templatize(fileobj.read().decode("utf-8"))
    yield from extract_python(io.BytesIO(python.encode("utf-8")), keywords, comment_tags, options)


def _files():
    for target in USER_FACING:
        path = ROOT / target
        yield from (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.suffix in (".py", ".html") and "migrations" not in p.parts)
        )


def user_facing_msgids() -> dict:
    """msgid (a (singular, plural) tuple for plurals) -> the first place it is used."""
    found = {}
    for path in _files():
        method = _template if path.suffix == ".html" else "python"
        with open(path, "rb") as handle:
            for lineno, message, _, _ in extract(method, handle, keywords=KEYWORDS):
                msgid = message if isinstance(message, str) else tuple(message[:2])
                found.setdefault(msgid, f"{path.relative_to(ROOT)}:{lineno}")
    return found


def catalog(lang):
    with open(ROOT / "locale" / lang / "LC_MESSAGES" / "django.po", "rb") as handle:
        return read_po(handle, locale=lang)


def translated(message) -> bool:
    strings = message.string if isinstance(message.string, tuple) else (message.string,)
    return not message.fuzzy and all(s.strip() for s in strings)


def test_the_extraction_sees_code_and_templates():
    msgids = user_facing_msgids()
    assert "App not installed" in msgids  # placements/views.py
    assert "Only portal administrators may connect or disconnect a line." in msgids  # the overview template
    assert "The request carries no widget token." in msgids  # openlines/views.py
    assert ("%(days)s day left", "%(days)s days left") in msgids  # a blocktranslate plural


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_user_facing_string_is_translated(lang):
    messages = {m.id: m for m in catalog(lang) if m.id}
    missing = [
        f"{where}: {msgid!r}"
        for msgid, where in user_facing_msgids().items()
        if msgid not in messages or not translated(messages[msgid])
    ]
    assert not missing, f"no {lang} translation in locale/{lang}/LC_MESSAGES/django.po for:\n" + "\n".join(missing)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_app_status_labels_the_widget_shows_are_translated(lang):
    messages = {m.id: m for m in catalog(lang) if m.id}
    assert all(str(label) in messages and translated(messages[str(label)]) for label in AppStatus.labels)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_committed_mo_is_compiled_from_the_po(lang):
    with open(ROOT / "locale" / lang / "LC_MESSAGES" / "django.mo", "rb") as handle:
        compiled = gettext.GNUTranslations(handle)._catalog
    expected = {}
    for message in catalog(lang):
        if not message.id or not translated(message):
            continue  # msgfmt leaves out fuzzy and empty entries
        if isinstance(message.id, tuple):
            expected.update({(message.id[0], n): s for n, s in enumerate(message.string)})
        else:
            expected[message.id] = message.string
    compiled = {k: v for k, v in compiled.items() if k != ""}  # "" is the header
    assert compiled == expected, (
        "locale/*.mo differs from the .po: run `DEBUG=true .venv/bin/python manage.py "
        "compilemessages --ignore=.venv` (README, Translations) and commit the .mo"
    )
