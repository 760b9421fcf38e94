"""The project's URLs plus a bare view: the ceiling the widget open is compared with."""
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from b24widget.urls import urlpatterns as project_urlpatterns


@csrf_exempt  # the bench POSTs the widget's body here too, through the same middleware
def bare(request):
    return HttpResponse("ok")


urlpatterns = [path("bench/bare/", bare, name="bench-bare"), *project_urlpatterns]
