# b24widget: one image for the three process types of README "Production deployment".
#   web      gunicorn -c python:b24widget.gunicorn b24widget.wsgi            (the default command, port 8000)
#   worker   celery -A b24widget worker --concurrency 4 --loglevel INFO
#   beat     celery -A b24widget beat --loglevel INFO --schedule /var/lib/b24widget/beat-schedule
#   release  python manage.py migrate --noinput                             (one-shot, before new code serves)
#
# Build with BuildKit (Docker's default builder, or podman/buildah):
#   docker build --secret id=ca,src=/path/to/ca-bundle.pem -t your-registry/b24widget:0.5.0 .
# The `ca` secret is optional: a PEM bundle pip trusts instead of its own (a TLS-inspecting proxy in front of
# the package index). It is mounted for the pip step only and never stored in a layer.
#
# BASE_IMAGE is any Debian-like image with python3 (3.11), its venv module and useradd: the official
# python:3.11-slim (python3 in /usr/local/bin) or Debian bookworm with python3-venv (python3 in /usr/bin).
# Both stages use it: the venv copied from the builder links to that interpreter.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Plain `pip install -r`: it installs a pinned list and a lock with --hash lines alike (pip then checks
# every hash).
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title=b24widget \
      org.opencontainers.image.description="Bitrix24 Contact Center widget and Open Lines connector: web, worker, beat" \
      org.opencontainers.image.licenses=MIT
# CELERY_BROKER_DIR: a folder the app user may write (the embedded broker, if ever used, and beat's default
# schedule file); production sets CELERY_BROKER_URL to RabbitMQ or Redis.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=b24widget.settings \
    CELERY_BROKER_DIR=/var/lib/b24widget/celery \
    B24_TOKEN_SPOOL_DIR=/var/lib/b24widget/held-tokens
# B24_TOKEN_SPOOL_DIR: rotated tokens held (encrypted) while the database is away; mount one volume there for
# every web, worker and beat container (compose.yaml does), or rely on Redis as the cache.
RUN groupadd --gid 10001 b24widget \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/b24widget --no-create-home \
       --shell /usr/sbin/nologin b24widget \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/b24widget \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/b24widget/held-tokens
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY . .
# Static files are collected into the image (WhiteNoise serves them from the web process). With DEBUG off,
# settings.py only records missing required values (the system checks report them, and collectstatic runs
# none of those), so no real secret is needed: harmless build-only values, set for this step only.
# CELERY_BROKER_URL=memory:// keeps settings.py from creating the embedded broker's folders in the image.
RUN DEBUG=false SECRET_KEY=collectstatic-build-only B24_CLIENT_ID=build.only B24_CLIENT_SECRET=build-only \
    B24_APP_URL=https://build.invalid ALLOWED_HOSTS=build.invalid CELERY_BROKER_URL=memory:// \
    TOKEN_ENCRYPTION_KEYS=YnVpbGQtb25seS1rZXktbm90LWEtc2VjcmV0LTAwMDA= \
    python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q -j 0 /app
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# Probes /healthz in the web process (with a Host that ALLOWED_HOSTS admits); a worker or beat container has
# no web server and counts as healthy while its process runs.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["python", "/app/deploy/healthcheck.py"]
CMD ["gunicorn", "-c", "python:b24widget.gunicorn", "b24widget.wsgi"]
