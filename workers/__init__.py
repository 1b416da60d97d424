"""Celery workers: one module per queue, thin tasks over the run state machine in rlaif/runs.py.

rlaif worker -Q generate,judge          # a worker for two queues
celery -A workers.app worker -Q train   # the same through the celery command
"""
