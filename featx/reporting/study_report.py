"""`featx.study`: the study run (studies.study), then its answer as the CLI prints it and the report it
writes: a `StudyReport` is the study's `StudyResult` with its tables, its report files and, in a notebook,
the learning curves and the verdict (`_repr_html_`)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

from ..studies.result import StudyResult
from ..studies.study import run_study
from ..studies.tracked import track_study
from .comparison import format_table
from .study_figures import document_parts, full_size_records, study_lines, write_study_outputs


@dataclass
class StudyReport(StudyResult):
    @cached_property
    def full_size(self) -> list[dict]:
        """The largest size's first repeat as featx compare ranks it."""
        return full_size_records(self.records, self.split, n_boot=self.n_boot) if self.records else []

    def table_lines(self) -> list[str]:
        """Every size of every method gathered: the table alone (a partial --gather has no verdict)."""
        return list(study_lines(self.records))

    def lines(self, *, wide: bool = False) -> list[str]:
        """What `featx study` prints once every unit is done: every size, the full-size table, the verdict."""
        out = list(study_lines(self.records))
        if self.full_size:
            out += ["", "At the largest size, as featx compare shows it:", format_table(self.full_size, wide=wide)]
        return out + [""] + [textwrap.fill(line, 100, subsequent_indent="  ") for line in self.verdict]

    def write_report(self, out=None) -> dict[str, Path]:
        """learning_curves.png, report.html, report.md and comparison.csv in `out` (the study's folder)."""
        return write_study_outputs(self.records, self.full_size, Path(out or self.out), split=self.split,
                                   verdict=self.verdict, title="featx study", transfer=self.transfer)

    def _repr_html_(self) -> str:
        from .document import html_body

        if not self.complete:
            return "<p>featx study: not gathered (a dry run, or one unit of a job array)</p>"
        return html_body(*document_parts(self.records, self.full_size, split=self.split, verdict=self.verdict,
                                             title="featx study", transfer=self.transfer))


def study(data=None, *, out="featx-study", report: bool = True, **options) -> StudyReport:
    """Run a study (studies.study.run_study: frozen backbones x heads, and fine-tunes, at every label budget)
    and return its answer; once every unit is done, the report is written into `out` beside study.csv
    (`report=False`: not). `options`: run_study's (spec, cache_dir, dry_run, unit, budget_seconds, workers,
    progress, log) and StudySpec's fields."""
    ran = run_study(data, out=out, **options)
    result = StudyReport(**{f.name: getattr(ran, f.name) for f in fields(ran)})
    if result.complete and report:
        written = result.write_report()
        track_study(result, written.values())  # where asked: the study as a whole, beside its units' runs
    return result
