"""``feature-stats``: streaming per-column statistics and the flags that say what is wrong."""
