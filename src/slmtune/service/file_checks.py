"""``GET /v1/slmtune/files/{id}/check``: a stored file checked the way training will read it, for one base model.

The same checks as ``slmtune data validate`` (every problem with its line and field), the token statistics, and a
preview of the first examples as the model will see them: the chat template rendered, cut into runs of tokens
that carry loss and runs that do not, so a person can see what the model is trained on. Plain data function, no
HTTP (the web console and the SDK-less clients call it through the route). With ``scenario``, the file holds that
scenario's records: they are checked as records, then as the chat examples they become (lines are the records').
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from sqlalchemy.orm import Session

from slmtune.data.formats import Reading
from slmtune.data.tokenize import IGNORE_INDEX
from slmtune.data.validate import check_file
from slmtune.models.loading import load_tokenizer
from slmtune.models.registry import resolve
from slmtune.scenarios.pipeline import records_as_examples
from slmtune.service.errors import BadRequest
from slmtune.service.files import get_file
from slmtune.service.jobs import check_model
from slmtune.service.schemas import CheckProblem, FileCheck, PreviewExample, PreviewSegment
from slmtune.service.settings import Settings

MAX_PROBLEMS = 200  # listed in the answer; the total is always given


def check_stored_file(*, session: Session, settings: Settings, project: str, file_id: str, model: str,
                      max_seq_length: int = 1024, preview: int = 3, scenario: str | None = None) -> FileCheck:
    row = get_file(session=session, project=project, file_id=file_id)
    if row.purpose != "fine-tune":
        raise BadRequest(f"File {file_id} has purpose {row.purpose!r}; only fine-tune files can be checked.",
                         param="file_id", code="invalid_file_purpose")
    check_model(settings, model)
    path, filename = row.path, row.filename
    row_path = path
    session.close()  # loading a tokenizer can take seconds: hold no database connection meanwhile
    tokenizer = load_tokenizer(resolve(model))
    with tempfile.TemporaryDirectory(prefix="slmtune-check-") as tmp:
        line_of = None  # example line → record line, for a scenario file
        ignored = Counter()
        if scenario:
            examples_path = Path(tmp) / "examples.jsonl"
            records, record_problems = records_as_examples(path, scenario, examples_path, ignored)
            if record_problems:
                problems = [CheckProblem(line=p.line, field=p.path, message=p.message) for p in record_problems]
                return FileCheck(file_id=file_id, filename=filename, model=model, ok=False,
                                 n_problems=len(problems), problems=problems[:MAX_PROBLEMS], formats={},
                                 stats={"records": len(records)}, preview=[])
            path = examples_path
            line_of = [0] + [r.line for r in records]
        # streamed: the preview's encodings are kept, the rest only counted; at most what a job may train on
        report = check_file(path, tokenizer, max_seq_length=max_seq_length, keep=preview,
                            limit=settings.max_examples + 1)
    at = (lambda n: line_of[n] if 0 < n < len(line_of) else n) if line_of else (lambda n: n)
    problems = [CheckProblem(line=at(p.line), field=p.path, message=p.message) for p in report.problems]
    formats = dict(report.encoded_formats)
    warnings = []
    notes = [Reading(ignored=ignored).ignored_note(filename)] if scenario else report.notes()
    warnings += [n.replace(str(row_path), filename) for n in notes if n]
    if scenario:
        formats = {f"{scenario} records": report.n_examples}
    if not report.complete:
        warnings.append(f"{filename}: checked the first {report.n_examples} examples; a job trains on at most "
                        f"{settings.max_examples}, so the rest was not read.")
    return FileCheck(
        file_id=file_id, filename=filename, model=model, ok=report.ok, n_problems=len(problems),
        problems=problems[:MAX_PROBLEMS], formats=formats, warnings=warnings, stats=report.stats(),
        preview=[_preview(tokenizer, enc, at(enc.line)) for enc in report.encoded[:preview]])


def _preview(tokenizer, enc, line: int) -> PreviewExample:
    """Consecutive tokens with the same loss flag, decoded together."""
    segments: list[PreviewSegment] = []
    start = 0
    for i in range(1, len(enc.input_ids) + 1):
        if i == len(enc.input_ids) or (enc.labels[i] != IGNORE_INDEX) != (enc.labels[start] != IGNORE_INDEX):
            segments.append(PreviewSegment(text=tokenizer.decode(enc.input_ids[start:i]), trained=enc.labels[start]
                                           != IGNORE_INDEX, tokens=i - start))
            start = i
    return PreviewExample(line=line, tokens=enc.n_tokens, trained_tokens=enc.n_trained, segments=segments)
