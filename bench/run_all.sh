#!/usr/bin/env bash
# Every bench, one after another, with its defaults (each ~1.5-3 minutes). The output is also kept in
# test-artifacts/bench/run_all.txt. Benches run on PostgreSQL (DATABASE_URL, default
# postgres://postgres@127.0.0.1:5432/b24bench: created, migrated and dropped by each bench) and Redis.
# BENCH_WAIT_QUIET=N (default 90): each bench first waits up to N seconds for the machine to be idle.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export BENCH_WAIT_QUIET="${BENCH_WAIT_QUIET:-90}"
mkdir -p test-artifacts/bench
out=test-artifacts/bench/run_all.txt
failed=0
{
  echo "== run_all $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "RAM: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1024/1024}' /proc/meminfo); kernel $(uname -r)"
  echo "Python $($PY -c 'import platform; print(platform.python_version())'), Django $($PY -c 'import django; print(django.get_version())'), gunicorn $($PY -c 'import gunicorn; print(gunicorn.__version__)')"
  echo "PostgreSQL: $(psql -h 127.0.0.1 -U postgres -tAc 'SHOW server_version' 2>/dev/null || echo '?'); Redis: $(redis-cli -h 127.0.0.1 INFO server 2>/dev/null | tr -d '\r' | awk -F: '/redis_version/ {print $2}')"
  if command -v wrk >/dev/null; then
    echo "wrk: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"  # --version exits 1
  else
    echo "wrk: not installed (widget_open uses the Python load generator)"
  fi
  echo "tree: $(git rev-parse --short HEAD) + $(git status --porcelain | wc -l) changed/untracked path(s)"
  for bench in widget_open admin_changelist rest_list refresh_tokens; do
    echo
    started=$(date +%s)
    if ! "$PY" "bench/$bench.py"; then
      echo "!! bench/$bench.py failed"
      failed=1
    fi
    echo "($bench: $(( $(date +%s) - started )) s)"
  done
  exit $failed
} 2>&1 | tee "$out"
exit "${PIPESTATUS[0]}"
