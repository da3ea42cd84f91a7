#!/usr/bin/python3
"""csv2json IN.csv OUT.json: reads a CSV file with a header row and writes
its rows as JSON (numbers converted), plus per-column sums; prints a
summary to stdout."""
import csv
import json
import sys


def number(s):
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return s


def main():
    if len(sys.argv) != 3:
        print("usage: csv2json IN.csv OUT.json", file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, newline="") as f:
        rows = [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    columns = list(rows[0].keys()) if rows else []
    sums = {
        c: sum(r[c] for r in rows)
        for c in columns
        if all(isinstance(r[c], (int, float)) for r in rows)
    }
    with open(dst, "w") as f:
        json.dump({"columns": columns, "rows": rows, "sums": sums}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(rows)} rows, columns {', '.join(columns)}")
    for c, s in sums.items():
        print(f"sum {c} = {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
