"""Compare two metrics.csv files in every non-timing column (columns ending in _s or naming a time are
skipped); exit 1 on any difference.  Used by benchmarks/behaviour_preserved.sh.

    python benchmarks/compare_metrics.py BEFORE/metrics.csv AFTER/metrics.csv
"""
import csv
import sys


def load(p):
    return list(csv.DictReader(open(p)))
a, b = load(sys.argv[1]), load(sys.argv[2])
timing = lambda k: k.endswith("_s") or "time" in k or "wall" in k or k.endswith("_seconds")
if len(a) != len(b):
    print(f"{sys.argv[2]}: {len(b)} rows vs {len(a)} in {sys.argv[1]}")
    sys.exit(1)
assert list(a[0]) == list(b[0]), set(a[0]) ^ set(b[0])
bad = [(i, k, ra[k], rb[k]) for i, (ra, rb) in enumerate(zip(a, b)) for k in ra if not timing(k) and ra[k] != rb[k]]
cols = [k for k in a[0] if not timing(k)]
print(f"{sys.argv[2]}: {len(a)} rows, {len(cols)} non-timing columns compared, {len(bad)} differences")
for x in bad[:10]: print(" ", x)
sys.exit(1 if bad else 0)
