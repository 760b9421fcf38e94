"""inbox/parsing.py reads a form-encoded event without building Django's QueryDict: the same fields, the same
limits."""

import pytest
from django.core.exceptions import TooManyFieldsSent
from django.test import RequestFactory

from inbox import parsing

BODIES = [
    b"event=ONAPPINSTALL&auth%5Bmember_id%5D=abc&data%5BVERSION%5D=1",
    b"a=1&b=&a=2&c&d=%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82+mir&e=%2B%26",  # repeated, blank, bare, UTF-8, '+'
    b"x=%FF%FE&y=\xff\xfe&z=%zz",  # not UTF-8: replaced, or the whole body read as ISO-8859-1, as Django does
    b"data%5BA%5D%5BB%5D=1&data%5BA%5D=2&;k=v",
    b"&&a=1&&=x&b==c&%5B=1&+a+=+b+&%25=%2525&a%5b=%E2%82%AC",  # empty pairs, an empty name, '=' in a value, ...
    b"",
]


@pytest.mark.parametrize("body", BODIES)
def test_the_form_reads_as_request_post_reads_it(body):
    make = RequestFactory().post
    mine = parsing._form_fields(make("/events/", body, content_type="application/x-www-form-urlencoded"))
    django = list(make("/events/", body, content_type="application/x-www-form-urlencoded").POST.items())
    assert mine == django


def test_the_field_limit_holds(settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 3
    request = RequestFactory().post("/events/", b"a=1&b=2&c=3&d=4", content_type="application/x-www-form-urlencoded")
    with pytest.raises(TooManyFieldsSent):
        parsing._form_fields(request)
