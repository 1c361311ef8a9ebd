"""Security: an index on ``api_keys.revoked_us``.

Each API process asks, once per ``auth_cache_ttl_s``, which keys were revoked in the last ten
minutes (ADR 0023): a range scan of this index instead of a read of every key it keeps.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Partial: nearly every key is never revoked, and the query asks for a range of times.
    revoked = sa.text("revoked_us IS NOT NULL")
    op.create_index(
        "ix_api_keys_revoked_us",
        "api_keys",
        ["revoked_us"],
        postgresql_where=revoked,
        sqlite_where=revoked,
    )


def downgrade() -> None:
    op.drop_index("ix_api_keys_revoked_us", table_name="api_keys")
