#!/usr/bin/env bash
# Screenshot of a `vqt report` page in headless Chromium (Debian: `apt-get install -y chromium`).
#   docs/report/screenshot.sh RUN_DIR/report.html out.png [WIDTH,HEIGHT]
# The page's inline script sets <body data-images="loaded/total"> once it has loaded; the DOM check below prints it.
set -euo pipefail
page=$(realpath "${1:?usage: $0 REPORT.html OUT.png [WIDTH,HEIGHT]}")
out=$(realpath -m "${2:?usage: $0 REPORT.html OUT.png [WIDTH,HEIGHT]}")
size=${3:-1280,2400}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found (apt-get install -y chromium)" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars --user-data-dir="$profile"
       --run-all-compositor-stages-before-draw --virtual-time-budget=5000)
"$browser" "${flags[@]}" --window-size="$size" --screenshot="$out" "file://$page" 2>/dev/null
"$browser" "${flags[@]}" --dump-dom "file://$page" 2>/dev/null | grep -o 'data-images="[^"]*"' || true
echo "screenshot: $out"
