"""Fill-mask: what a masked-LM predicts at each ``[MASK]``, and a run of masks decoded as one whole word.

For every ``[MASK]`` of a text, :func:`fill_mask` reports the ``top_k`` tokens with their probabilities, read
from one forward pass with all masks in place (what ``pipeline("fill-mask")`` shows for one mask).

A run of two or more consecutive ``[MASK]``s usually stands for one word (``[MASK][MASK]材料`` wants ``复合``),
and the best word is rarely the per-position argmax: each position's prediction ignores what the other
position will hold. The run is therefore also decoded jointly by beam search, left to right: step ``i`` re-runs
the model with the run's first ``i`` masks filled by the beam's tokens (masks outside the run stay masked) and
extends every beam by the next token. A filling's score is the summed log-probability
``log p(t1 | masks) + log p(t2 | t1, masks) + ...``, the chain rule applied to a bidirectional model: the usual
way to score a multi-token filling with BERT, not a true joint probability (BERT defines none), and it
depends on the left-to-right order.

Special tokens (``[PAD]``, ``[UNK]``, ``[CLS]``...) and embedding rows beyond the tokenizer (a table padded to
a multiple of 8) are never proposed: they fill no text. Probabilities are still the model's own softmax over
its whole vocabulary, so a list's probabilities may add up to less than the mass the model gave them.

Used by ``launch/fill_mask.py``; the library function is :func:`fill_mask`. torch and transformers are imported
where they are used, so that the command refuses a missing ``--model`` folder in a fraction of a second.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class FillMaskError(ValueError):
    """A model, tokenizer or text that fill-mask cannot work with; the message names it and the fix."""


def default_device() -> "torch.device":
    """CUDA when a GPU is visible, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model_folder(model_dir: str | Path) -> None:
    """Refuse, without loading anything, a ``--model`` that names a missing folder or one without ``config.json``.

    A name that is no local path is left to ``from_pretrained`` (a hub name).

    Raises:
        FillMaskError: with the one-line reason and the fix.
    """
    name = str(model_dir)
    path = Path(name).expanduser()
    if not path.exists() and _looks_like_a_path(name):
        raise FillMaskError(f"--model {name}: no such folder; give an exported model folder (e.g. runs/demo/model)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FillMaskError(f"--model {name}: no config.json in this folder; give the folder launch/export.py or a "
                            "pretraining run (OUTPUT/model) wrote")


def load_model(model_dir: str | Path, device: "str | torch.device | None" = None) -> tuple[Any, Any]:
    """``BertForMaskedLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` of ``model_dir``, in eval mode.

    Args:
        model_dir: an exported model folder (``OUTPUT/model``) or a hub name.
        device: where the model runs; default :func:`default_device`.

    Raises:
        FillMaskError: a one-line message when the folder is missing or holds no loadable model/tokenizer.
    """
    import pickle

    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from framework.training.safe_load import describe_unpickling_error

    check_model_folder(model_dir)
    name = str(model_dir)
    try:
        model = BertForMaskedLM.from_pretrained(name, weights_only=True)  # a pickled pytorch_model.bin runs nothing
        tokenizer = AutoTokenizer.from_pretrained(name)
    except pickle.UnpicklingError as err:
        raise FillMaskError(f"--model {name}: {describe_unpickling_error(name, err)}") from None
    except (OSError, ValueError, KeyError) as err:
        raise FillMaskError(f"--model {name}: cannot load a BERT masked-LM and its tokenizer ({_first_line(err)}); "
                            "give a folder with config.json, model.safetensors and vocab.txt") from err
    if tokenizer.mask_token_id is None:
        raise FillMaskError(f"--model {name}: the tokenizer has no mask token, so there is nothing to fill")
    model.to(default_device() if device is None else torch.device(device))
    model.eval()
    return model, tokenizer


def mask_runs(positions: Sequence[int]) -> list[list[int]]:
    """Group sorted token positions into runs of consecutive ones: ``[2, 3, 7]`` -> ``[[2, 3], [7]]``."""
    runs: list[list[int]] = []
    for pos in positions:
        if runs and pos == runs[-1][-1] + 1:
            runs[-1].append(pos)
        else:
            runs.append([pos])
    return runs


def fill_mask(model: Any, tokenizer: Any, text: str, top_k: int = 5, beam: int = 8,
              skip_special: bool = True) -> dict[str, Any]:
    """Predict every ``[MASK]`` of ``text``; runs of 2+ masks are also decoded as whole words by beam search.

    Args:
        model: a ``BertForMaskedLM`` (anything returning ``.logits`` ``[batch, length, vocab]``), in eval mode.
        tokenizer: its tokenizer; ``[MASK]`` in ``text`` is its mask token.
        text: the text, with one or more ``[MASK]``.
        top_k: predictions per mask, and whole-word candidates per run.
        beam: beam width of the whole-word search (at least ``top_k`` is used).
        skip_special: never propose special tokens or ids beyond the tokenizer (see the module docstring).

    Returns:
        ``{"text", "filled", "masks": [...], "words": [...]}``: ``masks`` has one entry per ``[MASK]`` in order
        (``mask`` number from 1, token ``position``, ``predictions``: ``token``, ``token_id``, ``probability``,
        best first); ``words`` one entry per run of 2+ masks (``masks``: their numbers, ``candidates``:
        ``word``, ``tokens``, ``token_ids``, ``log_prob``, ``probability``, best first). ``filled`` is ``text``
        with the best whole word in each run and the best token at each single mask.

    Raises:
        FillMaskError: no mask in ``text``, a text longer than the model's positions, or a bad ``top_k``/``beam``.
    """
    import torch

    with torch.inference_mode():
        return _fill_mask(model, tokenizer, text, top_k, beam, skip_special)


def _fill_mask(model: Any, tokenizer: Any, text: str, top_k: int, beam: int, skip_special: bool) -> dict[str, Any]:
    """:func:`fill_mask` without the inference-mode wrapper."""
    import torch

    if top_k < 1 or beam < 1:
        raise FillMaskError(f"top_k={top_k} and beam={beam} must both be at least 1")
    mask_token = tokenizer.mask_token
    if mask_token != "[MASK]":
        text = text.replace("[MASK]", mask_token)  # a tokenizer with another spelling (``<mask>``)
    device = _model_device(model)
    enc = tokenizer(text, return_tensors="pt")
    input_ids = enc["input_ids"][0]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and len(input_ids) > limit:
        raise FillMaskError(f"{text[:40]!r}...: {len(input_ids)} tokens, more than the model's {limit} positions; "
                            "shorten the text")
    positions = (input_ids == tokenizer.mask_token_id).nonzero().flatten().tolist()
    if not positions:
        raise FillMaskError(f"{text!r} has no {mask_token}: put {mask_token} where a token should be predicted")
    inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    log_probs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)  # [length, vocab]
    banned = _banned_ids(tokenizer, log_probs.shape[-1]) if skip_special else []

    masks = []
    for number, pos in enumerate(positions, start=1):
        scores = log_probs[pos].clone()
        scores[banned] = -math.inf
        best = torch.topk(scores, min(top_k, scores.numel()))
        masks.append({
            "mask": number,
            "position": pos,
            "predictions": [{"token": tokenizer.convert_ids_to_tokens(int(i)), "token_id": int(i),
                             "probability": math.exp(float(s))} for s, i in zip(best.values, best.indices)
                            if math.isfinite(float(s))],
        })

    words = []
    number_of = {pos: n for n, pos in enumerate(positions, start=1)}
    for run in mask_runs(positions):
        if len(run) < 2:
            continue
        found = beam_search_run(model, inputs, run, log_probs[run[0]], max(beam, top_k), banned)[:top_k]
        words.append({
            "masks": [number_of[p] for p in run],
            "positions": run,
            "candidates": [{"word": join_tokens(tokenizer.convert_ids_to_tokens(ids)),
                            "tokens": tokenizer.convert_ids_to_tokens(ids), "token_ids": ids,
                            "log_prob": score, "probability": math.exp(score)} for ids, score in found],
        })
    return {"text": text, "filled": _filled(text, mask_token, masks, words), "masks": masks, "words": words}


def beam_search_run(model: Any, inputs: dict[str, "torch.Tensor"], run: Sequence[int], first_log_probs: "torch.Tensor",
                    width: int, banned: Sequence[int] = ()) -> list[tuple[list[int], float]]:
    """The best ``width`` fillings of the consecutive mask positions ``run``, by summed log-probability.

    Args:
        model: the masked LM.
        inputs: the encoded text (batch of one) with every mask in place, on the model's device.
        run: token positions of the run, left to right.
        first_log_probs: log-probabilities at ``run[0]`` with all masks in place (the first step reuses the
            forward pass the per-mask predictions already made).
        width: beam width.
        banned: token ids never proposed.

    Returns:
        ``(token_ids, log_prob)`` pairs, best first (at most ``width``). Call it under ``torch.inference_mode()``.
    """
    import torch

    beams: list[tuple[list[int], float]] = [([], 0.0)]
    for step, pos in enumerate(run):
        if step == 0:
            step_log_probs = first_log_probs.unsqueeze(0)
        else:
            # Re-run the model with this step's earlier run positions filled by each beam's tokens.
            batch = {k: v.expand(len(beams), -1).clone() for k, v in inputs.items()}
            batch["input_ids"][:, list(run[:step])] = torch.tensor([ids for ids, _ in beams],
                                                                    device=batch["input_ids"].device)
            step_log_probs = torch.log_softmax(model(**batch).logits[:, pos].float(), dim=-1)
        step_log_probs = step_log_probs.clone()
        step_log_probs[:, list(banned)] = -math.inf
        totals = torch.tensor([score for _, score in beams], dtype=torch.float64, device=step_log_probs.device)
        totals = totals[:, None] + step_log_probs.double()  # [beams, vocab]
        vocab = totals.shape[1]
        best = torch.topk(totals.flatten(), min(width, totals.numel()))
        beams = [(beams[int(i) // vocab][0] + [int(i) % vocab], float(s))
                 for s, i in zip(best.values, best.indices) if math.isfinite(float(s))]
    return beams


def join_tokens(tokens: Sequence[str]) -> str:
    """Tokens as text: ``##`` pieces and Chinese characters join directly, other words with a space."""
    out = ""
    for token in tokens:
        piece = token[2:] if token.startswith("##") else token
        if out and not token.startswith("##") and not (_is_cjk(out[-1]) or _is_cjk(piece[:1])):
            out += " "
        out += piece
    return out


def result_tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Readable tables of one :func:`fill_mask` result (for ``framework.evaluation.output.emit``)."""
    rows = [{"mask": m["mask"], "rank": rank, "token": p["token"], "probability": p["probability"]}
            for m in result["masks"] for rank, p in enumerate(m["predictions"], start=1)]
    tables = [(f"{result['text']}  ->  {result['filled']}", rows)]
    for word in result["words"]:
        numbers = word["masks"]
        tables.append((f"masks {numbers[0]}-{numbers[-1]} as one word (beam search, summed log-probability)",
                       [{"rank": rank, "word": c["word"], "probability": c["probability"], "log_prob": c["log_prob"]}
                        for rank, c in enumerate(word["candidates"], start=1)]))
    return tables


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _looks_like_a_path(name: str) -> bool:
    """True for a local path (absolute, ``./``, ``~``, or deeper than a hub ``org/name``), not a hub id."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _model_device(model: Any) -> "torch.device":
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _banned_ids(tokenizer: Any, vocab_rows: int) -> list[int]:
    """Special tokens and embedding rows beyond the tokenizer: never a filling."""
    banned = {int(i) for i in tokenizer.all_special_ids if i is not None and 0 <= i < vocab_rows}
    banned.update(range(min(len(tokenizer), vocab_rows), vocab_rows))
    return sorted(banned)


def _is_cjk(ch: str) -> bool:
    return bool(ch) and (0x3400 <= ord(ch) <= 0x9FFF or 0xF900 <= ord(ch) <= 0xFAFF or 0x20000 <= ord(ch) <= 0x2FA1F
                         or 0x3000 <= ord(ch) <= 0x303F or 0xFF00 <= ord(ch) <= 0xFFEF)


def _filled(text: str, mask_token: str, masks: list[dict[str, Any]], words: list[dict[str, Any]]) -> str:
    """``text`` with each mask replaced: the best whole word's token in a run, else the best single token."""
    chosen: dict[int, str] = {}
    for m in masks:
        if m["predictions"]:
            chosen[m["mask"]] = m["predictions"][0]["token"]
    for w in words:
        if w["candidates"]:
            chosen.update(zip(w["masks"], w["candidates"][0]["tokens"]))
    counter = iter(range(1, len(masks) + 1))

    def replace(_: re.Match[str]) -> str:
        number = next(counter, None)
        token = chosen.get(number) if number is not None else None
        return mask_token if token is None else (token[2:] if token.startswith("##") else token)

    return re.sub(re.escape(mask_token), replace, text)
