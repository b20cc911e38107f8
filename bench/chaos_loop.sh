#!/usr/bin/env bash
# Run the chaos test N times in a row (default 20) and print its figures per run: kills, calls paid again
# (endpoint requests minus the calls of the stored items), seconds. Stops at the first failure.
# Usage: bash bench/chaos_loop.sh [N]   (needs Redis on 127.0.0.1:6379; uses database 12)
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
for i in $(seq 1 "$n"); do
  out=$(SKILLMIX_TEST_REDIS_URL=redis://127.0.0.1:6379/12 python -m pytest -q -s -p no:cacheprovider \
        "tests/test_job_integrity.py::test_chaos_killed_workers_lose_nothing_and_cost_is_exact" 2>&1)
  rc=$?
  echo "run $i: $(grep -o 'chaos seed=.*' <<<"$out") rc=$rc"
  if [ "$rc" -ne 0 ]; then echo "$out" | tail -40; exit 1; fi
done
echo "$n of $n runs passed"
