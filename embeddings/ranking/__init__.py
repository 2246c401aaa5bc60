"""The ranking stage: candidates from several sources, per-candidate features, a LightGBM ranker."""
