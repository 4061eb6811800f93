"""The config resolved once: every field checked and turned into a frozen Run (resolve.py)."""
