"""What a newcomer sees on the console: fast ``--help`` everywhere (no torch before parsing), one log format,
DeepSpeed's start-up chatter dropped unless ``--verbose``, log lines above the progress bar, the
``--deepspeed-config`` spelling, the strategy names in ``pretrain --help``, and no ``model None`` after
``--no-export``."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from framework import console
from framework.config import build_parser, load_run_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = sorted((ROOT / "launch").glob("*.py"))
HEAVY = ("torch", "transformers", "deepspeed")


@pytest.mark.parametrize("script", LAUNCH, ids=lambda p: p.name)
def test_help_imports_nothing_heavy(script: Path) -> None:
    code = (
        f"import runpy, sys\nsys.argv = [{str(script)!r}, '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_pretrain_help_lists_strategies_and_flags() -> None:
    text = build_parser().format_help()
    for name in ("token", "wwm", "entity_wwm", "span", "ngram"):
        assert re.search(rf"\b{name}\b", text), name
    assert "--deepspeed-config" in text and "--verbose" in text


def test_deepspeed_config_alias_and_verbose_flag() -> None:
    cfg = load_run_config(["--deepspeed-config", str(ROOT / "ds_configs" / "cpu.json"), "--verbose"])
    assert cfg.training.deepspeed_config == str(ROOT / "ds_configs" / "cpu.json")
    assert "verbose" not in cfg.to_yaml()  # console only: not part of the saved run


def test_deepspeed_noise_is_dropped_unless_verbose() -> None:
    ds_logger = logging.getLogger("DeepSpeed")
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    ds_logger.addHandler(handler)
    try:
        console.quiet_deepspeed(verbose=False)
        ds_logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        ds_logger.warning("Attempting to get learning rate from scheduler before it has started")
        ds_logger.warning("a real DeepSpeed warning")
        printed = io.StringIO()
        with redirect_stdout(printed), console.drop_printed_noise():
            print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
            print("kept")
        assert seen.getvalue() == "a real DeepSpeed warning\n" and printed.getvalue() == "kept\n"
        assert not logging.getLogger("compilers.C.base").isEnabledFor(logging.INFO)  # gcc test-compile lines
        console.quiet_deepspeed(verbose=True)
        ds_logger.warning("Setting accelerator to CPU.")
        assert "Setting accelerator" in seen.getvalue()
    finally:
        console.quiet_deepspeed(verbose=False)
        ds_logger.removeHandler(handler)


def test_training_loop_logs_above_the_progress_bar() -> None:
    from tqdm.contrib.logging import _TqdmLoggingHandler

    from framework.training.trainer import _Loop

    assert hasattr(_Loop.run, "__wrapped__")  # decorated with logs_above_progress_bars
    console.configure_logging(logging.INFO, stream=sys.stdout)
    inside = console.logs_above_progress_bars(lambda: [type(h) for h in logging.getLogger().handlers])()
    assert _TqdmLoggingHandler in inside
    assert _TqdmLoggingHandler not in [type(h) for h in logging.getLogger().handlers]  # restored afterwards


def test_preprocess_logs_in_the_pretrain_format(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "preprocess.py"), "--output", str(tmp_path / "o"),
                           "--workers", "1", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [line for line in done.stderr.splitlines() if " INFO " in line]
    assert records and all(re.match(r"\d\d:\d\d:\d\d INFO framework\.", line) for line in records), records


def test_no_export_prints_no_model_none(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                        tmp_path: Path) -> None:
    import importlib.util

    from framework.training import trainer

    def fake_run(cfg):  # noqa: ANN001, ANN202 - stands in for a finished --no-export run
        return trainer.RunResult(output_dir=tmp_path, steps=3, checkpoint=tmp_path / "checkpoints" / "step-3",
                                 exported_model=None, loss_plot=tmp_path / "loss.png")

    monkeypatch.setattr(trainer, "run_pretraining", fake_run)
    spec = importlib.util.spec_from_file_location("launch_pretrain", ROOT / "launch" / "pretrain.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    import torch.distributed as dist

    from framework.training.distributed import init_distributed

    init_distributed()  # the caller's group, as the test session's in-process engines share one
    assert cli.main(["--no-export", "--output-dir", str(tmp_path)]) == 0
    # main() run in-process leaves the caller's process group alone (the script's own exit path tears down
    # the group it made): destroying it here once broke every later in-process engine of the test session.
    assert dist.is_initialized()
    out = capsys.readouterr().out
    assert "done: 3 steps" in out and "model None" not in out and "model " not in out
