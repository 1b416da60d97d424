"""The service half of rlaif: it imports the library (rlaif/stages and what they use), never the other way round.

    state.py     the run state machine on the database (create, next step, fail, cancel, resume, delete, sweep);
                 the only part the API imports, with the store and db
    claims.py    one claim / renew / release for shards and single-task stages, and the heartbeat thread
    execute.py   runs claimed work through the stage contract (rlaif/stages/contract.py), exports, progress
    db.py        SQLAlchemy models and sessions; migrations/ the Alembic revisions; the revision check at start

The Celery tasks in workers/ are one line each into execute (or state for the sweep).
"""
