"""Feedback: impressions (what was shown), their monthly partitions and retention, the attribution of
click-type interactions to recommendations, and impressions as weak negatives for training."""
