"""Evaluation: is the pretrained model any good, and did its masking strategy earn its place?

This layer sits above :mod:`framework.training` and reuses its pieces (segmented cache, strategies,
``MLMMetrics``, the DeepSpeed engine set-up, the export) rather than copying them (the model card, written by every export, lives with the export in
:mod:`framework.training.model_card`; ``--record`` here adds results to it):

* :mod:`framework.evaluation.fill_mask`: ``[MASK]`` predictions, a run of masks decoded as one word;
* :mod:`framework.evaluation.mlm`: held-out MLM metrics with identical masks for every model;
* :mod:`framework.evaluation.cloze`: the entity-cloze probe (one whole entity or word masked per item);
* :mod:`framework.evaluation.tasks`: readers of the CSL tasks (benchmark TSVs, FewCLUE JSON lines, papers);
* :mod:`framework.evaluation.finetune`: fine-tuning a pretrained model on a task through DeepSpeed
  (accuracy and macro-F1 in :mod:`framework.evaluation.classification`);
* :mod:`framework.evaluation.study`: the masking-strategy study;
* :mod:`framework.evaluation.output`: tables, ``--json`` lines and W&B reporting shared by the commands.
"""
