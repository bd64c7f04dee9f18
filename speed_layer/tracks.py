"""Which events go into which model's state: the champion's, and an A/B test's challenger's.

No Kafka here. A model's data covers `events` up to the offsets in its manifest, so each state
takes an event exactly when the event is at or after what that state has already covered: at a
fresh state, its model's offsets; after a micro-batch, the offset after the batch's last record
of each partition. The consumer reads each partition from the earliest offset any state still
needs (`replay_start`), and a state skips what is before its own position (`Track.takes`). So
two models cut off at different offsets each get every event after their own cut-off once,
and a state kept across a seek (the challenger when a new champion arrives, the champion when
the challenger is loaded) is not fed an event twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from speed_layer.state import SpeedState


class Record(Protocol):
    """Where a record of `events` is (a kafka-python ConsumerRecord has these)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass
class Track:
    """One model kept current: its state, the version its UPs are keyed by, and where it is in `events`."""

    state: SpeedState
    # None: the champion's UPs, keyed UP:<kind>:<id> (a newer model's UP replaces an older one's under compaction);
    # a version: the challenger's, keyed by it too, so compaction keeps both models' UPs of a user.
    key_version: str | None = None
    # Partition -> the first offset not yet folded into the state. A partition absent: all of it is new to the model.
    next: dict[int, int] = field(default_factory=dict)

    @classmethod
    def fresh(cls, state: SpeedState, keyed_by_version: bool = False) -> Track:
        """A state straight from its model, at the model's offsets."""
        version = state.model_version if keyed_by_version else None
        return cls(state, version, dict(state.manifest.kafka_offsets))

    def takes(self, partition: int, offset: int) -> bool:
        return offset >= self.next.get(partition, 0)

    def behind(self, firsts: dict[int, int]) -> bool:
        """Whether a batch whose first offset per partition is `firsts` holds records this state already has."""
        return any(first < self.next.get(partition, 0) for partition, first in firsts.items())

    def advance(self, lasts: dict[int, int]) -> None:
        """After a micro-batch whose last offset per partition is `lasts`: everything up to it is in the state."""
        for partition, last in lasts.items():
            if last >= self.next.get(partition, 0):
                self.next[partition] = last + 1


def replay_start(tracks: Iterable[Track], partition: int) -> int | None:
    """Where to read `partition` from so every state gets what it lacks: the earliest of their positions;
    None (the beginning) when some model holds nothing from the partition."""
    starts = [track.next.get(partition) for track in tracks]
    if not starts or any(start is None for start in starts):
        return None
    return min(start for start in starts if start is not None)


def bounds(polled: Mapping[Any, Sequence[Record]]) -> tuple[dict[int, int], dict[int, int]]:
    """The first and the last offset per partition of a poll's records (each partition's in offset order)."""
    firsts = {batch[0].partition: batch[0].offset for batch in polled.values() if batch}
    lasts = {batch[-1].partition: batch[-1].offset for batch in polled.values() if batch}
    return firsts, lasts


def own_part(
    track: Track, firsts: dict[int, int], records: Sequence[Record], read: Sequence[Record]
) -> tuple[list[Record], list[int]] | None:
    """What of a micro-batch goes into `track`'s state: None when all of it (the common case: O(partitions)), else
    its records at or after the track's position and the rows of the valid events' records `read` among them
    (`read` is a subsequence of `records`)."""
    if not track.behind(firsts):
        return None
    takes = track.takes
    mine = [r for r in records if takes(r.partition, r.offset)]
    return mine, [row for row, r in enumerate(read) if takes(r.partition, r.offset)]
