"""Training: typed run config, model construction, DeepSpeed engine set-up, the loop, checkpoints,
metrics, reporting (metrics.jsonl, W&B, TensorBoard), the LAMB fallback optimizer and export."""
