"""Safe loading: no pickle from a checkpoint or model folder is executed.

Each kind of file the framework reads back gets a planted object whose unpickling would run
``touch TARGET`` (``os.system``): the RNG state, DeepSpeed's model states and ZeRO optimizer shards (on resume and
on export), a ``--model`` folder's ``pytorch_model.bin``. The target must never appear, and the error must be one
line naming the file and the offending global, with no traceback at the CLI. The untouched files of real ZeRO-0
(fp32) and ZeRO-2 (bf16) checkpoints must still resume, through the allow-list alone, and RNG states must
round-trip exactly in their new weights-only format.

The DeepSpeed checkpoints are test_export's fixtures, the CLI runs test_pretrain's helpers.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_export import TrainedCheckpoint, zero0, zero2  # noqa: F401 - module fixtures, reused
from test_pretrain import csl_data, run_pretrain, tiny_model_config  # noqa: F401 - module fixtures, reused

from framework.training.checkpoint import CheckpointManager, capture_rng_state
from framework.training.safe_load import UnsafeFileError, load_weights_only

ROOT = Path(__file__).resolve().parents[1]


class Planted:
    """Pickles as ``os.system("touch TARGET")``: what a hostile checkpoint or model file would hold."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {self.target}",))


def plant(path: Path, target: Path) -> None:
    """Add a :class:`Planted` object to the dict that ``path`` holds, in place.

    An attacker who can write the file can rewrite the checkpoint's manifest too (it guards against damage, not
    against intent), so the manifest is brought up to date: the weights-only loading must stop the pickle alone.
    """
    from framework.training.checkpoint import MANIFEST, write_manifest

    obj = load_weights_only(path)
    obj["planted"] = Planted(target)
    torch.save(obj, path)
    if (path.parent / MANIFEST).is_file():
        write_manifest(path.parent)


def assert_refused_in_one_line(message: str, path: Path, target: Path) -> None:
    """The refusal names the file and the global, is a single line, and nothing ran."""
    assert not target.exists(), "the planted pickle was executed"
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert str(path) in message and "posix.system" in message and "refused" in message, message


def assert_refused_at_the_cli(stderr: str, path: Path, target: Path,
                              prefix: str = "launch/pretrain.py: error:") -> None:
    """No traceback anywhere; the last line (after log lines and progress bars) is the one-line refusal."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), stderr[-3000:]
    assert_refused_in_one_line(last, path, target)


def copy_checkpoint(trained: TrainedCheckpoint, tmp_path: Path) -> Path:
    """A private copy of the fixture's tag folder (``tmp/checkpoints/step-00000001``), to plant into."""
    copy = tmp_path / "checkpoints" / trained.tag_dir.name
    shutil.copytree(trained.tag_dir, copy)
    return copy


def draws() -> tuple:
    """The next numbers of Python's, NumPy's and torch's generators (gauss exercises Python's cached value)."""
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(2).tolist(), \
        torch.rand(3).tolist()


# ----------------------------------------------------------------------------------------------------------
# RNG states


def test_rng_state_round_trips_exactly_and_loads_weights_only(tmp_path: Path) -> None:
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    random.gauss(0, 1)  # leaves Python's gauss_next set
    np.random.randn()  # leaves NumPy's cached gaussian set
    torch.save(capture_rng_state(), tmp_path / "rng_state_rank0.pt")
    want = draws()
    draws()  # move every generator on
    CheckpointManager(tmp_path, keep_last=1, rank=0).restore_rng(tmp_path)
    assert draws() == want
    torch.load(tmp_path / "rng_state_rank0.pt", weights_only=True)  # plain torch, no allow-list needed


def test_old_pickle_rng_file_is_refused_with_the_way_out_and_converts(tmp_path: Path) -> None:
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    path = tmp_path / "rng_state_rank0.pt"
    torch.save(legacy, path)  # what rng_state files held before safe loading
    want = draws()
    manager = CheckpointManager(tmp_path, keep_last=1, rank=0)
    with pytest.raises(UnsafeFileError, match="old pickle format.*convert-rng.*delete the file") as err:
        manager.restore_rng(tmp_path)
    assert "\n" not in str(err.value) and "numpy" in str(err.value)

    proc = subprocess.run([sys.executable, "-m", "framework.training.safe_load", "convert-rng", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "converted" in proc.stdout, proc.stderr[-2000:]
    manager.restore_rng(tmp_path)
    assert draws() == want


def test_planted_rng_file_runs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rng_state_rank0.pt"
    torch.save(capture_rng_state(), path)
    target = tmp_path / "PWNED"
    plant(path, target)
    with pytest.raises(UnsafeFileError) as err:
        CheckpointManager(tmp_path, keep_last=1, rank=0).restore_rng(tmp_path)
    assert_refused_in_one_line(str(err.value), path, target)


# ----------------------------------------------------------------------------------------------------------
# DeepSpeed files on resume


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero0", "zero2"])
def test_real_checkpoints_resume_through_the_allow_list(name: str, request: pytest.FixtureRequest) -> None:
    """ZeRO-0 fp32 and ZeRO-2 bf16 (its optimizer shard pickles DeepSpeed classes) load with weights_only=True."""
    from framework.training.safe_load import safe_checkpoint_engine_class

    trained: TrainedCheckpoint = request.getfixturevalue(name)
    before = {k: v.clone() for k, v in trained.engine.module.state_dict().items()}
    state = CheckpointManager(trained.root, keep_last=2, rank=0).load(trained.engine, trained.tag_dir)
    assert state.step == 1
    assert isinstance(trained.engine.checkpoint_engine, safe_checkpoint_engine_class())
    for key, tensor in trained.engine.module.state_dict().items():
        torch.testing.assert_close(tensor, before[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_planted_model_states_are_refused_on_resume(zero0: TrainedCheckpoint, tmp_path: Path) -> None:  # noqa: F811
    tag = copy_checkpoint(zero0, tmp_path)
    target = tmp_path / "PWNED"
    plant(tag / "mp_rank_00_model_states.pt", target)
    with pytest.raises(UnsafeFileError) as err:
        CheckpointManager(tag.parent, keep_last=2, rank=0).load(zero0.engine, tag)
    assert_refused_in_one_line(str(err.value), tag / "mp_rank_00_model_states.pt", target)


@pytest.mark.slow
def test_planted_optimizer_shard_is_refused_on_resume(zero2: TrainedCheckpoint, tmp_path: Path) -> None:  # noqa: F811
    tag = copy_checkpoint(zero2, tmp_path)
    (shard,) = tag.glob("*zero_pp_rank_0_*optim_states.pt")
    target = tmp_path / "PWNED"
    plant(shard, target)
    with pytest.raises(UnsafeFileError) as err:
        CheckpointManager(tag.parent, keep_last=2, rank=0).load(zero2.engine, tag)
    assert_refused_in_one_line(str(err.value), shard, target)


# ----------------------------------------------------------------------------------------------------------
# launch/export.py


def _export_cli():  # noqa: ANN202 - the launch/export.py module
    spec = importlib.util.spec_from_file_location("launch_export", ROOT / "launch" / "export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


@pytest.mark.slow
def test_export_refuses_planted_model_states_and_zero_shards(
    zero0: TrainedCheckpoint, zero2: TrainedCheckpoint, tmp_path: Path, capsys  # noqa: F811, ANN001
) -> None:
    cli = _export_cli()
    tag0 = copy_checkpoint(zero0, tmp_path / "a")
    target = tmp_path / "PWNED"
    plant(tag0 / "mp_rank_00_model_states.pt", target)
    assert cli.main([str(tag0), str(tmp_path / "out0")]) == 2
    assert_refused_at_the_cli(capsys.readouterr().err, tag0 / "mp_rank_00_model_states.pt", target, "error:")

    tag2 = copy_checkpoint(zero2, tmp_path / "b")
    (shard,) = tag2.glob("*zero_pp_rank_0_*optim_states.pt")
    plant(shard, target)  # read by DeepSpeed's zero_to_fp32, inside safe_zero_to_fp32
    assert cli.main([str(tag2), str(tmp_path / "out2")]) == 2
    assert_refused_at_the_cli(capsys.readouterr().err, shard, target, "error:")  # after zero_to_fp32's progress bar
    assert not (tmp_path / "out0" / "model.safetensors").exists() and not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------------------------------------
# --model folders


@pytest.fixture()
def planted_model_dir(tmp_path: Path, tiny_tokenizer_dir: Path) -> tuple[Path, Path]:
    """A tiny BERT folder whose ``pytorch_model.bin`` holds a planted object (no safetensors beside it)."""
    from transformers import AutoTokenizer, BertForMaskedLM

    from framework.training.model import bert_config

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    folder = tmp_path / "model"
    model = BertForMaskedLM(bert_config("tiny", len(tokenizer), tokenizer.pad_token_id))
    model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    target = tmp_path / "PWNED"
    torch.save({**model.state_dict(), "planted": Planted(target)}, folder / "pytorch_model.bin")
    return folder, target


def test_model_folder_with_a_planted_bin_is_refused_everywhere(planted_model_dir: tuple[Path, Path],
                                                               tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from framework.config import ModelConfig
    from framework.evaluation.fill_mask import FillMaskError, load_model
    from framework.evaluation.finetune import load_classifier
    from framework.training.model import build_model

    folder, target = planted_model_dir
    weights = folder / "pytorch_model.bin"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    with pytest.raises(UnsafeFileError) as err:
        build_model(ModelConfig(name_or_path=str(folder)), tokenizer, seed=0)
    assert_refused_in_one_line(str(err.value), weights, target)
    with pytest.raises(FillMaskError) as err:
        load_model(folder, device="cpu")
    assert_refused_in_one_line(str(err.value), weights, target)
    with pytest.raises(FileNotFoundError) as err:
        load_classifier(folder, ["a", "b"])
    assert_refused_in_one_line(str(err.value), weights, target)


# ----------------------------------------------------------------------------------------------------------
# launch/pretrain.py end to end


@pytest.mark.slow
def test_pretrain_cli_refuses_planted_files_in_one_line(csl_data: Path, tiny_model_config: Path,  # noqa: F811
                                                        tiny_tokenizer_dir: Path, planted_model_dir: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """--resume auto with a planted RNG file or model states, and --model with a planted .bin: exit 2, one line."""
    out = tmp_path / "run"

    def args(steps: int) -> list[str]:
        return ["--data", str(csl_data), "--model-config", str(tiny_model_config), "--tokenizer",
                str(tiny_tokenizer_dir), "--output-dir", str(out), "--max-steps", str(steps), "--seq-len", "64",
                "--save-every", "2", "--eval-every", "0", "--keep-last", "1", "--report-to", "none", "--no-export"]

    proc = run_pretrain(args(2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tag = out / "checkpoints" / "step-00000002"
    pristine = tmp_path / "pristine"
    shutil.copytree(tag, pristine)
    target = tmp_path / "PWNED"
    for name in ("rng_state_rank0.pt", "mp_rank_00_model_states.pt"):
        shutil.rmtree(tag)
        shutil.copytree(pristine, tag)
        plant(tag / name, target)
        proc = run_pretrain([*args(4), "--resume", "auto"])
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert_refused_at_the_cli(proc.stderr, tag / name, target)

    folder, target = planted_model_dir
    proc = run_pretrain(["--data", str(csl_data), "--model", str(folder), "--tokenizer", str(tiny_tokenizer_dir),
                         "--output-dir", str(tmp_path / "from-model"), "--max-steps", "2", "--seq-len", "64",
                         "--report-to", "none"])
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_refused_at_the_cli(proc.stderr, folder / "pytorch_model.bin", target)
