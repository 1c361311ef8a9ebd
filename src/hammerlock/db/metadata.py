"""The one SQLAlchemy ``MetaData`` every domain's ``storage.py`` declares its tables on.

Table shapes here must match the Alembic migrations (a test compares them); migrations are the
source of truth for the schema on disk.
"""

from sqlalchemy import MetaData

__all__ = ["metadata"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
