"""An example academic-bert masking plugin: the ``random_word`` strategy."""

from academic_bert_example_plugin.random_word import RandomWordMasking, RandomWordOptions

__all__ = ["RandomWordMasking", "RandomWordOptions"]
