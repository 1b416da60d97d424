"""/v1/usage: what the caller's key uses (runs queued or running, bytes stored, tokens today) and its limits."""

from __future__ import annotations

from fastapi import APIRouter

from api import quotas
from api.deps import OwnerDep, ReadSessionDep, SettingsDep, StoreDep
from api.schemas import UsagePublic

router = APIRouter(prefix="/usage", tags=["usage"])


@router.get("")
def read_usage(session: ReadSessionDep, store: StoreDep, owner: OwnerDep, settings: SettingsDep) -> UsagePublic:
    """The key's usage against its quotas (RLAIF_QUOTA_*; null = unlimited) and what one run may cost
    (RLAIF_MAX_RUN_*). Tokens are estimated from the budgets of the runs created today (UTC)."""
    return quotas.usage(session, store, owner, settings)
