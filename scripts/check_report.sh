#!/usr/bin/env bash
# Render an unlearn HTML report in headless Chromium: a screenshot (for a human) and a DOM check
# (for a script). Usage: scripts/check_report.sh runs/demo/report.html [shot.png]
set -euo pipefail
html=$(realpath "$1")
shot=${2:-${html%.html}.png}
chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$chrome" ]; then
  echo "no Chromium found (Debian/Ubuntu: apt-get install chromium)" >&2
  exit 2
fi
"$chrome" --headless --no-sandbox --disable-gpu --window-size=1200,2400 \
  --screenshot="$shot" "file://$html" 2>/dev/null
dom=$("$chrome" --headless --no-sandbox --disable-gpu --dump-dom "file://$html" 2>/dev/null)
points=$(grep -o '<circle' <<<"$dom" | wc -l)
svgs=$(grep -o '<svg' <<<"$dom" | wc -l)
echo "rendered $html: $svgs SVG plot(s), $points point(s) in the scatter; screenshot $shot"
[ "$svgs" -ge 1 ] && [ "$points" -ge 1 ]
# the robustness table (issue #22), when the report has audits: its rows as Chromium parsed them
if grep -q 'Robustness (unlearn audit)' <<<"$dom"; then
  table=$(sed -n 's/.*Robustness (unlearn audit)<\/h2>//p' <<<"$dom" | sed 's/<\/table>.*//')
  rows=$(grep -o '<tr>' <<<"$table" | wc -l)
  cols=$(sed 's/<\/tr>.*//' <<<"$table" | grep -o '<th>' | wc -l)
  echo "robustness table: $((rows - 1)) model row(s), $cols column(s)"
  [ "$rows" -ge 2 ] && [ "$cols" -ge 3 ]
fi
