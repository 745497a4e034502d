"""Term mining (framework/data/term_mining.py, launch/mine_terms.py, preprocess --mine-terms, the terms benchmark)
on real CSL text, and its statistics on hand-made cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from framework.data.lexicon import load_lexicon
from framework.data.term_mining import (
    NgramTable,
    TermMiningConfig,
    count_ngrams,
    mine_terms,
    score_terms,
    write_term_table,
    write_terms,
)

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "锂硫共晶膜"  # no such material: jieba cuts it into 锂/硫/共晶/膜 and no CSL paper has it
PHRASE = "模型的参数"  # frequent after planting, but a phrase across the particle 的


def _planted(sentences: list[str], word: str, replacement: str, times: int) -> list[str]:
    """``sentences`` with ``word`` replaced by ``replacement`` in the first ``times`` sentences holding it (real,
    varied contexts on both sides)."""
    out, done = [], 0
    for sentence in sentences:
        if done < times and word in sentence:
            sentence = sentence.replace(word, replacement, 1)
            done += 1
        out.append(sentence)
    assert done == times, f"only {done} sentences hold {word}"
    return out


@pytest.fixture(scope="module")
def planted_corpus(csl_sentences: list[str]) -> list[str]:
    corpus = _planted(csl_sentences, "方法", PLANTED, 20)
    return _planted(corpus, "模型", PHRASE, 30)


@pytest.fixture(scope="module")
def mined(planted_corpus: list[str]):
    return mine_terms(planted_corpus, TermMiningConfig(workers=1, progress=False))


def test_a_planted_term_is_found_and_a_phrase_across_a_particle_is_not(mined, planted_corpus: list[str]) -> None:
    ranked = [t.text for t in mined.terms]
    assert PLANTED in ranked[:300], f"the planted term ranks {ranked.index(PLANTED) + 1 if PLANTED in ranked else None}"
    term = mined.terms[ranked.index(PLANTED)]
    assert term.count == 20 and term.aligned == 1.0 and term.cohesion > 3 and term.specificity > 10
    assert min(term.left_entropy, term.right_entropy) > 2.0  # twenty real contexts on each side
    # Its fragments always have the same neighbour (锂硫共晶 is always followed by 膜): entropy 0, not terms.
    for fragment in ("锂硫共晶", "硫共晶膜", "硫共晶"):
        assert fragment not in ranked
    # The phrase occurs 30+ times, more than the planted term, and is still not a term; nor are its halves.
    assert sum(s.count(PHRASE) for s in planted_corpus) >= 30
    for text in (PHRASE, "模型的", "的参数"):
        assert text not in ranked
    assert all(t.score > 0 and t.count >= 3 for t in mined.terms)


def test_mined_terms_are_mostly_keywords_of_the_real_papers(mined, csl_keywords: list[str]) -> None:
    """On the real sentences the top of the ranking is largely the papers' own (hidden) keywords."""
    keywords = set(csl_keywords)
    top = [t.text for t in mined.terms[:500]]
    share = sum(t in keywords for t in top) / len(top)
    assert share > 0.3, f"only {share:.0%} of the top 500 are keywords"


def test_statistics_on_hand_made_counts() -> None:
    """Entropy, cohesion and specificity are the documented formulas over the counted n-grams (characters
    only: made-up words of rare characters, which jieba does not know)."""
    sentences = ["犇骉甲", "乙犇骉丙", "丁犇骉甲", "乙犇骉", "犇骉甲"]
    table = count_ngrams(sentences)
    assert table.chars["犇骉"] == 5 and table.positions == sum(map(len, sentences))
    config = TermMiningConfig(min_count=3, min_aligned=0.0, workers=1, progress=False)
    terms = {t.text: t for t in score_terms(table, config)}
    term = terms["犇骉"]
    # Right neighbours: 甲 甲 甲 丙 and one run end; left: start, 乙, 丁, 乙, start. A boundary is a neighbour of
    # its own each time.
    h = lambda counts: -sum(c / 5 * math.log(c / 5) for c in counts)  # noqa: E731
    assert term.right_entropy == pytest.approx(h([3, 1, 1]))
    assert term.left_entropy == pytest.approx(h([2, 1, 1, 1]))
    n = table.positions
    assert term.cohesion == pytest.approx(math.log(5 * n / (table.chars["犇"] * table.chars["骉"])))
    import jieba

    general = sum(math.log(max(jieba.dt.FREQ.get(w, 0), 1) / jieba.dt.total) for w in jieba.lcut("犇骉", HMM=False))
    assert term.specificity == pytest.approx(math.log(5 / n) - general)
    assert term.score == pytest.approx(math.log(5) * min(term.left_entropy, term.right_entropy) * term.cohesion
                                       * term.specificity)
    # 犇骉甲 ends its run all 3 times: three boundaries, three distinct neighbours.
    assert "犇骉甲" in terms and terms["犇骉甲"].right_entropy == pytest.approx(math.log(3))


def test_the_result_does_not_depend_on_workers_and_pruning_bounds_the_table(csl_sentences: list[str]) -> None:
    sample = csl_sentences[:1500]
    one = mine_terms(sample, TermMiningConfig(workers=1, chunk_sentences=300, progress=False))
    two = mine_terms(sample, TermMiningConfig(workers=2, chunk_sentences=300, progress=False))
    assert [(t.text, t.count, round(t.score, 9)) for t in one.terms] == [(t.text, t.count, round(t.score, 9))
                                                                         for t in two.terms]
    assert one.stats.prunings == 0
    small = mine_terms(sample, TermMiningConfig(workers=1, chunk_sentences=300, max_ngrams=20_000, progress=False))
    assert small.stats.prunings >= 1 and small.stats.pruned_below >= 2
    assert small.stats.char_ngrams <= 20_000 and small.stats.word_ngrams <= 20_000
    # What pruning drops is the rare tail: the best terms survive.
    best = {t.text for t in one.terms[:100]}
    assert len(best & {t.text for t in small.terms[:200]}) >= 70


def test_the_character_pass_counts_exactly_what_scoring_reads(csl_sentences: list[str]) -> None:
    """The second pass counts only the candidates, their halves and their neighbours, with the counts a full
    count of every n-gram gives; and mining with it ranks exactly as from the full table."""
    from framework.data.term_mining import _is_candidate, _needed_for, count_chars, count_words

    sample = csl_sentences[:800]
    full = count_ngrams(sample)
    words = count_words(sample)
    candidates = frozenset(w for w, c in words.words.items() if c >= 1.5 and _is_candidate(w, 10))
    needed = _needed_for(candidates)
    partial = count_chars(sample, 10, needed, candidates)
    assert len(partial.chars) < len(full.chars) / 4
    assert all(full.chars[g] == c for g, c in partial.chars.items())
    assert all(partial.chars[g] == full.chars[g] for g in needed if g in full.chars)
    config = TermMiningConfig(workers=1, progress=False)
    partial.words = words.words
    assert score_terms(partial, config) == score_terms(full, config)
    # --min-aligned 0: every character n-gram is a candidate, so one pass counts them all.
    chars_only = mine_terms(sample, TermMiningConfig(min_aligned=0.0, workers=1, progress=False))
    assert chars_only.stats.char_ngrams == len(full.chars) and len(chars_only.terms) > 0


def test_prune_drops_the_rarest_until_half_the_budget() -> None:
    table = NgramTable()
    table.chars.update({f"a{i}": 1 for i in range(30_000)} | {f"b{i}": 2 for i in range(5000)} | {"c": 9})
    table.prune(20_000)
    assert table.prune_below == 2 and table.prunings == 1
    assert set(table.chars) == {f"b{i}" for i in range(5000)} | {"c"}
    table.prune(20_000)  # within the budget now: nothing changes
    assert table.prunings == 1


def test_the_lexicon_file_loads_and_merges_with_keywords(mined, tmp_path: Path, csl_lexicon_file: Path) -> None:
    path = write_terms(mined.terms, tmp_path / "terms.txt")
    loaded = load_lexicon(path)
    assert loaded == {t.text: t.count for t in mined.terms}
    keywords = load_lexicon(csl_lexicon_file)
    merged = load_lexicon([csl_lexicon_file, path])
    both = next(t for t in mined.terms if t.text in keywords)
    assert merged[both.text] == keywords[both.text] + both.count and len(merged) == len(set(keywords) | set(loaded))
    table = write_term_table(mined.terms, tmp_path / "terms.tsv").read_text(encoding="utf-8").splitlines()
    assert table[0].split("\t")[:3] == ["rank", "term", "count"] and len(table) == len(mined.terms) + 1
    assert table[1].split("\t")[1] == mined.terms[0].text


def test_config_refuses_what_cannot_work() -> None:
    for bad, option in [(dict(min_count=0), "--min-count"), (dict(max_terms=-1), "--max-terms"),
                        (dict(max_chars=1), "--max-chars"), (dict(min_aligned=1.5), "--min-aligned"),
                        (dict(max_ngrams=10), "--max-ngrams")]:
        with pytest.raises(ValueError, match=option):
            TermMiningConfig(**bad).validate()


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_mine_terms_command(tmp_path: Path, planted_corpus: list[str]) -> None:
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(planted_corpus) + "\n", encoding="utf-8")
    out = tmp_path / "terms.txt"
    proc = _run("launch/mine_terms.py", "--input", str(corpus), "--output", str(out), "--max-terms", "2000",
                "--workers", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lexicon = load_lexicon(out)
    assert len(lexicon) == 2000 and PLANTED in lexicon
    stats = json.loads(out.with_suffix(".stats.json").read_text(encoding="utf-8"))
    assert stats["terms"] == 2000 and stats["sentences"] == len(planted_corpus)
    assert out.with_suffix(".tsv").is_file() and "2000 terms" in proc.stdout
    # A papers file is not a sentence corpus: say what to run instead, exit 2, write nothing.
    papers = tmp_path / "papers.jsonl"
    papers.write_text('{"title": "t", "abstract": "a"}\n', encoding="utf-8")
    bad = _run("launch/mine_terms.py", "--input", str(papers), "--output", str(tmp_path / "x.txt"))
    assert bad.returncode == 2 and "--mine-terms" in bad.stderr and not (tmp_path / "x.txt").exists()
    missing = _run("launch/mine_terms.py", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "x.txt"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    broken = tmp_path / "broken.txt"
    broken.write_bytes("斜拉桥主塔的设计\n".encode() + b"\xff\xfe bad\n")
    undecodable = _run("launch/mine_terms.py", "--input", str(broken), "--output", str(tmp_path / "x.txt"))
    assert undecodable.returncode == 2 and f"{broken}:2: invalid UTF-8" in undecodable.stderr


def test_preprocess_mine_terms_makes_the_lexicon_of_a_corpus_without_keywords(shared_data_dir: Path,
                                                                               tmp_path: Path) -> None:
    """FewCLUE's CSLDCP abstracts carry no keywords: --mine-terms gives them an entity lexicon anyway."""
    out = tmp_path / "corpus"
    proc = _run("launch/preprocess.py", "--input", str(shared_data_dir / "fewclue" / "csldcp" / "train_few_all.json"),
                "--text-fields", "content", "--output", str(out), "--mine-terms", "--workers", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["keywords"]["distinct"] == 0  # no keywords field
    mined = load_lexicon(out / "mined_terms.txt")
    assert stats["mined_terms"]["terms"] == len(mined) > 100
    assert load_lexicon(out / "keywords.txt") == mined  # the lexicon training uses
    assert (out / "mined_terms.tsv").is_file()


def test_terms_benchmark_beats_the_frequency_baseline(shared_data_dir: Path) -> None:
    """The benchmark's own figures on CSL-dev with the keywords hidden (quality only: the speed rows are timing)."""
    import argparse

    from framework.benchmarks import terms
    from framework.evaluation.output import emit

    parser = argparse.ArgumentParser()
    terms.add_arguments(parser)
    args = parser.parse_args(["--data", str(shared_data_dir), "--k", "1000", "5000", "--speed-workers",
                              "--workers", "1"])
    result = terms.run(args)
    at = {q["k"]: q for q in result["quality"]}
    assert result["split_keywords"] > 500 and result["frequent_keywords"] > result["split_keywords"]
    for k in (1000, 5000):
        assert at[k]["miner"]["precision"] > 1.5 * at[k]["baseline"]["precision"]
    assert at[5000]["miner"]["recall_split"] >= 0.6 and result["targets"]["recall_target_met"]
    rendered = terms.tables(result)
    assert "miner precision" in rendered[0][1][0] and len(rendered) == 1  # no speed table without workers
    emit(result, rendered, as_json=False)
