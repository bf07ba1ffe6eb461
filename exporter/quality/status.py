"""The two status scales: a channel's status (what its hits say) and a check's status (a verdict).

Both are small integers in the arrays and on ``/metrics``; these enums are the one place their
codes and names are defined, for the exporter, the plots and the alert and dashboard generators.
"""

from __future__ import annotations

from enum import IntEnum


class ChannelStatus(IntEnum):
    """Status of one channel over the judged span; the code is what ``Snapshot.channel_status`` holds."""

    NONE = 0  # not expected (not connected, never seen): no verdict
    ACTIVE = 1
    SILENT = 2
    NOISY = 3
    UNKNOWN = 4  # expected, no hit in the window, silence not yet long enough to prove it dead
    INEFFICIENT = 5  # hits in the window, significantly fewer than expected
    MASKED = 6  # masked by the run's configuration (disabled list, the file's channel_mask): no silent/noisy verdict

    @property
    def label(self) -> str:
        """The name used in metric labels, lists and the API: 'active', 'silent', ..."""
        return self.name.lower()

    @classmethod
    def judged(cls) -> tuple[ChannelStatus, ...]:
        """The statuses counted per chip (``larpix_chip_channels{status}``), in column order."""
        return tuple(s for s in cls if s is not cls.NONE)

    @classmethod
    def from_label(cls, label: str) -> ChannelStatus:
        """The status named ``label``; ValueError listing the valid names otherwise."""
        for status in cls.judged():
            if status.label == label:
                return status
        raise ValueError(f"unknown channel status {label!r}: use {', '.join(s.label for s in cls.judged())}")


class CheckStatus(IntEnum):
    """Verdict of a check, and of its roll-ups; the value of every ``larpix_*_status`` series.

    UNKNOWN (-1): the data cannot decide yet (too few expected hits, nothing in the window). It
    sorts below OK so the worst-of roll-ups stay a ``max``; ``roll_up`` then turns an OK that
    hides an UNKNOWN into UNKNOWN, so "not judged" never reads as "ok".
    """

    UNKNOWN = -1
    OK = 0
    WARNING = 1
    ERROR = 2

    @property
    def label(self) -> str:
        return self.name.lower()
