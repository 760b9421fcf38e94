"""What a portal posts into an app frame: the install page and placements.

Fields follow ``api-reference/widgets/_includes/widget_data.md`` (placements) and
``settings/oauth/simple-way.md`` (the install POST); which of them travel in the handler URL's query is
what real portals do and the official PHP SDK reads (``docs/bitrix24.md``, "Where the fields arrive").
"""

from __future__ import annotations

import json
import secrets

__all__ = ["FRAME_QUERY_FIELDS", "frame_query_and_body", "frame_fields"]

# Fields a portal puts in the handler URL's query; the rest travel in the form body
# (api-reference/widgets/_includes/widget_data.md, settings/oauth/simple-way.md).
FRAME_QUERY_FIELDS = ("DOMAIN", "PROTOCOL", "LANG", "APP_SID")


def frame_query_and_body(fields):
    """Split frame-POST fields the way a real portal sends them: ``(query, body)``."""
    query = {k: v for k, v in fields.items() if k in FRAME_QUERY_FIELDS}
    body = {k: v for k, v in fields.items() if k not in FRAME_QUERY_FIELDS}
    return query, body


def frame_fields(portal, user_id, lang, placement, options, **extra) -> dict:
    """The form fields of an app frame opened by that user (install page or placement)."""
    tokens = portal.issue_tokens(user_id)
    return {
        "DOMAIN": portal.domain,
        "PROTOCOL": "1" if portal._standin.scheme == "https" else "0",
        "LANG": lang,
        "APP_SID": secrets.token_hex(16),
        "AUTH_ID": tokens["access_token"],
        "AUTH_EXPIRES": str(tokens["expires_in"]),
        "REFRESH_ID": tokens["refresh_token"],
        "SERVER_ENDPOINT": portal._standin.server_endpoint,
        **extra,
        "APPLICATION_SCOPE": portal.scope,
        "member_id": portal.member_id,
        "status": portal.app_status,
        "PLACEMENT": placement,
        "PLACEMENT_OPTIONS": json.dumps(options),
    }
