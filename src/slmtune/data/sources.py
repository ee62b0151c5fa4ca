"""Where training data comes from: a file or folder in any of the layouts people have, read into records that
:mod:`slmtune.data.formats` checks.

* ``.jsonl`` (and any other suffix not below): JSON Lines, read line by line here so that a line that is not JSON
  is reported with its line number and the rest still read.
* ``.json``: a JSON array of records, or JSON Lines.
* ``.parquet``, ``.csv``, ``.tsv``: tables, read with the ``datasets`` library (Arrow); rows are numbered from 1.
* a folder written by ``datasets.Dataset.save_to_disk`` (it holds ``dataset_info.json`` / ``state.json``), or a
  folder of ``.parquet`` / ``.jsonl`` / ``.json`` / ``.csv`` files (read in name order as one table).

Nothing is fetched from a hub: these are local files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from slmtune.data.formats import Example, Problem, Reading, jsonl_lines, jsonl_records

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def describe(path: str | Path) -> str:
    """What kind of source a path is, in words (for `slmtune data validate`)."""
    p = Path(path)
    if p.is_dir():
        return "saved Hugging Face dataset" if _is_saved_dataset(p) else "folder of data files"
    return {".parquet": "Parquet", ".csv": "CSV", ".tsv": "TSV", ".json": "JSON"}.get(p.suffix, "JSONL")


def read_source(path: str | Path, *, columns: dict | None = None, strict: bool = False) -> Reading:
    """Read and check every record of a source; never stops at the first problem."""
    reading, examples = stream_source(path, columns=columns, strict=strict)
    reading.examples = list(examples)
    return reading


def stream_source(path: str | Path, *, columns: dict | None = None,
                  strict: bool = False) -> tuple[Reading, Iterator[Example]]:
    """The examples of a source one at a time, and the :class:`Reading` that gathers its problems, formats and
    ignored keys as they are read (complete once the iterator is). JSONL is read line by line, a line at most
    :data:`~slmtune.data.formats.MAX_LINE_BYTES`: a file of any size is checked in bounded memory."""
    p = Path(path)
    if not p.exists():
        return Reading(problems=[Problem(str(p), 0, "(file)", "no such file")]), iter(())
    if p.is_dir() or p.suffix in (".parquet", ".csv", ".tsv"):
        reading = Reading(unit="row")
        try:
            rows = _table_rows(p)
        except Exception as e:  # noqa: BLE001 - any reason the table cannot be read: name the file and the reason
            return Reading(problems=[Problem(str(p), 0, "(file)", f"cannot read it as a {describe(p)}: "
                                             f"{type(e).__name__}: {e}")]), iter(())
        return reading, reading.parse(rows, str(p), columns=columns, strict=strict)
    if p.suffix == ".json" and _starts_with_bracket(p):
        try:
            items = json.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            line = p.read_bytes()[: e.start].count(b"\n") + 1
            return Reading(problems=[Problem(str(p), line, "(file)", "not valid UTF-8 text")]), iter(())
        except json.JSONDecodeError as e:
            return Reading(problems=[Problem(str(p), e.lineno, "(json)", f"invalid JSON: {e.msg} (column "
                                             f"{e.colno})")]), iter(())
        reading = Reading(unit="record")
        return reading, reading.parse(enumerate(items, start=1), str(p), columns=columns, strict=strict)
    reading = Reading()
    return reading, reading.parse(_jsonl(p), str(p), columns=columns, strict=strict)


def _jsonl(p: Path):
    with open(p, "rb") as fh:
        yield from jsonl_records(jsonl_lines(fh))


def _starts_with_bracket(p: Path) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def read_jsonl(path: str | Path, *, columns: dict | None = None,
               strict: bool = False) -> tuple[list[Example], list[Problem]]:
    """:func:`read_source` as (valid examples, problems) — the name is historical: any source layout is read."""
    r = read_source(path, columns=columns, strict=strict)
    return r.examples, r.problems


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists()


def _table_rows(p: Path):
    """``(row number, dict)`` for every row of a table source."""
    import datasets  # Arrow-backed readers for Parquet/CSV/saved datasets; imported only for such sources

    datasets.disable_progress_bars()
    if p.is_dir() and _is_saved_dataset(p):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"a DatasetDict without a 'train' split (splits: {', '.join(ds)}); point at one "
                                 "split's folder")
            ds = ds["train"]
    else:
        files = sorted(f for f in p.iterdir() if f.suffix in TABLE_SUFFIXES) if p.is_dir() else [p]
        if not files:
            raise ValueError(f"no .parquet, .csv, .tsv, .json or .jsonl files in {p}")
        kinds = {TABLE_SUFFIXES[f.suffix] for f in files}
        if len(kinds) > 1:
            raise ValueError(f"files of several kinds ({', '.join(sorted(kinds))}); one kind a folder")
        kind = kinds.pop()
        extra = {"delimiter": "\t"} if files[0].suffix == ".tsv" else {}
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", **extra)
        if kind == "csv":  # CSV has no types: a column the reader guessed numeric ("5") is still text
            for i, row in enumerate(ds, start=1):
                yield i, {k: v if isinstance(v, str) else str(v) for k, v in row.items() if v is not None}
            return
    for i, row in enumerate(ds, start=1):
        yield i, {k: v for k, v in row.items() if v is not None}
