#!/bin/sh
# Runs the demo end to end: local demo API -> pipelines/demo.yaml -> data/demo.db.
set -eu
export DEMO_PORT="${DEMO_PORT:-8765}"
python -m runner.dev.demo_api --port "$DEMO_PORT" --records "${DEMO_RECORDS:-1000}" >/dev/null &
api=$!
trap 'kill $api 2>/dev/null || true' EXIT INT TERM
# wait until the API answers (at most ~5 s)
i=0
until python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$DEMO_PORT/items/page?per_page=1', timeout=1)" 2>/dev/null; do
  i=$((i + 1)); [ "$i" -lt 50 ] || { echo "demo API did not start on port $DEMO_PORT" >&2; exit 1; }
  sleep 0.1
done
etl run pipelines/demo.yaml
echo
echo "A few rows of data/demo.db (table items):"
python - <<'PY'
import sqlite3
db = sqlite3.connect("data/demo.db")
count = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
for row in db.execute("SELECT external_id, name, email, city, zip, amount FROM items ORDER BY CAST(external_id AS INTEGER) LIMIT 5"):
    print("  ", row)
print(f"   ... {count} rows")
PY
