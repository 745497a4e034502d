"""The training model: ``BertForMaskedLM`` with the MLM head run only where a token is predicted.

Hugging Face's ``BertForMaskedLM`` projects *every* position onto the vocabulary, then ignores the ~85% of
positions whose label is -100. For Chinese BERT that projection (hidden 768 -> 21,128 tokens, plus the head's
transform layer) is about a sixth of the forward FLOPs, and its ``[batch, length, vocab]`` logits (and their
fp32 copy in the loss) are the largest activation of the step: 32 x 128 x 21,128 values, 170 MB in fp16, for a
2080 Ti micro-batch. :class:`BertForMaskedLMAtLabels` gathers the labelled positions' hidden states first and
runs the head on those alone; the loss is the same mean cross-entropy over the labelled positions.

It is a subclass with the same parameters and state-dict keys, so ``from_pretrained`` loads any BERT MLM
checkpoint into it, DeepSpeed checkpoints are unchanged and the export (:mod:`framework.training.export`) is a
plain ``BertForMaskedLM``. Without ``labels`` it behaves exactly like its parent.

Packed batches (:mod:`framework.batching.packing`) give ``position_ids`` that restart at every sentence and a
boolean block-diagonal ``attention_mask`` of shape ``[B, 1, T, T]`` (True = attend). ``BertModel`` hands a 4D
mask to the attention function unchanged: SDPA reads a boolean mask as is, whereas the eager attention *adds*
the mask to its scores, so for eager the mask becomes ``0`` / the dtype's minimum here (transformers' own
convention for eager masks). Flash-attention kernels take no 4D mask; a packed batch refuses them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM
from transformers.modeling_outputs import MaskedLMOutput

from framework.data.example import IGNORE_INDEX


_MASK_4D_IMPLEMENTATIONS = ("sdpa", "eager")


class BertForMaskedLMAtLabels(BertForMaskedLM):
    """``BertForMaskedLM`` whose forward with ``labels`` computes logits only at labelled positions.

    With ``labels`` the output's ``logits`` are ``[N, V]`` for the ``N`` positions where ``labels != -100``, in
    row-major order (``labels[labels != -100]`` are their targets), and ``loss`` is their mean cross-entropy,
    computed in fp32. A batch with no labelled position gives a zero loss that still reaches every head
    parameter in the graph, instead of the ``nan`` of a mean over nothing.
    """

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        """See the class docstring; other keyword arguments go to ``BertForMaskedLM`` when ``labels`` is None.

        ``attention_mask`` is the usual ``[B, T]`` padding mask or a packed batch's ``bool [B, 1, T, T]``
        block mask; ``position_ids`` (``[B, T]``) default to ``0..T-1`` in every row.
        """
        attention_mask = self._attention_mask(attention_mask)
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids).last_hidden_state
        selected = labels != IGNORE_INDEX
        logits = self.cls(hidden[selected])
        if logits.shape[0] == 0:
            loss = logits.float().sum() * 0.0
        else:
            loss = F.cross_entropy(logits.float(), labels[selected])
        return MaskedLMOutput(loss=loss, logits=logits)

    def _attention_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """A boolean 4D mask in the form the configured attention expects; any other mask unchanged."""
        if mask is None or mask.ndim != 4 or mask.dtype != torch.bool:
            return mask
        implementation = self.config._attn_implementation
        if implementation not in _MASK_4D_IMPLEMENTATIONS:
            raise ValueError(f"a packed batch (4D attention mask) needs attn_implementation sdpa or eager, not "
                             f"{implementation!r}; train without --packing")
        if implementation == "sdpa":
            return mask
        # Eager adds the mask to the scores in the model's dtype: the minimum, not -inf, keeps a row finite.
        dtype = self.get_input_embeddings().weight.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
