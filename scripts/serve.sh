#!/usr/bin/env bash
# Set up and run mailer for a first look: SQLite, the dev mailbox, demo content,
# web app and worker in one process on http://127.0.0.1:5000 (Ctrl-C stops it).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
exec .venv/bin/python -m mailer serve --demo "$@"
