"""The one training loop (``loop.py``) and what it needs: checkpoints, the LR schedule, metric logging."""
