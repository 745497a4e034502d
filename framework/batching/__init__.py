"""Batch builders: masked examples -> model tensors, above the masking strategies.

* :mod:`framework.batching.collator`: :class:`~framework.batching.collator.MaskingCollator` masks a list of
  segmented examples with the run's strategy and pads them into one row each (the default layout).
* :mod:`framework.batching.packing`: masks the same way, then packs several sentences into each row of
  ``--seq-len`` tokens with a block-diagonal attention mask (``--packing``).

The data layer (:mod:`framework.data`) sits below the strategies and knows nothing of batches; the strategies
(:mod:`framework.masking`) turn one example into one masked example; these builders decide the layout.
"""
