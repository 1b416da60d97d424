"""The REST API (FastAPI): thin routes that validate, write rows and enqueue; never imports torch.

rlaif serve            # or: uvicorn api.main:app
"""
