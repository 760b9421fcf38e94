"""Template context every page shown in a Bitrix24 frame needs."""
from django.conf import settings


def bx24(request):
    """Where pages load the BX24 library from (the sandbox points B24_JS_URL at its stand-in)."""
    return {"bx24_js_url": settings.B24_JS_URL}
