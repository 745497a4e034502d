"""framework.evaluation.fill_mask and launch/fill_mask.py: per-mask predictions, whole-word beam search, the CLI.

The beam search is checked against brute-force joint search on a hand-made model whose best joint filling of
a two-mask run is known and differs from the per-position argmax (and from greedy decoding), and on a real
tiny BERT over a tiny vocabulary. The CLI runs in a subprocess on a tiny BERT saved with the CSL tokenizer.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from framework.evaluation.fill_mask import FillMaskError, fill_mask, join_tokens, load_model, mask_runs

ROOT = Path(__file__).resolve().parents[1]
FILL_MASK = ROOT / "launch" / "fill_mask.py"
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "甲", "乙", "丙", "丁", "戊"]
MASK_ID, JIA, YI, BING, DING, WU = 4, 5, 6, 7, 8, 9


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    """``python launch/fill_mask.py ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, str(FILL_MASK), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A random 2-layer, hidden-32 BertForMaskedLM with the CSL tokenizer, saved like an export."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    out = tmp_path_factory.mktemp("tiny-mlm")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_vocab_tokenizer(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a BERT tokenizer
    """A BERT tokenizer of ten tokens (five specials, five characters)."""
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-vocab")
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in TINY_VOCAB), encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    assert tokenizer("甲[MASK][MASK]乙")["input_ids"] == [2, JIA, MASK_ID, MASK_ID, YI, 3]
    return tokenizer


def _log_dist(probs: dict[int, float], vocab: int = len(TINY_VOCAB)) -> torch.Tensor:
    """Log-probabilities with the given entries; the rest of the mass is shared by the other tokens."""
    rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
    return torch.tensor([math.log(probs.get(i, rest)) for i in range(vocab)])


class KnownAnswerModel(torch.nn.Module):
    """A masked LM for ``甲[MASK][MASK]乙`` whose answer is known.

    First mask (position 2): 丙 0.5, 丁 0.4. Second mask (position 3), depending on what position 2 holds:
    still [MASK] -> 戊 0.6 (so the per-position argmax is 丙戊); 丙 -> flat, at most 0.3 (甲); 丁 -> 戊 0.9.
    The best joint filling is 丁戊 (0.4 x 0.9 = 0.36), not 丙甲 (0.5 x 0.3 = 0.15, what greedy decoding picks).
    """

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.config = SimpleNamespace(max_position_embeddings=16)
        self.first = _log_dist({BING: 0.5, DING: 0.4})
        self.second = {MASK_ID: _log_dist({WU: 0.6}), BING: _log_dist({JIA: 0.3, YI: 0.24, WU: 0.22}),
                       DING: _log_dist({WU: 0.9})}
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, len(TINY_VOCAB))
        logits[:, 2] = self.first
        for b in range(input_ids.shape[0]):
            logits[b, 3] = self.second.get(int(input_ids[b, 2]), _log_dist({}))
        return SimpleNamespace(logits=logits + self.anchor)


def brute_force(model: torch.nn.Module, tokenizer, text: str) -> list[tuple[list[int], float]]:  # noqa: ANN001
    """Every filling of the text's two consecutive masks, scored like the beam search, best first."""
    enc = tokenizer(text, return_tensors="pt")
    positions = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    assert len(positions) == 2 and positions[1] == positions[0] + 1
    allowed = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    with torch.no_grad():
        first = torch.log_softmax(model(**enc).logits[0, positions[0]], -1)
        scored = []
        for a in allowed:
            ids = enc["input_ids"].clone()
            ids[0, positions[0]] = a
            second = torch.log_softmax(model(**{**enc, "input_ids": ids}).logits[0, positions[1]], -1)
            scored += [([a, b], float(first[a] + second[b])) for b in allowed]
    return sorted(scored, key=lambda item: -item[1])


def test_beam_search_finds_the_known_joint_best_which_is_not_the_argmax(tiny_vocab_tokenizer) -> None:  # noqa: ANN001
    model = KnownAnswerModel()
    text = "甲[MASK][MASK]乙"
    result = fill_mask(model, tiny_vocab_tokenizer, text, top_k=3, beam=2)

    per_position = [m["predictions"][0]["token"] for m in result["masks"]]
    assert per_position == ["丙", "戊"]
    best = result["words"][0]["candidates"][0]
    assert best["tokens"] == ["丁", "戊"] and best["word"] == "丁戊"
    assert best["probability"] == pytest.approx(0.36, rel=1e-5)
    assert result["filled"] == "甲丁戊乙"
    assert best["word"] != "".join(per_position)

    exhaustive = brute_force(model, tiny_vocab_tokenizer, text)
    assert exhaustive[0][0] == [DING, WU]
    full = fill_mask(model, tiny_vocab_tokenizer, text, top_k=4, beam=len(TINY_VOCAB))["words"][0]["candidates"]
    assert [c["token_ids"] for c in full] == [ids for ids, _ in exhaustive[:4]]  # the 5th place is a tie
    assert [c["log_prob"] for c in full] == pytest.approx([s for _, s in exhaustive[:4]], abs=1e-5)

    greedy = fill_mask(model, tiny_vocab_tokenizer, text, top_k=1, beam=1)["words"][0]["candidates"][0]
    assert greedy["tokens"] == ["丙", "甲"] and greedy["probability"] == pytest.approx(0.15, rel=1e-5)


def test_beam_search_equals_brute_force_on_a_real_tiny_bert(tiny_vocab_tokenizer) -> None:  # noqa: ANN001
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(1)
    model = BertForMaskedLM(BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=16))
    with torch.no_grad():  # sharpen the random head so that the fillings' scores are well apart
        model.cls.predictions.decoder.weight.mul_(20)
    model.eval()
    text = "乙[MASK][MASK]甲丙"
    exhaustive = brute_force(model, tiny_vocab_tokenizer, text)
    result = fill_mask(model, tiny_vocab_tokenizer, text, top_k=4, beam=5)  # 5 = every non-special token
    found = result["words"][0]["candidates"]
    assert [c["token_ids"] for c in found] == [ids for ids, _ in exhaustive[:4]]
    assert [c["log_prob"] for c in found] == pytest.approx([s for _, s in exhaustive[:4]], abs=1e-5)
    assert all(c["probability"] == pytest.approx(math.exp(c["log_prob"])) for c in found)


def test_mask_runs_and_token_joining() -> None:
    assert mask_runs([2, 3, 7, 9, 10, 11]) == [[2, 3], [7], [9, 10, 11]]
    assert mask_runs([]) == []
    assert join_tokens(["复", "合"]) == "复合"
    assert join_tokens(["deep", "learning"]) == "deep learning"
    assert join_tokens(["trans", "##former", "模", "型"]) == "transformer模型"


def test_cli_json_gives_one_entry_per_mask(tiny_mlm_dir: Path, csl_sentences: list[str]) -> None:
    sentence = next(s for s in csl_sentences if len(s) > 24 and all("\u4e00" <= ch <= "\u9fff" for ch in s[:24]))
    run_text = sentence[:4] + "[MASK][MASK]" + sentence[6:12] + "[MASK]" + sentence[13:24]
    single = sentence[:8] + "[MASK]" + sentence[9:20]
    proc = run_cli(["--model", str(tiny_mlm_dir), "--top-k", "3", "--beam", "4", "--json", run_text, single])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "as one word" in proc.stdout  # the readable table comes first
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["top_k"] == 3 and out["beam"] == 4 and out["device"] in ("cpu", "cuda:0")
    assert [len(r["masks"]) for r in out["results"]] == [3, 1]
    for result in out["results"]:
        for m in result["masks"]:
            probs = [p["probability"] for p in m["predictions"]]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
            assert not any(p["token"].startswith("[") for p in m["predictions"])  # no special tokens
    words = out["results"][0]["words"]
    assert len(words) == 1 and words[0]["masks"] == [1, 2] and out["results"][1]["words"] == []
    scores = [c["log_prob"] for c in words[0]["candidates"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert all(len(c["token_ids"]) == 2 for c in words[0]["candidates"])
    # The CLI reports what the library computes.
    model, tokenizer = load_model(tiny_mlm_dir, device="cpu")
    direct = fill_mask(model, tokenizer, run_text, top_k=3, beam=4)
    assert direct["filled"] == out["results"][0]["filled"]
    for got, want in zip(out["results"][0]["masks"], direct["masks"]):
        assert [p["token_id"] for p in got["predictions"]] == [p["token_id"] for p in want["predictions"]]
        assert [p["probability"] for p in got["predictions"]] == pytest.approx(
            [p["probability"] for p in want["predictions"]], rel=1e-5)
    assert [c["token_ids"] for c in words[0]["candidates"]] == \
        [c["token_ids"] for c in direct["words"][0]["candidates"]]


def test_cli_bad_model_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_cli(["--model", str(tmp_path / "no-such-model"), "本文[MASK]究"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-model: no such folder" in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_load_errors_and_text_errors_are_clear(tmp_path: Path, tiny_mlm_dir: Path,
                                               tiny_vocab_tokenizer) -> None:  # noqa: ANN001
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FillMaskError, match="no config.json"):
        load_model(empty)
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_mlm_dir / "config.json").read_text())
    with pytest.raises(FillMaskError, match="cannot load a BERT masked-LM") as err:
        load_model(config_only)
    assert "\n" not in str(err.value)
    with pytest.raises(FillMaskError, match=r"has no \[MASK\]"):
        fill_mask(KnownAnswerModel(), tiny_vocab_tokenizer, "甲乙")
    with pytest.raises(FillMaskError, match="more than the model's 16 positions"):
        fill_mask(KnownAnswerModel(), tiny_vocab_tokenizer, "甲" * 20 + "[MASK]")


def test_help_does_not_import_torch() -> None:
    code = ("import runpy, sys\nsys.argv = ['fill_mask.py', '--help']\n"
            "try:\n    runpy.run_path(sys.argv_path, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)").replace("sys.argv_path", repr(str(FILL_MASK)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--top-k" in proc.stdout and "torch imported: False" in proc.stdout
