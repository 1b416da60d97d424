"""Preference sets (human comparisons for the hybrid preference model) and the run's optional preference set.

A new table `preference_sets` (the columns of `prompt_sets`: items are {id, prompt, chosen, rejected}) and
`runs.preference_set_id`, null for every run before it. On SQLite, adding the foreign key copies `runs` to a new
table (a batch migration); its rows, indexes and the foreign keys that point at it are kept.

Revision ID: 0002
Revises: 0001
Create Date: 2027-01-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

FOREIGN_KEY = "fk_runs_preference_set_id_preference_sets"


def upgrade() -> None:
    op.create_table(
        "preference_sets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_preference_sets_owner", "preference_sets", ["owner"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("preference_set_id", sa.String(length=64), nullable=True))
        batch.create_foreign_key(FOREIGN_KEY, "preference_sets", ["preference_set_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")
        batch.drop_column("preference_set_id")
    op.drop_table("preference_sets")  # (its index goes with it)
