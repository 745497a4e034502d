"""Data: readers, sentence splitting, cleaning, the corpus pipeline, the entity lexicon, segmentation into
token and word spans, and the cached segmented dataset
(batches are built above the masking strategies, in :mod:`framework.batching`)."""
