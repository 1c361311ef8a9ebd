"""Storage plumbing: engines, the unit of work, migrations. Domains own their own tables."""

from hammerlock.db.engine import Database, create_database
from hammerlock.db.metadata import metadata
from hammerlock.db.uow import UnitOfWork

__all__ = ["Database", "UnitOfWork", "create_database", "metadata"]
