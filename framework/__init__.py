"""academic-bert: continued pretraining of Chinese BERT models on academic literature.

Data flows one way through the package:

    raw papers --(framework.data.readers)--> Paper records
               --(framework.data.sentences, framework.data.cleaning)--> clean sentences
               --(framework.data.corpus)--> train.txt / valid.txt / keywords.txt / stats.json
               --(framework.data.segmented)--> cached token ids + word spans + entity spans
               --(framework.masking.*)--> masked examples
               --(framework.batching.*)--> padded or packed batches
               --(framework.training.*)--> DeepSpeed engine, checkpoints, exported model
"""

__version__ = "0.1.0"
