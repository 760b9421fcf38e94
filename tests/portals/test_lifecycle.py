"""The portal state machine (portals/lifecycle.py) as one table: state x transition -> new state and history.

Each row starts from a Portal row made here (tests/helpers.py make_portal), runs one function of
portals/lifecycle.py with a grant built by hand, and checks the stored status and the PortalEvent kinds
written, in order; or that the transition was refused (TransitionError: nothing written, nothing changed).
A no-op is a row whose state stays and whose list of events is empty. No HTTP: this is the state
machine's own contract; the paths that lead to each transition have their tests beside this one.

The last tests hold docs/architecture.md's state diagram against this table.
"""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from portals import lifecycle
from portals.models import Portal, PortalEvent
from tests.helpers import PORTAL_STATES, kinds, make_portal, token_grant

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
REFUSED = "TransitionError"
MOVED = "b.bitrix24.com"

# transition name -> what it does to the portal row (a grant for the row's own member_id, built by hand)
TRANSITIONS = {
    "install": lambda p: lifecycle.install(token_grant(p)),
    "install+token": lambda p: lifecycle.install(token_grant(p), application_token="app-token-new"),
    "activate": lambda p: lifecycle.activate(p, via="widget_open"),
    "recover": lambda p: lifecycle.recover(p, token_grant(p), via="administrator_open"),
    "apply_grant": lambda p: lifecycle.apply_grant(p, token_grant(p), reason="refresh"),
    "block": lambda p: lifecycle.block(p, reason="invalid_grant", description="refresh token revoked"),
    "record_refresh_failure": lambda p: lifecycle.record_refresh_failure(
        p, SimpleNamespace(code="unreachable", description="OAuth server: no answer")
    ),
    "uninstall": lambda p: lifecycle.uninstall(p, clean=False),
    "uninstall+clean": lambda p: lifecycle.uninstall(p, clean=True),
    "record_update": lambda p: lifecycle.record_update(p, version="2"),
    "accept_application_token": lambda p: lifecycle.accept_application_token(p, "app-token-new", via="ONAPPINSTALL"),
    "adopt_application_token": lambda p: lifecycle.adopt_application_token(
        p, "app-token-new", via="administrator_open"
    ),
    "follow_move": lambda p: lifecycle.follow_move(
        p, client_endpoint=f"https://{MOVED}/rest/", domain=MOVED, via="oauth_app_info"
    ),
    "record_bindings": lambda p: lifecycle.record_bindings(p, placements=["CONTACT_CENTER"], events=["ONAPPINSTALL"]),
    "record_binding_failure": lambda p: lifecycle.record_binding_failure(p, "ACCESS_DENIED", "placements"),
}

# States (tests/helpers.py): "new" has nothing bound yet; "(bound)" and "active" have their placements and events
# bound and the application_token known; "blocked" was active, "blocked (never bound)" was blocked while new.
NB = "blocked (never bound)"
TABLE = [
    # state          transition                   -> new state     PortalEvent kinds written, in order
    ("absent", "install", "new", ["installed"]),
    ("absent", "install+token", "new", ["installed", "application_token_saved"]),
    ("new", "install", "new", ["reinstalled"]),
    ("new (bound)", "install", "new", ["reinstalled"]),
    ("active", "install", "active", ["reinstalled"]),
    ("blocked", "install", "new", ["reinstalled"]),
    (NB, "install", "new", ["reinstalled"]),
    ("uninstalled", "install", "new", ["reinstalled"]),
    ("new", "install+token", "new", ["reinstalled", "application_token_saved"]),
    ("new (bound)", "install+token", "new", ["reinstalled", "application_token_saved"]),
    ("active", "install+token", "active", ["reinstalled", "application_token_saved"]),
    ("blocked", "install+token", "new", ["reinstalled", "application_token_saved"]),
    (NB, "install+token", "new", ["reinstalled", "application_token_saved"]),
    ("uninstalled", "install+token", "new", ["reinstalled", "application_token_saved"]),
    ("new", "activate", "new", []),  # nothing bound yet: no-op
    ("new (bound)", "activate", "active", ["activated"]),
    ("active", "activate", "active", []),
    ("blocked", "activate", "blocked", []),
    (NB, "activate", "blocked", []),
    ("uninstalled", "activate", "uninstalled", []),  # a no-op, not a refusal
    ("new", "recover", "new", ["recovered"]),
    ("new (bound)", "recover", "new", ["recovered"]),
    ("active", "recover", "active", ["recovered"]),
    ("blocked", "recover", "active", ["recovered"]),
    (NB, "recover", "new", ["recovered"]),
    ("uninstalled", "recover", REFUSED, []),
    ("new", "apply_grant", "new", ["token_refreshed"]),
    ("new (bound)", "apply_grant", "new", ["token_refreshed"]),
    ("active", "apply_grant", "active", ["token_refreshed"]),
    ("blocked", "apply_grant", "active", ["token_refreshed", "unblocked"]),
    (NB, "apply_grant", "new", ["token_refreshed", "unblocked"]),
    ("uninstalled", "apply_grant", "uninstalled", []),  # the uninstall wins: grant dropped
    ("new", "block", "blocked", ["refresh_failed", "blocked"]),
    ("new (bound)", "block", "blocked", ["refresh_failed", "blocked"]),
    ("active", "block", "blocked", ["refresh_failed", "blocked"]),
    ("blocked", "block", "blocked", ["refresh_failed", "blocked"]),
    (NB, "block", "blocked", ["refresh_failed", "blocked"]),
    ("uninstalled", "block", "uninstalled", []),
    ("new", "record_refresh_failure", "new", ["refresh_failed"]),
    ("new (bound)", "record_refresh_failure", "new", ["refresh_failed"]),
    ("active", "record_refresh_failure", "active", ["refresh_failed"]),
    ("blocked", "record_refresh_failure", "blocked", ["refresh_failed"]),
    (NB, "record_refresh_failure", "blocked", ["refresh_failed"]),
    ("uninstalled", "record_refresh_failure", "uninstalled", ["refresh_failed"]),  # no state check
    ("new", "uninstall", "uninstalled", ["uninstalled"]),
    ("new (bound)", "uninstall", "uninstalled", ["uninstalled"]),
    ("active", "uninstall", "uninstalled", ["uninstalled"]),
    ("blocked", "uninstall", "uninstalled", ["uninstalled"]),
    (NB, "uninstall", "uninstalled", ["uninstalled"]),
    ("uninstalled", "uninstall", REFUSED, []),
    ("new", "uninstall+clean", "uninstalled", ["uninstalled", "data_cleaned"]),
    ("new (bound)", "uninstall+clean", "uninstalled", ["uninstalled", "data_cleaned"]),
    ("active", "uninstall+clean", "uninstalled", ["uninstalled", "data_cleaned"]),
    ("blocked", "uninstall+clean", "uninstalled", ["uninstalled", "data_cleaned"]),
    (NB, "uninstall+clean", "uninstalled", ["uninstalled", "data_cleaned"]),
    ("uninstalled", "uninstall+clean", REFUSED, []),
    ("new", "record_update", "new", ["updated"]),
    ("new (bound)", "record_update", "new", ["updated"]),
    ("active", "record_update", "active", ["updated"]),
    ("blocked", "record_update", "blocked", ["updated"]),
    (NB, "record_update", "blocked", ["updated"]),
    ("uninstalled", "record_update", REFUSED, []),
    ("new", "accept_application_token", "new", ["application_token_saved"]),
    ("new (bound)", "accept_application_token", "active", ["application_token_saved", "activated"]),
    ("active", "accept_application_token", "active", ["application_token_saved"]),
    ("blocked", "accept_application_token", "blocked", ["application_token_saved"]),
    (NB, "accept_application_token", "blocked", ["application_token_saved"]),
    ("uninstalled", "accept_application_token", REFUSED, []),
    ("new", "adopt_application_token", "new", ["application_token_saved"]),
    ("new (bound)", "adopt_application_token", "new", ["application_token_saved"]),
    ("active", "adopt_application_token", "active", ["application_token_saved"]),
    ("blocked", "adopt_application_token", "blocked", ["application_token_saved"]),
    (NB, "adopt_application_token", "blocked", ["application_token_saved"]),
    ("uninstalled", "adopt_application_token", REFUSED, []),
    ("new", "follow_move", "new", ["domain_changed"]),
    ("new (bound)", "follow_move", "new", ["domain_changed"]),
    ("active", "follow_move", "active", ["domain_changed"]),
    ("blocked", "follow_move", "blocked", ["domain_changed"]),
    (NB, "follow_move", "blocked", ["domain_changed"]),
    ("uninstalled", "follow_move", "uninstalled", ["domain_changed"]),  # no state check
    ("new", "record_bindings", "new", ["placement_bound", "events_bound"]),
    ("new (bound)", "record_bindings", "new", ["placement_bound", "events_bound"]),
    ("active", "record_bindings", "active", ["placement_bound", "events_bound"]),
    ("blocked", "record_bindings", "blocked", ["placement_bound", "events_bound"]),
    (NB, "record_bindings", "blocked", ["placement_bound", "events_bound"]),
    ("uninstalled", "record_bindings", "uninstalled", ["placement_bound", "events_bound"]),  # no check
    ("new", "record_binding_failure", "new", ["install_failed"]),
    ("new (bound)", "record_binding_failure", "new", ["install_failed"]),
    ("active", "record_binding_failure", "active", ["install_failed"]),
    ("blocked", "record_binding_failure", "blocked", ["install_failed"]),
    (NB, "record_binding_failure", "blocked", ["install_failed"]),
    ("uninstalled", "record_binding_failure", "uninstalled", ["install_failed"]),
]


def _row_id(row) -> str:
    state, transition, expected, _events = row
    return f"{state} -{transition}-> {expected}"


@pytest.mark.parametrize("state,transition,expected,events", TABLE, ids=[_row_id(row) for row in TABLE])
def test_state_machine(state, transition, expected, events):
    if state == "absent":
        portal = Portal(member_id="m1", domain="a.bitrix24.com", client_endpoint="https://a.bitrix24.com/rest/")
    else:
        portal = make_portal(state)
    before = Portal.objects.filter(member_id="m1").values().first()
    if expected == REFUSED:
        with pytest.raises(lifecycle.TransitionError):
            TRANSITIONS[transition](portal)
        assert Portal.objects.filter(member_id="m1").values().first() == before  # nothing changed
    else:
        TRANSITIONS[transition](portal)
        assert Portal.objects.get(member_id="m1").status == expected
    assert kinds(Portal.objects.get(member_id="m1")) == events


def test_the_table_has_a_row_for_every_state_and_transition():
    rows = {(state, transition) for state, transition, _expected, _events in TABLE}
    assert len(rows) == len(TABLE), "a (state, transition) pair has two rows"
    assert rows >= {(state, transition) for state in PORTAL_STATES for transition in TRANSITIONS}
    public = {
        name
        for name in vars(lifecycle)
        if not name.startswith("_")
        and callable(getattr(lifecycle, name))
        and getattr(getattr(lifecycle, name), "__module__", "") == lifecycle.__name__
    }
    # Not transitions: the history writer, bookkeeping that never changes the state nor writes a state's event,
    # and the exception; everything else that lifecycle.py offers has its column in the table.
    bookkeeping = {"record", "count_rejection", "touch", "set_app_info", "set_offline_events", "TransitionError"}
    assert public - bookkeeping == {name.split("+")[0] for name in TRANSITIONS}


# --- what the table does not show -----------------------------------------------------------------------


def test_a_grant_replaces_the_tokens_and_a_refusal_keeps_them():
    for state, transition in (("active", "install"), ("blocked", "recover"), ("blocked", "apply_grant")):
        portal = make_portal(state, member_id=f"m-{transition}")
        TRANSITIONS[transition](portal)
        stored = Portal.objects.get(pk=portal.pk)
        assert (stored.access_token, stored.refresh_token, stored.last_error) == (
            "granted-access",
            "granted-refresh",
            "",
        )
    gone = make_portal("uninstalled", member_id="m-gone")
    lifecycle.apply_grant(gone, token_grant(gone), reason="refresh")
    stored = Portal.objects.get(pk=gone.pk)
    assert (stored.access_token, stored.refresh_token) == ("", "")


def test_reinstalling_a_blocked_or_uninstalled_portal_starts_its_install_again():
    """Its bindings and application_token are not trusted any more: bind and ONAPPINSTALL complete it again."""
    for state in ("blocked", "uninstalled"):
        portal = make_portal(state, member_id=f"m-{state}")
        lifecycle.install(token_grant(portal))
        stored = Portal.objects.get(pk=portal.pk)
        assert (stored.status, stored.bound_at, stored.application_token, stored.uninstalled_at) == (
            "new",
            None,
            "",
            None,
        )
    active = make_portal("active", member_id="m-active")
    lifecycle.install(token_grant(active))
    stored = Portal.objects.get(pk=active.pk)
    assert stored.bound_at is not None and stored.application_token == "app-token-m-active"


def test_uninstall_wipes_the_secrets_and_keeps_the_row_and_its_history():
    portal = make_portal("active")
    lifecycle.record_update(portal, version="3")
    lifecycle.uninstall(portal, clean=False)
    stored = Portal.objects.get(pk=portal.pk)
    assert (stored.access_token, stored.refresh_token, stored.application_token, stored.access_expires_at) == (
        "",
        "",
        "",
        None,
    )
    assert stored.application_token_digest == "" and stored.uninstalled_at is not None
    assert kinds(portal) == ["updated", "uninstalled"]
    assert PortalEvent.objects.get(kind="uninstalled").detail == {"previous_status": "active", "clean": False}


def test_block_keeps_the_reason_and_the_history_says_why():
    portal = make_portal("active")
    lifecycle.block(portal, reason="PAYMENT_REQUIRED", description="pay")
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.last_error == "PAYMENT_REQUIRED: pay"
    assert PortalEvent.objects.get(kind="blocked").detail == {"reason": "PAYMENT_REQUIRED"}


def test_recover_and_reinstall_say_where_the_portal_came_from():
    blocked = make_portal("blocked", member_id="m-b")
    lifecycle.recover(blocked, token_grant(blocked, user_id="7"), via="administrator_open")
    assert PortalEvent.objects.get(kind="recovered").detail == {
        "via": "administrator_open",
        "previous_status": "blocked",
        "user_id": "7",
    }
    gone = make_portal("uninstalled", member_id="m-u")
    lifecycle.install(token_grant(gone, user_id="9"))
    assert PortalEvent.objects.get(kind="reinstalled").detail == {
        "domain": "a.bitrix24.com",
        "user_id": "9",
        "previous_status": "uninstalled",
    }


def test_a_grant_that_names_another_address_or_licence_is_recorded():
    portal = make_portal("active", app_status="F")
    lifecycle.apply_grant(
        portal,
        token_grant(portal, client_endpoint=f"https://{MOVED}/rest/", domain=MOVED, status="P"),
        reason="refresh",
    )
    stored = Portal.objects.get(pk=portal.pk)
    assert (stored.domain, stored.client_endpoint, stored.app_status) == (MOVED, f"https://{MOVED}/rest/", "P")
    assert kinds(portal) == ["app_status_changed", "domain_changed", "token_refreshed"]


# --- docs/architecture.md's diagram against the table ---------------------------------------------------


def _drawn_edges() -> dict[tuple[str, str], str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    diagram = re.search(r"```mermaid\n(stateDiagram-v2.*?)```", text, flags=re.S).group(1)
    edges = {}
    for line in diagram.splitlines()[1:]:
        match = re.match(r"\s*(\[\*\]|\w+)\s*-->\s*(\w+)\s*:\s*(.*)$", line)
        assert match, f"a diagram line this test cannot read: {line!r}"
        source = "absent" if match.group(1) == "[*]" else match.group(1)
        edges[(source, match.group(2))] = match.group(3)
    return edges


def _code_edges() -> dict[tuple[str, str], set[str]]:
    """(status before, status after) -> the transitions that make that change, for every changing row."""
    edges: dict[tuple[str, str], set[str]] = {}
    for state, transition, expected, _events in TABLE:
        source = state.split(" ")[0]  # "blocked (never bound)" is blocked
        if expected not in (REFUSED, source):
            edges.setdefault((source, expected), set()).add(transition.split("+")[0])
    return edges


def test_every_edge_of_the_diagram_is_a_transition_of_the_code():
    assert set(_drawn_edges()) - set(_code_edges()) == set()


def test_every_transition_of_the_code_is_drawn():
    assert set(_code_edges()) - set(_drawn_edges()) == set()
