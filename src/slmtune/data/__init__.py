"""Data: read and check files (formats), encode with loss masks (tokenize), report (validate)."""

from slmtune.data.formats import DataError, Example, Problem
from slmtune.data.sources import read_jsonl, read_source
from slmtune.data.validate import Report, check_file

__all__ = ["DataError", "Example", "Problem", "Report", "check_file", "read_jsonl", "read_source"]
