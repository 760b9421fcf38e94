"""REST methods of the ``imopenlines`` scope: ``imopenlines.config.list.get``."""
from __future__ import annotations

from .rest import method

_LIMIT_DEFAULT, _LIMIT_MAX = 50, 200  # imopenlines-config-list-get.md: PARAMS[limit] default 50, max 200


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@method("imopenlines.config.list.get", doc="api-reference/imopenlines/openlines/imopenlines-config-list-get.md",
        scopes=("imopenlines",))
def config_list_get(portal, params, grant):
    # One page per call, sliced by PARAMS[limit] and PARAMS[offset]; the answer has no next/total.
    selection = params.get("PARAMS") if isinstance(params.get("PARAMS"), dict) else {}
    limit = min(max(_int(selection.get("limit"), _LIMIT_DEFAULT), 1), _LIMIT_MAX)
    offset = max(_int(selection.get("offset"), 0), 0)
    with portal._standin.lock:
        return [dict(line) for line in portal.open_lines[offset:offset + limit]]
