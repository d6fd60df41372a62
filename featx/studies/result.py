"""A study's answer as one value: its records (one per method, size and repeat, each with its `MethodId`),
the evaluation split they were scored on, the verdict and the gains of its fine-tune recipes, and the
model it kept. `featx.study` returns it (as reporting.study_report.StudyReport, which adds the tables,
the report and a notebook view); nothing in it is a string another module splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .recipes import gain_lines, recipe_gains
from .strategy_gains import labels_saved, strategy_rows
from .site_transfer import transfer_lines
from .verdict import target_verdict, verdict


@dataclass
class StudyResult:
    records: list[dict]              # label_curves.COLUMNS, "method_id", and the evaluation predictions
    split: str | None = None         # the evaluation split every record was scored on
    out: Path | None = None          # the study's folder
    n_boot: int = 1000
    leader: Path | None = None       # the model kept at n=all, when the study has one
    plan: list[str] = field(default_factory=list)  # the plan as said before any work
    shifts: list[dict] = field(default_factory=list)  # train -> target shift per backbone, with a target site
    transfer: list[dict] = field(default_factory=list)  # site-transfer records (studies.site_transfer)
    missing: list[str] = field(default_factory=list)  # units not done, named, after a partial --gather
    spec: object = None              # the StudySpec it answers

    @property
    def complete(self) -> bool:
        """Every unit gathered (not a dry run, nor one --unit of a job array, nor a --gather with units missing)."""
        return bool(self.records) and not self.missing

    @cached_property
    def gains(self) -> list[dict]:
        """What each named fine-tune recipe gains over its backbone's first, per size, with an interval."""
        return recipe_gains(self.records)

    @cached_property
    def verdict(self) -> list[str]:
        """The verdict, one line per size, the labels needed, the recipe gains and the labels each labelling
        strategy saved over random draws, in words."""
        return (verdict(self.records) + gain_lines(self.gains) + labels_saved(strategy_rows(self.records)) +
                target_verdict(self.records, self.shifts, self.split) +
                transfer_lines(self.transfer))
