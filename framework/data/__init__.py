"""Data: readers, sentence splitting, cleaning, the corpus pipeline, the entity lexicon, segmentation into
token and word spans, the cached segmented dataset and batch collation."""
