"""REST methods of the ``imopenlines`` scope: ``imopenlines.config.list.get``."""
from __future__ import annotations

from .rest import method


@method("imopenlines.config.list.get", doc="api-reference/imopenlines/openlines/imopenlines-config-list-get.md",
        scopes=("imopenlines",))
def config_list_get(portal, params, grant):
    with portal._standin.lock:
        return [dict(line) for line in portal.open_lines]
