"""The run configuration and the DeepSpeed-config resolver: precedence, validation messages, secrets, 'auto'
filling and hardware fallbacks. No engine is started here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.config import DS_CONFIG_DIR, ConfigError, RunConfig, load_run_config, read_yaml_config, redact_secrets
from framework.secrets import REDACTED
from framework.training.deepspeed_config import optimizer_param_groups, resolve_deepspeed_config


@pytest.fixture()
def data_dir(tmp_path: Path, csl_sentences: list[str]) -> Path:
    """A minimal preprocessing output: real CSL sentences in train.txt/valid.txt."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join(csl_sentences[:200]) + "\n", encoding="utf-8")
    (folder / "valid.txt").write_text("\n".join(csl_sentences[200:220]) + "\n", encoding="utf-8")
    return folder


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_arguments_is_the_demo_with_its_preset() -> None:
    cfg = load_run_config([])
    assert cfg.is_demo
    assert cfg.masking.name == "entity_wwm"
    assert cfg.training.max_steps == 300 and cfg.training.eval_every == 50 and cfg.checkpoint.save_every == 100
    assert cfg.checkpoint.output_dir == "runs/demo"
    assert cfg.checkpoint.resume == "auto"  # running the demo twice continues it instead of refusing


def test_demo_preset_never_overrides_what_the_user_set() -> None:
    cfg = load_run_config(["--max-steps", "7", "--eval-every", "3"])
    assert (cfg.training.max_steps, cfg.training.eval_every, cfg.checkpoint.save_every) == (7, 3, 100)
    cfg = load_run_config(["--epochs", "2"])
    assert cfg.training.max_steps is None and cfg.training.epochs == 2


def test_preset_does_not_apply_to_a_real_corpus(data_dir: Path) -> None:
    cfg = load_run_config(["--data", str(data_dir)])
    assert not cfg.is_demo
    assert cfg.training.max_steps is None and cfg.training.eval_every == 200
    assert cfg.checkpoint.resume is None


def test_yaml_then_command_line_precedence(tmp_path: Path, data_dir: Path) -> None:
    path = write_yaml(tmp_path, f"""
data:
  dir: {data_dir}
  seq_len: 64
training:
  lr: 0.001
  seed: 7
masking:
  name: wwm
  args: {{mask_prob: 0.2}}
report:
  tags: [csl, test]
""")
    cfg = load_run_config(["--config", str(path), "--lr", "0.002", "--masking-args", '{"mask_prob": 0.25}'])
    assert cfg.data.seq_len == 64 and cfg.training.seed == 7          # from the file
    assert cfg.training.lr == 0.002                                   # the flag wins
    assert cfg.masking.name == "wwm" and cfg.masking.args == {"mask_prob": 0.25}
    assert cfg.report.tags == ["csl", "test"]


def test_unknown_yaml_key_names_file_line_and_choices(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "training:\n  seed: 1\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        read_yaml_config(path)
    message = str(err.value)
    assert f"{path}:3" in message and "training.lrr" in message and "max_steps" in message


def test_unknown_section_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run.yaml:1: unknown section 'trainer'"):
        read_yaml_config(write_yaml(tmp_path, "trainer:\n  seed: 1\n"))
    with pytest.raises(ConfigError, match=r"run.yaml:2: data.seq_len must be an integer"):
        read_yaml_config(write_yaml(tmp_path, "data:\n  seq_len: long\n"))
    with pytest.raises(ConfigError, match=r"run.yaml:2: not valid YAML"):
        read_yaml_config(write_yaml(tmp_path, "data:\n\tseq_len: 1\n"))  # a tab indent


def test_api_keys_are_refused_and_redacted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never put API keys"):
        read_yaml_config(write_yaml(tmp_path, "report:\n  wandb_api_key: abc123\n"))
    nested = {"report": {"project": "p", "api_key": "abc123"}, "wandb": [{"secret": "s", "n": 1}]}
    assert redact_secrets(nested) == {"report": {"project": "p", "api_key": REDACTED},
                                      "wandb": [{"secret": REDACTED, "n": 1}]}


@pytest.mark.parametrize("argv, fragment", [
    (["--seq-len", "4"], "--seq-len"),
    (["--max-steps", "0"], "--max-steps"),
    (["--model", "./no/such/model", "--model-config", "tiny"], "not both"),
    (["--model-config", "huge"], "tiny, small, base"),
    (["--model", "./no/such/model"], "no such folder"),
    (["--report-to", "mlflow"], "wandb, tensorboard, none"),
    (["--resume", "/no/such/checkpoint"], "--resume auto"),
    (["--deepspeed_config", "/no/such.json"], "2080ti.json"),
    (["--data", "/no/such/data"], "launch/preprocess.py"),
    (["--masking-args", "[1, 2]"], "mapping"),
])
def test_bad_settings_say_what_to_change(argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config(argv)
    assert fragment in str(err.value)


def test_saved_config_round_trips(tmp_path: Path, data_dir: Path) -> None:
    cfg = load_run_config(["--data", str(data_dir), "--seq-len", "96", "--tags", "a,b", "--masking", "span"])
    cfg.save(tmp_path / "ckpt")
    again = read_yaml_config(tmp_path / "ckpt" / "run_config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert json.loads((tmp_path / "ckpt" / "run_config.json").read_text()) == cfg.to_dict()


# ------------------------------------------------------------------------------------------- DeepSpeed configs


def test_saved_resolved_section_is_recorded_and_skipped_by_the_loader(tmp_path: Path, data_dir: Path) -> None:
    """Issue 11 item 4: what a run resolved is saved beside its settings; --config reads the settings alone."""
    cfg = load_run_config(["--data", str(data_dir), "--max-steps", "7"])
    assert "resolved" not in cfg.to_dict()  # nothing resolved yet: nothing printed
    cfg.resolved = {"vocab_size": 1475, "deepspeed": {"train_batch_size": 16}, "packages": {"torch": "2.13"}}
    cfg.save(tmp_path)
    assert json.loads((tmp_path / "run_config.json").read_text())["resolved"]["vocab_size"] == 1475
    again = load_run_config(["--config", str(tmp_path / "run_config.yaml")])
    assert again.resolved == {} and again.training.max_steps == 7
    with pytest.raises(ConfigError, match="the sections are data, model, masking, training, checkpoint, report$"):
        RunConfig.from_dict({"resolve": {}})


def test_shipped_configs_resolve_without_auto_left() -> None:
    training = RunConfig().training
    training.max_steps = 1000
    for name in ("2080ti.json", "multi-gpu.json", "cpu.json"):
        resolved = resolve_deepspeed_config(DS_CONFIG_DIR / name, training, world_size=1, num_train_examples=10_000,
                                            cuda=True, fused_lamb=True)
        assert "auto" not in json.dumps(resolved.config), name
        assert resolved.total_steps == 1000
        sched = resolved.config["scheduler"]["params"]
        assert sched["total_num_steps"] == 1000 and sched["warmup_num_steps"] == 100
        assert sched["warmup_max_lr"] == resolved.config["optimizer"]["params"]["lr"]


def test_2080ti_recipe_on_gpu_keeps_fp16_and_fused_lamb() -> None:
    training = RunConfig().training
    training.max_steps = 100
    resolved = resolve_deepspeed_config(DS_CONFIG_DIR / "2080ti.json", training, 1, 10_000, cuda=True,
                                        fused_lamb=True)
    assert resolved.precision == "fp16" and resolved.config["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    assert resolved.config["optimizer"]["type"] == "Lamb" and resolved.client_optimizer is None
    assert resolved.switches == []
    assert resolved.config["train_batch_size"] == 32 * 8


def test_gpu_without_a_loadable_fused_lamb_keeps_fp16_and_uses_framework_lamb() -> None:
    from framework.training.deepspeed_config import fused_lamb_available

    assert fused_lamb_available() is False  # this machine has no CUDA: the probe must say so, not raise
    training = RunConfig().training
    training.max_steps = 100
    resolved = resolve_deepspeed_config(DS_CONFIG_DIR / "2080ti.json", training, 1, 10_000, cuda=True,
                                        fused_lamb=False)
    assert resolved.precision == "fp16" and "optimizer" not in resolved.config
    assert resolved.client_optimizer is not None and resolved.client_optimizer["lr"] == 2e-4
    assert len(resolved.switches) == 1 and "nvcc" in resolved.switches[0]


def test_2080ti_recipe_on_cpu_switches_to_bf16_and_framework_lamb(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    training = RunConfig().training
    training.max_steps = 100
    resolved = resolve_deepspeed_config(DS_CONFIG_DIR / "2080ti.json", training, 1, 10_000, cuda=False)
    assert resolved.precision == "bf16" and "optimizer" not in resolved.config
    assert resolved.client_optimizer["max_trust_ratio"] == 10.0 and resolved.client_optimizer["min_trust_ratio"] == 0.01
    caplog.set_level("INFO")
    resolved.log_changes()
    fallbacks = [r.getMessage() for r in caplog.records if "hardware fallback" in r.getMessage()]
    assert len(fallbacks) == 2 and "bf16" in fallbacks[0] and "Lamb" in fallbacks[1]
    optimizer = resolved.build_client_optimizer(optimizer_param_groups(torch.nn.Linear(4, 4)))
    from framework.training.lamb import Lamb

    assert isinstance(optimizer, Lamb) and optimizer.param_groups[0]["lr"] == 2e-4
    assert optimizer.param_groups[1]["weight_decay"] == 0.0  # the bias


def test_global_batch_derives_accumulation_from_world_size() -> None:
    training = RunConfig().training
    training.max_steps = 10
    resolved = resolve_deepspeed_config(DS_CONFIG_DIR / "multi-gpu.json", training, 4, 100_000, cuda=True)
    assert resolved.gradient_accumulation_steps == 8 and resolved.zero_stage == 2
    with pytest.raises(ConfigError, match="not a multiple"):
        resolve_deepspeed_config(DS_CONFIG_DIR / "multi-gpu.json", training, 3, 100_000, cuda=True)


def test_run_config_overrides_and_epochs_give_steps() -> None:
    training = RunConfig().training
    training.epochs, training.lr, training.micro_batch_size = 2, 5e-4, 10
    resolved = resolve_deepspeed_config(DS_CONFIG_DIR / "cpu.json", training, 2, 1000, cuda=False)
    assert resolved.total_steps == 2 * (1000 // (10 * 2))
    assert resolved.client_optimizer["lr"] == 5e-4
    assert any("lr=0.0005" in note for note in resolved.overrides)
    training.max_steps, training.warmup_steps = 5, 10
    with pytest.raises(ConfigError, match="warm-up of 10 steps"):
        resolve_deepspeed_config(DS_CONFIG_DIR / "cpu.json", training, 1, 1000, cuda=False)


def test_bad_deepspeed_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{\n  "train_micro_batch_size_per_gpu": 4,\n  "bf16": {"enabled": true,}\n}\n')
    with pytest.raises(ConfigError, match=r"ds.json:3:"):
        resolve_deepspeed_config(path, RunConfig().training, 1, 100, cuda=False)


def test_train_batch_size_that_contradicts_the_geometry_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    training = RunConfig().training
    training.max_steps = 10
    for given, ok in ((64, False), ("auto", True), (32, True)):
        path.write_text(json.dumps({"train_batch_size": given, "train_micro_batch_size_per_gpu": 16,
                                    "gradient_accumulation_steps": 2}))
        if ok:
            assert resolve_deepspeed_config(path, training, 1, 1000, cuda=False).config["train_batch_size"] == 32
            continue
        with pytest.raises(ConfigError, match=r"ds\.json: train_batch_size=64 contradicts micro-batch 16 x "
                                              r"accumulation 2 x 1 rank\(s\) = 32; set train_batch_size to 32"):
            resolve_deepspeed_config(path, training, 1, 1000, cuda=False)
    # The shipped 1024-sequence recipe: --grad-accum 4 on 4 ranks steps on 512, not the file's 1024.
    training.gradient_accumulation_steps = 4
    with pytest.raises(ConfigError, match=r"train_batch_size=1024 contradicts .* = 512"):
        resolve_deepspeed_config(DS_CONFIG_DIR / "multi-gpu.json", training, 4, 100_000, cuda=True)
    assert resolve_deepspeed_config(DS_CONFIG_DIR / "multi-gpu.json", training, 8, 100_000,
                                    cuda=True).gradient_accumulation_steps == 4


def test_configured_secrets_are_scrubbed_from_saved_configs_and_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import logging

    from framework.training.engine import setup_logging

    wandb_key, hf_token = "0123456789abcdef0123456789abcdef01234567", "hf_abcdefghijklmnopqrstuvwxyz"
    monkeypatch.setenv("WANDB_API_KEY", wandb_key)
    monkeypatch.setenv("HF_TOKEN", hf_token)
    monkeypatch.setenv("SECRET_DIR", str(tmp_path))  # a path, not a secret value: saved configs keep paths
    monkeypatch.setenv("SOME_TOKEN", "1")  # too short to scrub from text
    cfg = load_run_config(["--max-steps", "1", "--run-name", f"run-{wandb_key}", "--tags", f"a,{hf_token}",
                           "--output-dir", str(tmp_path / "out")])
    cfg.save(tmp_path / "ckpt")
    for text in ((tmp_path / "ckpt" / "run_config.json").read_text(), (tmp_path / "ckpt" / "run_config.yaml").read_text(),
                 cfg.to_yaml()):
        assert wandb_key not in text and hf_token not in text and REDACTED in text
        assert str(tmp_path / "out") in text
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging(0)
        logging.getLogger("framework.training").info("resolved %s with %s", f"run-{wandb_key}", {"t": hf_token})
        try:
            raise RuntimeError(f"server refused key {wandb_key}")
        except RuntimeError:
            logging.getLogger("framework.training").exception("W&B failed")
        out = capsys.readouterr().out
    finally:
        for handler in root.handlers:
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    assert "resolved run-" + REDACTED in out and "W&B failed" in out and "server refused key " + REDACTED in out
    assert wandb_key not in out and hf_token not in out
