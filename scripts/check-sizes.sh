#!/usr/bin/env bash
# Fails when a file in src/ is over 600 lines before its #[cfg(test)]
# module: a file that long holds more than one concept and should be split
# (docs/architecture.md, "Size rules"). Function length is clippy's
# too_many_lines (clippy.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=600
bad=0
while IFS= read -r -d '' f; do
  n=$(awk '/^#\[cfg\(test\)\]/ { print NR - 1; found = 1; exit } END { if (!found) print NR }' "$f")
  if [ "$n" -gt "$limit" ]; then
    echo "$f: $n lines before its tests (limit $limit): split it by concept" >&2
    bad=1
  fi
done < <(find src -name '*.rs' -print0)
exit "$bad"
