#!/usr/bin/env bash
# The whole journey on the embedded defaults: install, then `thingward demo` (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/thingward demo "$@"
