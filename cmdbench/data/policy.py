"""What a run does with bad input: ``strict`` stops at the first bad file, ``skip`` records and goes on.

A :class:`DataReport` collects every skipped file with its reason and the final counts, so the number
of clips that entered a statistic, and why others did not, goes into the run's records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Policy = Literal["strict", "skip"]
POLICIES: tuple[str, ...] = ("strict", "skip")


class DatasetError(ValueError):
    """Bad dataset input under the ``strict`` policy, or a dataset that cannot be used at all."""


def check_policy(policy: str) -> Policy:
    if policy not in POLICIES:
        raise ValueError(f"bad-input policy {policy!r} is not allowed; use one of {POLICIES}")
    return policy  # type: ignore[return-value]


@dataclass(frozen=True)
class SkippedItem:
    """One input left out of a run. ``stage``: ``"index"`` (listing/captions), ``"probe"`` (opening),
    or ``"decode"`` (reading the clip's frames)."""

    source: str
    reason: str
    stage: str


@dataclass
class DataReport:
    """Counts and skipped inputs of one dataset pass (JSON-able via :meth:`to_dict`).

    listed: sources named by the index (split file, CSV or directory listing);
    usable: sources that passed the index and probe checks;
    clips_planned: clips the plan asked for; clips_delivered: clips actually decoded and returned;
    clips_per_video_max: the most clips drawn from one video (> 1 means videos are reused, on purpose).
    """

    dataset: str
    policy: str
    listed: int = 0
    usable: int = 0
    clips_planned: int = 0
    clips_delivered: int = 0
    clips_per_video_max: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)

    def skip(self, source: object, reason: str, stage: str) -> None:
        self.skipped.append(SkippedItem(str(source), reason, stage))

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_skipped"] = self.num_skipped
        return d

    def summary(self) -> str:
        """One line for logs and the ``notes`` column."""
        return (
            f"{self.dataset}: listed={self.listed} usable={self.usable} clips_planned={self.clips_planned} "
            f"clips_delivered={self.clips_delivered} skipped={self.num_skipped} policy={self.policy}"
        )


def handle_bad(report: DataReport, source: object, reason: str, stage: str) -> None:
    """Under ``strict`` raise :class:`DatasetError`; under ``skip`` record the item in ``report``."""
    if report.policy == "strict":
        raise DatasetError(
            f"{report.dataset}: bad input {source}: {reason} (policy 'strict'; the 'skip' policy records and "
            "skips bad files instead: --on-bad-input skip in reproduce, --policy skip in ref-stats)"
        )
    report.skip(source, reason, stage)
