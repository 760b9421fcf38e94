"""Widget opens as Bitrix24 sends them, and what a test reads back from the answer."""

import html
import re
from urllib.parse import urlencode

from sandbox.standin import frame_query_and_body

SHAPES = ("documented", "real")


def open_widget(client, fields, *, shape="documented", path="/placement/"):
    """POST a placement open: every field in the body (the docs' form), or DOMAIN, PROTOCOL, LANG and
    APP_SID in the URL query and the rest in the body (what a real portal sends)."""
    if shape == "real":
        query, body = frame_query_and_body(fields)
        separator = "&" if "?" in path else "?"
        return client.post(f"{path}{separator}{urlencode(query)}", body)
    assert shape == "documented", shape
    return client.post(path, fields)


def with_fields(fields: dict, **changes) -> dict:
    """`fields` with `changes` made: a value replaces the field, None leaves the field out."""
    out = dict(fields)
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def text(response) -> str:
    """The response body with entities decoded (translations carry apostrophes and dashes)."""
    return html.unescape(response.content.decode())


def widget_token_of(response) -> str:
    # A form's hidden field (SETTING_CONNECTOR) or the Contact Center overview's data attribute.
    match = re.search(r'(?:name="widget_token" value|data-token)="([^"]+)"', response.content.decode())
    assert match, "the widget page carries no widget_token"
    return match.group(1)


def is_widget(response) -> bool:
    return response.status_code == 200 and 'id="openlines-overview"' in response.content.decode()


def portal_calls(b24) -> int:
    """Every REST request that reached the stand-in portal, at any of its addresses."""
    return len(b24.requests)
