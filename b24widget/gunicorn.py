"""gunicorn settings: `gunicorn -c python:b24widget.gunicorn b24widget.wsgi`. Each value can be overridden
from the environment (GUNICORN_CMD_ARGS, or the variables read below)."""
import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
worker_class = "gthread"  # widget opens wait on Bitrix24 on a cache miss: threads keep workers responsive
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 60))
graceful_timeout = 30
keepalive = 5
# Recycle workers rarely (a guard against slow leaks): each restart imports Django again.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 20000))
max_requests_jitter = 2000
# Import the app once in the master; workers fork with it loaded (faster starts and restarts).
preload_app = True
# Behind a TLS-terminating proxy: trust its X-Forwarded-* headers (restrict with FORWARDED_ALLOW_IPS).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = "-"
# The access log shows method, path and status; never the query string (it may carry a portal's fields).
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"


# Prometheus multiprocess mode (b24widget/metrics.py): each worker writes its counters into
# PROMETHEUS_MULTIPROC_DIR. The folder must start empty (old files would add last run's counts), and a
# worker that exits is marked dead so that its files are merged, not double counted.
def on_starting(server):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.remove(os.path.join(folder, name))


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
