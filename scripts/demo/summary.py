"""The demo's closing table, from what scripts/demo.sh recorded in its work directory:
results.tsv (one line per step: kind, name, exit status, start and end as Unix seconds,
detail), the application's pgbench logs (one line per transaction: its latency and when it
ended) and the proxy's /api/status at the end.

Usage: python3 summary.py WORK_DIR
"""
import glob
import json
import os
import re
import sys


def app_transactions(work):
    """(start, end, latency in ms) of every transaction in pgbench's logs, in Unix seconds."""
    out = []
    for path in glob.glob(os.path.join(work, "app", "seg*.[0-9]*")):
        with open(path) as f:
            for line in f:
                cols = line.split()
                # client, transaction, latency (us, or "failed"/"skipped"), script, end s, end us
                if len(cols) >= 6 and cols[2].isdigit():
                    end = int(cols[4]) + int(cols[5]) / 1e6
                    latency = int(cols[2]) / 1e6
                    out.append((end - latency, end, latency * 1000.0))
    return out


def app_failures(work):
    failed = 0
    for path in glob.glob(os.path.join(work, "app", "seg*.out")):
        with open(path) as f:
            m = re.search(r"number of failed transactions: (\d+)", f.read())
            if m:
                failed += int(m.group(1))
    return failed


def longest_wait(transactions, t0, t1):
    """The longest transaction that was running at some point of the flip."""
    waits = [ms for (start, end, ms) in transactions if start < t1 and end > t0]
    return max(waits) if waits else None


def main(work):
    transactions = app_transactions(work)
    rows = []
    with open(os.path.join(work, "results.tsv")) as f:
        for line in f:
            kind, name, rc, t0, t1, detail = line.rstrip("\n").split("\t")
            t0, t1 = float(t0), float(t1)
            wait = longest_wait(transactions, t0, t1) if kind == "flip" else None
            rows.append((name, "ok" if rc == "0" else f"FAILED ({rc})", detail,
                         f"{t1 - t0:.1f} s", "–" if wait is None else f"{wait:.0f} ms"))
    head = ("step", "result", "detail", "took", "longest client wait")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()
    total = len(transactions)
    worst = max((ms for (_, _, ms) in transactions), default=0.0)
    print(f"application: {total:,} transactions through the proxy, "
          f"{app_failures(work)} failed, longest wait {worst:.0f} ms")
    try:
        with open(os.path.join(work, "status.json")) as f:
            status = json.load(f)
    except (OSError, ValueError) as e:
        print(f"proxy status unavailable: {e}")
        return
    shadow = (status.get("shadow") or {}).get("totals") or {}
    if shadow:
        print(f"shadow reads: {shadow.get('sampled', 0):,} sampled, {shadow.get('matched', 0):,} matched, "
              f"{shadow.get('transient', 0):,} transient (equal on re-check), "
              f"{shadow.get('confirmed', 0):,} confirmed mismatches")
    mirror = status.get("mirror") or {}
    print(f"dual writes now {mirror.get('direction', '?')}: retry backlog {mirror.get('retry_backlog', 0)}, "
          f"in doubt {mirror.get('in_doubt', 0)}; phase {status.get('phase')}")


if __name__ == "__main__":
    main(sys.argv[1])
