#!/usr/bin/env bash
# Builds the sdist and the wheel from it as PyPA's `python -m build` does, installs the wheel with its
# dependencies into a fresh venv, and runs it from outside the checkout: the sdist and the installed
# package must carry the checkout's git revision, `larpix-dqm demo` must serve it in build_info and
# remove its directory on SIGINT, and `larpix-dqm mixin` must write the site files.
# Usage: bash scripts/check_wheel.sh (needs the `build` package, in the [test] extra)
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
revision=$(git describe --always --dirty --abbrev=12) || { echo "wheel: not a git checkout, no revision to check"; exit 1; }
work=$(mktemp -d)
demo=
trap 'if [ -n "$demo" ]; then kill "$demo" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
# from elsewhere: a ./build folder (setuptools' build directory) would hide the build package
(cd "$work" && python3 -m build -q --outdir "$work/dist" "$checkout" >"$work/build.log" 2>&1) \
  || { echo "wheel: python -m build failed"; cat "$work/build.log"; exit 1; }
recorded=$(tar -xzOf "$work"/dist/*.tar.gz --wildcards '*/larpix_dqm/exporter/REVISION' 2>/dev/null || true)
[ "$recorded" = "$revision" ] || { echo "wheel: the sdist records revision '$recorded', not '$revision'"; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$work"/dist/*.whl
mkdir "$work/tmp" "$work/run"
cd "$work/run"  # nothing of the checkout on the path
installed=$("$work/venv/bin/python" -c 'from larpix_dqm.exporter.build import revision; print(revision())')
[ "$installed" = "$revision" ] || { echo "wheel: installed revision '$installed', not '$revision'"; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TMPDIR="$work/tmp" "$work/venv/bin/larpix-dqm" demo --port "$port" --seconds 60 >"$work/demo.log" 2>&1 &
demo=$!
get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
for _ in $(seq 120); do
  get "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
metrics=$(get "http://127.0.0.1:$port/metrics" 2>/dev/null || true)
grep -qF "revision=\"$revision\"" <<<"$(grep '^larpix_exporter_build_info{' <<<"$metrics")" \
  || { echo "wheel: demo serves no build_info with revision $revision"; cat "$work/demo.log"; exit 1; }
kill -INT "$demo"
wait "$demo" || { echo "wheel: demo exited with $?"; cat "$work/demo.log"; exit 1; }
demo=
if [ -n "$(ls -A "$work/tmp")" ]; then echo "wheel: demo left $(ls "$work/tmp")"; exit 1; fi
"$work/venv/bin/larpix-dqm" mixin -o "$work/mixin" --runbook-url https://example.org/RUNBOOK.md
grep -q 'https://example.org/RUNBOOK.md#larpixdatastale' "$work/mixin/alerts/larpix.rules.yml"
test -f "$work/mixin/dashboards/json/larpix-overview.json" -a -f "$work/mixin/RUNBOOK.md"
echo "wheel: built from the sdist with revision $revision, installed in a fresh venv, demo served and cleaned up, mixin written"
