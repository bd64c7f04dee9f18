"""Typed hand-offs between batch steps: what one job tells the next, validated on both sides.

The clean job stores its `CleanReport` (the data-quality summary and the Kafka cut-off
of the snapshot it wrote) in the silver commit's metadata; train reads the cut-off from
there into the model's manifest, and the speed layer replays the events after it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

LATE_AFTER_S = 3600  # an event that reached us more than an hour after it happened counts as late


class CleanReport(BaseModel):
    """Data quality of one clean run, and the Kafka offsets its snapshot covers."""

    bronze_version: int
    silver_version: int = -1
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    pseudonymised_here: int = 0
    late_events: int = 0
    bot_users: int = 0
    kafka_offsets: dict[int, int] = Field(
        default_factory=dict, description="Next `events` offset per partition not in the snapshot: the cut-off."
    )

    @classmethod
    def from_commit(cls, metadata: Mapping[str, object]) -> CleanReport:
        """The report a clean run stored with its silver commit; an empty cut-off if none was stored (backfills)."""
        raw = metadata.get("report")
        if raw is None:
            return cls(bronze_version=-1)
        return cls.model_validate_json(raw) if isinstance(raw, str | bytes) else cls.model_validate(raw)

    def summary(self) -> str:
        lines = [
            f"data quality, bronze v{self.bronze_version} -> silver v{self.silver_version}",
            f"  rows in           {self.rows_in:>12,}",
            *(f"  dropped {reason:<10}{n:>12,}" for reason, n in self.dropped.items()),
            f"  rows out          {self.rows_out:>12,}",
            f"  late events kept  {self.late_events:>12,}  (arrived > {LATE_AFTER_S}s after their event time)",
            f"  bot users dropped {self.bot_users:>12,}",
            f"  ids pseudonymised {self.pseudonymised_here:>12,}  (arrived raw; producers should do it)",
        ]
        return "\n".join(lines)
