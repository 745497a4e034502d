"""Two CPU ranks under the ``deepspeed`` launcher: ZeRO stages 0, 1 and 2 train, rank 0 alone logs, exports and
plots, a ZeRO-2 checkpoint exports to the same weights, and a run stopped and resumed with ``--resume auto``
reproduces an uninterrupted run's losses and gradient norms exactly.

Two simulated nodes: two plain ``python`` processes that are each local rank 0 of a node of their own, sharing the
output and data folders as on a cluster filesystem, segment, train, checkpoint, resume exactly and export, and a
per-process log of every file written (``tests/write_audit``) shows that no file is written by both and that the
second node writes only its own rank's files.

Exactness on CPU needs a fixed number of intra-op threads per rank (``OMP_NUM_THREADS=1`` here): oneDNN's
reduction order depends on it when two ranks share the cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.training.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "launch" / "pretrain.py"

pytestmark = pytest.mark.slow


def run_two_ranks(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus 2 launch/pretrain.py ARGS`` (two CPU ranks on this machine)."""
    launcher = shutil.which("deepspeed")
    cmd = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([*cmd, "--num_gpus", "2", "--master_port", str(free_port()), str(PRETRAIN), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def by_step(output_dir: Path) -> dict[tuple[int, str], dict]:
    """The metrics records keyed by (step, split); a resumed run's record replaces the earlier one."""
    records: dict[tuple[int, str], dict] = {}
    with open(output_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            records[(r["step"], r["split"])] = r
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, csl_jsonl: Path, tiny_tokenizer_dir: Path) -> dict[str, Path]:
    """CSL data, a hidden-64 model config and DeepSpeed configs for ZeRO 0/1/2 with a fixed 8-step schedule."""
    from framework.data.corpus import PreprocessConfig, preprocess

    root = tmp_path_factory.mktemp("distributed")
    preprocess(PreprocessConfig(inputs=[csl_jsonl], output=root / "data", workers=1, valid_fraction=0.05,
                                overwrite=True, progress=False))
    model_config = root / "model.json"
    model_config.write_text(json.dumps({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                                        "num_attention_heads": 2, "intermediate_size": 128,
                                        "max_position_embeddings": 128}))
    paths = {"data": root / "data", "model_config": model_config, "tokenizer": tiny_tokenizer_dir, "root": root}
    base = json.loads((ROOT / "ds_configs" / "cpu.json").read_text())
    for stage in (0, 1, 2):
        cfg = json.loads(json.dumps(base))
        cfg["train_micro_batch_size_per_gpu"] = 8
        cfg["zero_optimization"] = {"stage": stage}
        # An explicit schedule: a run stopped at step 4 follows the same learning rates as one run to step 8.
        cfg["scheduler"]["params"].update(warmup_num_steps=2, total_num_steps=8)
        paths[f"zero{stage}"] = root / f"zero{stage}.json"
        paths[f"zero{stage}"].write_text(json.dumps(cfg))
    return paths


def common_args(setup: dict[str, Path], stage: int, output_dir: Path, steps: int) -> list[str]:
    return ["--deepspeed_config", str(setup[f"zero{stage}"]), "--data", str(setup["data"]),
            "--model-config", str(setup["model_config"]), "--tokenizer", str(setup["tokenizer"]),
            "--output-dir", str(output_dir), "--max-steps", str(steps), "--seq-len", "64", "--log-every", "1",
            "--eval-every", "4", "--save-every", "4", "--max-eval-examples", "64", "--seed", "5"]


@pytest.fixture(scope="module")
def zero2_straight(setup: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted 8-step ZeRO-2 run on two ranks."""
    out = setup["root"] / "zero2-straight"
    return out, run_two_ranks(common_args(setup, 2, out, 8))


def check_two_rank_run(out: Path, proc: subprocess.CompletedProcess, stage: int, steps: int) -> None:
    """Rank 0 alone logged, exported and plotted; ZeRO shards came from both ranks."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    train_steps = [json.loads(x)["step"] for x in lines if '"train"' in x]
    assert train_steps == list(range(1, steps + 1)), "every step logged exactly once (rank 0 only)"
    assert "2 rank(s) x micro-batch 8" in proc.stdout
    assert proc.stdout.count("run configuration:") == 1
    assert sum("hardware fallback" in line for line in proc.stdout.splitlines()) == 1
    assert sum("exported a transformers model" in line for line in proc.stdout.splitlines()) == 1
    assert (out / "model" / "model.safetensors").is_file() and (out / "loss.png").is_file()
    final = out / "checkpoints" / f"step-{steps:08d}"
    assert (final / "COMPLETE").is_file()
    assert {p.name for p in final.glob("rng_state_rank*.pt")} == {"rng_state_rank0.pt", "rng_state_rank1.pt"}
    shards = sorted(p.name for p in final.glob("*zero_pp_rank_*optim_states.pt"))
    assert len(shards) == (2 if stage > 0 else 0), shards


@pytest.mark.parametrize("stage", [0, 1])
def test_two_ranks_train_with_zero_stage(setup: dict[str, Path], stage: int) -> None:
    out = setup["root"] / f"zero{stage}-run"
    accumulation = stage + 1  # stage 1 also exercises gradient accumulation across two micro-batches
    proc = run_two_ranks([*common_args(setup, stage, out, 4), "--grad-accum", str(accumulation)])
    check_two_rank_run(out, proc, stage, 4)
    assert f"ZeRO-{stage}, 2 rank(s) x micro-batch 8 x accumulation {accumulation}" in proc.stdout


def test_two_ranks_train_with_zero2_and_checkpoint_exports(setup: dict[str, Path], zero2_straight,  # noqa: ANN001
                                                           tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    out, proc = zero2_straight
    check_two_rank_run(out, proc, 2, 8)
    exported = subprocess.run([sys.executable, str(ROOT / "launch" / "export.py"),
                               str(out / "checkpoints" / "step-00000008"), str(tmp_path / "from-ckpt")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr[-3000:]
    live = load_file(out / "model" / "model.safetensors")
    from_checkpoint = load_file(tmp_path / "from-ckpt" / "model.safetensors")
    assert live.keys() == from_checkpoint.keys()
    for name, tensor in live.items():
        # The live module holds bf16 weights; the ZeRO checkpoint holds their fp32 masters.
        torch.testing.assert_close(from_checkpoint[name], tensor, rtol=1e-2, atol=1e-2, msg=name)


def test_stop_and_resume_auto_matches_an_uninterrupted_run(setup: dict[str, Path], zero2_straight) -> None:  # noqa: ANN001
    straight_out, _ = zero2_straight
    out = setup["root"] / "zero2-resumed"
    run_two_ranks(common_args(setup, 2, out, 4))
    # A save that crashed halfway (no COMPLETE marker) must be ignored by --resume auto.
    crashed = out / "checkpoints" / "step-00000006"
    crashed.mkdir()
    (crashed / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    proc = run_two_ranks([*common_args(setup, 2, out, 8), "--resume", "auto"])
    assert "resumed from" in proc.stdout and "step-00000004" in proc.stdout

    straight, resumed = by_step(straight_out), by_step(out)
    assert straight.keys() == resumed.keys()
    for key, record in sorted(straight.items()):
        for metric in ("loss", "grad_norm", "lr", "masked_accuracy", "entity_accuracy"):
            if metric in record:
                assert resumed[key][metric] == record[metric], (key, metric)
    assert not crashed.exists(), "the interrupted save is pruned at the next checkpoint"


# --------------------------------------------------------------------------------------------- two nodes, simulated

WRITE_AUDIT = Path(__file__).resolve().parent / "write_audit"  # its sitecustomize logs every file a process writes
# What node 1 (global rank 1) may write into the shared folders: its own RNG state and ZeRO shard, and the probes
# with unique names that check a folder is writable. Anything else (a config, a cache, a metric, a vocabulary, an
# export) belongs to global rank 0 alone.
NODE1_MAY_WRITE = re.compile(r"^(rng_state_rank1\.pt|(bf16_)?zero_pp_rank_1_mp_rank_00_optim_states\.pt"
                             r"|\.write-test-.*)$")


def run_two_nodes(args: list[str], logs: Path, timeout: float = 300) -> list[str]:
    """Two plain ``python launch/pretrain.py ARGS`` processes that each believe they are local rank 0 of their own
    node (``NODE_RANK`` 0/1, ``LOCAL_RANK`` 0, ``LOCAL_WORLD_SIZE`` 1, ``RANK`` 0/1, ``WORLD_SIZE`` 2), as a cluster
    launcher starts one process per node; returns their outputs (stdout and stderr together), node 0 first.

    Each process's writes are logged to ``logs/nodeN.writes.jsonl`` (tests/write_audit/sitecustomize.py). Output
    goes to files, not pipes: a process blocked on a full pipe would stall its peer in a collective. When one node
    fails the other is killed (it would wait in a collective until gloo's timeout).
    """
    logs.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    procs, outputs = [], []
    for node in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE")}
        env.update(OMP_NUM_THREADS="1", NODE_RANK=str(node), RANK=str(node), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(WRITE_AUDIT), os.environ.get("PYTHONPATH")])),
                   WRITE_AUDIT_LOG=str(logs / f"node{node}.writes.jsonl"))
        (logs / f"node{node}.writes.jsonl").unlink(missing_ok=True)
        out = open(logs / f"node{node}.out", "w", encoding="utf-8")  # noqa: SIM115 - closed below
        outputs.append(out)
        procs.append(subprocess.Popen([sys.executable, str(PRETRAIN), *args], cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.returncode not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                break
            time.sleep(0.5)
    finally:
        for out in outputs:
            out.close()
    texts = [(logs / f"node{node}.out").read_text(encoding="utf-8") for node in (0, 1)]
    for node, (proc, text) in enumerate(zip(procs, texts)):
        assert proc.returncode == 0, f"node {node} exited with {proc.returncode}:\n{text[-4000:]}\n" + "\n".join(
            f"--- node {n}:\n{t[-3000:]}" for n, t in enumerate(texts) if n != node)
    return texts


def writes_under(log: Path, roots: list[Path]) -> dict[Path, set[str]]:
    """The files a process wrote, renamed into place or removed under ``roots``, with what it did to each."""
    found: dict[Path, set[str]] = {}
    resolved = [r.resolve() for r in roots]
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        path = Path(entry["path"]).resolve()
        if entry["event"] != "rename-from" and any(path.is_relative_to(r) for r in resolved):
            found.setdefault(path, set()).add(entry["event"])
    return found


def check_one_writer(logs: Path, roots: list[Path]) -> dict[Path, set[str]]:
    """No file under ``roots`` was written by both nodes, and node 1 wrote only its own rank's files; returns
    node 0's writes."""
    node0, node1 = (writes_under(logs / f"node{n}.writes.jsonl", roots) for n in (0, 1))
    both = sorted(set(node0) & set(node1))
    assert not both, f"written by both nodes: {[str(p) for p in both]}"
    foreign = sorted(str(p) for p in node1 if not NODE1_MAY_WRITE.match(p.name))
    assert not foreign, f"node 1 (global rank 1) wrote files that global rank 0 owns: {foreign}"
    assert any(p.name == "rng_state_rank1.pt" for p in node1), "the write audit saw none of node 1's torch.save calls"
    return node0


@pytest.fixture(scope="module")
def two_nodes(setup: dict[str, Path]) -> dict[str, Path]:
    """A fresh copy of the CSL corpus (no segmented cache yet) and an 8-step ZeRO-2 run of two simulated nodes
    that builds its tokenizer from the corpus: the folders both nodes share, as on a cluster filesystem."""
    root = setup["root"] / "two-nodes"
    data = root / "data"
    data.mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "keywords.txt", "stats.json"):
        if (setup["data"] / name).is_file():
            shutil.copy2(setup["data"] / name, data / name)
    out = root / "run"
    args = two_node_args(setup, data, out)
    outputs = run_two_nodes(args, root / "logs-first")
    return {"root": root, "data": data, "out": out, "logs": root / "logs-first", "node0": outputs[0],
            "node1": outputs[1]}


def two_node_args(setup: dict[str, Path], data: Path, out: Path) -> list[str]:
    """Like :func:`common_args` with ZeRO-2, but no ``--tokenizer``: global rank 0 builds one from the corpus."""
    args = common_args(setup, 2, out, 8)
    i = args.index("--tokenizer")
    del args[i:i + 2]
    args[args.index("--data") + 1] = str(data)
    return [*args, "--vocab-size", "2000", "--keep-last", "3"]


def test_two_nodes_share_the_output_folder_and_write_each_file_once(two_nodes: dict[str, Path]) -> None:
    from framework.training.checkpoint import verify_checkpoint

    out, data = two_nodes["out"], two_nodes["data"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if '"train"' in x] == list(range(1, 9))
    assert "2 rank(s) x micro-batch 8" in two_nodes["node0"]
    assert "run configuration:" in two_nodes["node0"] and "run configuration:" not in two_nodes["node1"]
    for step in (4, 8):
        folder = out / "checkpoints" / f"step-{step:08d}"
        assert verify_checkpoint(folder) is None, verify_checkpoint(folder)
        assert {p.name for p in folder.glob("rng_state_rank*.pt")} == {"rng_state_rank0.pt", "rng_state_rank1.pt"}
        assert len(list(folder.glob("*zero_pp_rank_*optim_states.pt"))) == 2
    assert not list((out / "checkpoints").glob(".saving-*")), "a staging folder was left behind"
    assert (out / "model" / "model.safetensors").is_file() and (out / "loss.png").is_file()
    caches = [p for p in (data / "segmented").iterdir()]
    assert len(caches) == 2 and all((p / "meta.json").is_file() for p in caches), caches  # train and valid

    node0 = check_one_writer(two_nodes["logs"], [out, data])
    # The audit saw global rank 0 write each kind of shared file, so their absence from node 1's log means something.
    names = {p.name for p in node0}
    for expected in ("run_config.yaml", "metrics.jsonl", "vocab.txt", "meta.json", "MANIFEST.json", "COMPLETE",
                     "mp_rank_00_model_states.pt", "rng_state_rank0.pt", "config.json", "latest"):
        assert expected in names, f"the write audit missed global rank 0 writing {expected}"


def test_two_nodes_resume_auto_continues_exactly_and_exports(setup: dict[str, Path], two_nodes: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """A copy of the run stopped after its step-4 checkpoint (later files removed) resumed with ``--resume auto`` by
    both nodes reproduces the uninterrupted run's steps 5-8; its final checkpoint exports to the live weights."""
    import torch
    from safetensors.torch import load_file

    from framework.training.checkpoint import verify_checkpoint

    straight = two_nodes["out"]
    out = two_nodes["root"] / "resumed"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "checkpoints" / "step-00000008")
    shutil.rmtree(out / "model")
    (out / "loss.png").unlink()
    kept = [x for x in (out / "metrics.jsonl").read_text().splitlines() if json.loads(x)["step"] <= 4]
    (out / "metrics.jsonl").write_text("".join(x + "\n" for x in kept))

    proc_outputs = run_two_nodes([*two_node_args(setup, two_nodes["data"], out), "--resume", "auto"],
                                 two_nodes["root"] / "logs-resumed")
    assert "resumed from" in proc_outputs[0] and "step-00000004" in proc_outputs[0]
    check_one_writer(two_nodes["root"] / "logs-resumed", [out, two_nodes["data"]])

    uninterrupted, resumed = by_step(straight), by_step(out)
    assert uninterrupted.keys() == resumed.keys()
    for key, record in sorted(uninterrupted.items()):
        for metric in ("loss", "grad_norm", "lr", "masked_accuracy", "entity_accuracy"):
            if metric in record:
                assert resumed[key][metric] == record[metric], (key, metric)
    final = out / "checkpoints" / "step-00000008"
    assert verify_checkpoint(final) is None, verify_checkpoint(final)

    exported = subprocess.run([sys.executable, str(ROOT / "launch" / "export.py"), str(final), str(tmp_path / "m")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr[-3000:]
    live = load_file(out / "model" / "model.safetensors")
    from_checkpoint = load_file(tmp_path / "m" / "model.safetensors")
    assert live.keys() == from_checkpoint.keys()
    for name, tensor in live.items():  # the live module holds bf16 weights, the ZeRO checkpoint their fp32 masters
        torch.testing.assert_close(from_checkpoint[name], tensor, rtol=1e-2, atol=1e-2, msg=name)


_COLLECTIVES_SCRIPT = r"""
import os, sys
from pathlib import Path
import torch.distributed as dist
from framework.config import ConfigError
from framework.training.distributed import check_shared_folder, rank0_decides, shutdown_distributed

rank, root = int(os.environ["RANK"]), Path(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2)
ran = []
assert rank0_decides(rank, lambda: ran.append(rank) or "rank 0's answer") == "rank 0's answer"
assert ran == ([0] if rank == 0 else []), ran  # the others never run the action

def fail():
    raise FileNotFoundError("corpus x.txt does not exist")

try:
    rank0_decides(rank, fail)
except FileNotFoundError as exc:
    print(f"rank {rank} raised: {exc}", flush=True)
check_shared_folder(root, rank, "--output-dir")  # one folder both see: passes
local = root / f"node{rank}"  # a "node-local" folder: each rank has its own
local.mkdir()
try:
    check_shared_folder(local, rank, "--output-dir", timeout_s=0.5)
except ConfigError as exc:
    print(f"rank {rank} refused: {exc}", flush=True)
assert sorted(p.name for p in root.iterdir()) == ["node0", "node1"], "the probes are removed"
# Leave together: a rank that exits while its peer still holds the gloo connection can abort the peer
# ("terminate called without an active exception", status -6), as CI once saw.
shutdown_distributed()
"""


def test_rank0_decides_for_all_and_a_node_local_output_folder_is_refused(tmp_path: Path) -> None:
    """Two gloo ranks: :func:`rank0_decides` runs its action on rank 0 alone and raises rank 0's exception on
    both (no rank left waiting in a collective); :func:`check_shared_folder` passes a folder both ranks see and
    refuses, on both ranks, folders that differ per rank as node-local disks would."""
    port, procs = str(free_port()), []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        procs.append(subprocess.Popen([sys.executable, "-c", _COLLECTIVES_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=120)[0] for p in procs]  # a few lines each: no pipe fills up
    for rank, (proc, text) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, text[-3000:]
        assert f"rank {rank} raised: corpus x.txt does not exist" in text
        assert f"rank {rank} refused: --output-dir {tmp_path / f'node{rank}'} is not shared between the nodes" in text
        assert "rank(s) 1 (host" in text
