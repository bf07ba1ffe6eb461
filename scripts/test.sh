#!/usr/bin/env bash
# Installs everything the test suite needs (Debian and Python packages), then runs it.
# Usage: bash scripts/test.sh [pytest arguments]  (one process: bash scripts/test.sh -n 0)
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A debian=( [prometheus]=prometheus [promtool]=prometheus [prometheus-alertmanager]=prometheus-alertmanager
                    [amtool]=prometheus-alertmanager [docker-compose]=docker-compose [chromium]=chromium
                    [victoria-metrics]=victoria-metrics [vmagent]=victoria-metrics [vmalert]=victoria-metrics )
missing=()
for tool in "${!debian[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${debian[$tool]}")
done
if ((${#missing[@]})); then
  packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  echo "installing Debian packages: $packages"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
bash scripts/check_wheel.sh
# one worker per core, at most 4: the tests mostly wait on other programs (-n 0 given after runs them in one)
exec python3 -m pytest --numprocesses auto --maxprocesses 4 "$@"
