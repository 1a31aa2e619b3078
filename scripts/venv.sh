# Sourced by serve.sh and test.sh: make .venv and install $REQUIREMENTS into it,
# again only when that file changed. Works on a fresh Debian machine as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQUIREMENTS=${REQUIREMENTS:-requirements.txt}
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv without ensurepip: add it and try again.
    rm -rf .venv
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
      echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
    python3 -m venv .venv
  fi
fi
stamp=".venv/.installed-$(cat "$REQUIREMENTS" requirements.txt | sha256sum | cut -c1-16)-$(basename "$REQUIREMENTS")"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$REQUIREMENTS"
  touch "$stamp"
fi
