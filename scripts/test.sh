#!/usr/bin/env bash
# The test command (README, .ci/run): a venv with the project and its test extras, Neovim for
# the editor test (Debian's package when missing and we may install it), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e '.[test]'
if ! command -v nvim >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -qq neovim >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq neovim >/dev/null; }
fi
python -m pytest "$@"
