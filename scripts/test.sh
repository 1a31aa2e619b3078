#!/usr/bin/env bash
# Set up and run the whole test suite: on SQLite always, and on PostgreSQL too when
# MAILER_TEST_POSTGRES_URL is set (CI sets it). Extra arguments go to pytest.
set -euo pipefail
REQUIREMENTS=requirements-dev.txt source "$(dirname "$0")/venv.sh"
export PYTHONDONTWRITEBYTECODE=1
status=0
echo "== tests on SQLite"
MAILER_TEST_DATABASE=sqlite .venv/bin/python -m pytest -q "$@" || status=$?
if [ -n "${MAILER_TEST_POSTGRES_URL:-}" ]; then
  echo "== tests on PostgreSQL"
  MAILER_TEST_DATABASE=postgres .venv/bin/python -m pytest -q "$@" || status=$?
else
  echo "== PostgreSQL run skipped: set MAILER_TEST_POSTGRES_URL=postgresql+psycopg://user@host:5432/postgres to include it"
fi
exit $status
