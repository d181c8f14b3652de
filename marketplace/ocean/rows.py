"""RowSource adapter over the marketplace database (`marketplace.research`'s contract).

The marketplace owns the `research_rows` table and its migrations; this adapter only calls its
two public functions, one short transaction each.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker


class MarketplaceRowSource:
    """Pending rows in, published marks out, through `marketplace.research`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions = sessions
        self.clock = clock

    @classmethod
    def from_url(cls, database_url: str) -> MarketplaceRowSource:
        """Connect to an already migrated marketplace database (the marketplace migrates it)."""
        from marketplace.storage import make_engine, make_sessionmaker

        return cls(make_sessionmaker(make_engine(database_url)))

    def pending_rows(self, limit: int) -> list[dict[str, object]]:
        from marketplace import research

        with self.sessions() as session:
            return research.unpublished_rows(session, limit)

    def mark_published(self, row_ids: list[int], ref: str) -> None:
        from marketplace import research

        with self.sessions() as session:
            research.mark_published(session, row_ids, ref=ref, now=self.clock())
