"""Celery workers: one module per queue, each task one line into rlaif/service/execute.py (or the state machine, rlaif/service/state.py).

rlaif worker -Q generate,judge          # a worker for two queues
celery -A workers.app worker -Q train   # the same through the celery command
"""
