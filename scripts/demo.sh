#!/bin/sh
# Runs the demo end to end: local demo API -> pipelines/demo.yaml -> data/demo.db, then
# pipelines/demo-notes.yaml (parent/child: items, their notes and tags) -> data/demo-notes.db.
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
echo
echo "Parent/child (pipelines/demo-notes.yaml): the items, each item's notes (one request per item,"
echo "4 items at a time) and each item's tags (a list inside the item: no request):"
etl run pipelines/demo-notes.yaml
python - <<'PY'
import sqlite3
db = sqlite3.connect("data/demo-notes.db")
for table in ("items", "notes", "tags"):
    print(f"   {table}: {db.execute(f'SELECT COUNT(*) FROM {table}').fetchone()[0]} rows")
print("  ", db.execute("SELECT external_id, item_id, text FROM notes ORDER BY rowid LIMIT 1").fetchone())
PY
