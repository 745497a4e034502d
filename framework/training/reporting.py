"""Where training metrics go: ``metrics.jsonl`` always, plus Weights & Biases or TensorBoard on request.

:class:`MetricsReporter` is the training loop's only view of reporting. On the main rank it appends one JSON
object per record to ``OUTPUT/metrics.jsonl`` (flushed at once, so a killed run keeps everything it logged)
and forwards the same record to the chosen dashboard; on other ranks every method is a no-op.

W&B rules, in order:

* ``WANDB_MODE=disabled`` turns W&B off (metrics still go to ``metrics.jsonl``); ``WANDB_MODE=offline`` forces
  offline mode.
* Otherwise the run goes online only when an API key is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry
  for the W&B host) *and* the host answers a TCP probe within ~2 s. Without the probe, ``wandb.init`` with a
  key but no network blocks for about 100 s and then raises. When either is missing the run is written offline
  under ``OUTPUT/wandb/offline-run-*`` and one log line gives the ``wandb sync`` command to upload it later.
* Any exception from W&B (init, log or finish) is logged as a warning and reporting continues without W&B:
  a dashboard never stops training.
* Secrets never reach the dashboard: :func:`redact_secrets` replaces the values of key-like config entries
  (and any value equal to the configured API key) before the config is sent anywhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from framework.secrets import DEFAULT_WANDB_URL, find_wandb_api_key, wandb_base_url  # noqa: F401 - re-exported
from framework.secrets import redact_secrets as _redact_secrets

logger = logging.getLogger(__name__)

REPORT_TO_CHOICES = ("wandb", "tensorboard", "none")
PROBE_TIMEOUT_S = 2.0

def redact_secrets(config: Any, secret_values: tuple[str, ...] | None = None) -> Any:
    """:func:`framework.secrets.redact_secrets`: by default the values of the configured secrets (the W&B API key
    from the environment or ``~/.netrc`` among them) are scrubbed wherever they appear."""
    return _redact_secrets(config, secret_values)


def wandb_offline_reason(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a W&B run cannot go online here (no API key, or the server does not answer), or None if it can."""
    if not find_wandb_api_key():
        return "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    url = urllib.parse.urlsplit(wandb_base_url())
    host = url.hostname or "api.wandb.ai"
    port = url.port or (80 if url.scheme == "http" else 443)
    probe_host, probe_port = host, port
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        # Behind a proxy the W&B host itself is unreachable by design; the proxy is what must answer.
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        probe_host, probe_port = proxy_url.hostname or probe_host, proxy_url.port or 8080
    if not _can_connect(probe_host, probe_port, timeout_s):
        via = f" via proxy {probe_host}:{probe_port}" if (probe_host, probe_port) != (host, port) else ""
        return f"cannot reach the W&B server {host}:{port}{via} within {timeout_s:g} s"
    return None


def _can_connect(host: str, port: int, timeout_s: float) -> bool:
    """TCP connect test bounded by ``timeout_s`` in total, DNS lookup included.

    ``socket.create_connection``'s timeout does not cover name resolution, which can hang for much longer on
    a machine without network, so the attempt runs in a daemon thread that is abandoned after the deadline.
    """
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=attempt, name="wandb-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(outcome and outcome[0])


class _Backend(Protocol):
    """A dashboard the reporter forwards records to."""

    name: str

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None: ...

    def log_table(self, rows: list[dict[str, Any]], step: int | None) -> None: ...

    def close(self) -> None: ...


class _WandbBackend:
    """A W&B run, online or offline (see the module docstring for how the mode is chosen)."""

    name = "wandb"

    def __init__(
        self,
        output_dir: Path,
        project: str,
        run_name: str | None,
        tags: list[str],
        config: dict[str, Any],
        entity: str | None,
        run_id: str | None,
    ) -> None:
        import wandb  # imported here: a run with --report-to none never pays for it

        self._wandb = wandb
        env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if env_mode in ("offline", "dryrun"):
            mode, reason = "offline", f"WANDB_MODE={env_mode}"
        else:
            reason = wandb_offline_reason()
            mode = "offline" if reason else "online"
        init_kwargs = dict(
            project=project,
            name=run_name,
            tags=list(tags),
            config=config,
            entity=entity,
            dir=str(output_dir),  # wandb adds the "wandb" folder itself
            id=run_id,
            resume="allow" if run_id else None,
        )
        try:
            self.run = wandb.init(mode=mode, **init_kwargs)
        except Exception as err:  # noqa: BLE001 - any W&B failure must leave training running
            if mode == "offline":
                raise
            # The server answered the probe but refused the run (bad key, unknown entity...): keep the data.
            logger.warning("W&B online init failed (%s: %s); writing the run offline instead", type(err).__name__, err)
            mode, reason = "offline", f"online init failed with {type(err).__name__}"
            self.run = wandb.init(mode=mode, **init_kwargs)
        self.offline = mode == "offline"
        self.run_dir = Path(self.run.dir).parent  # run.dir is the run folder's files/ subfolder
        self._splits: set[str] = set()
        self.run.define_metric("step", hidden=True)
        if self.offline:
            logger.info("W&B is offline (%s); upload the run later with: wandb sync %s", reason, self.run_dir)
        else:
            logger.info("W&B run: %s", self.run.url)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Log ``split/name`` values against the optimizer step (not W&B's own counter, which resumes break)."""
        if split not in self._splits:
            self.run.define_metric(f"{split}/*", step_metric="step")
            self._splits.add(split)
        self.run.log({"step": step, **{f"{split}/{k}": v for k, v in metrics.items()}})

    def log_table(self, rows: list[dict[str, Any]], step: int | None) -> None:
        """Log the rows as a W&B Table named ``masked_examples``."""
        columns = _columns(rows)
        table = self._wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])
        self.run.log({"masked_examples": table, **({"step": step} if step is not None else {})})

    def close(self) -> None:
        """Finish the run and, when offline, repeat how to upload it."""
        self.run.finish()
        if self.offline:
            logger.info("W&B offline run saved; upload it with: wandb sync %s", self.run_dir)


class _TensorBoardBackend:
    """A ``torch.utils.tensorboard`` SummaryWriter under ``OUTPUT/tensorboard``."""

    name = "tensorboard"

    def __init__(self, output_dir: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        self.log_dir = output_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        logger.info("TensorBoard logs in %s (view with: tensorboard --logdir %s)", self.log_dir, self.log_dir)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """One scalar per metric, tagged ``split/name``; non-finite values are skipped."""
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"{split}/{name}", value, step)
        self.writer.flush()

    def log_table(self, rows: list[dict[str, Any]], step: int | None) -> None:
        """The rows as a Markdown table in the Text tab."""
        columns = _columns(rows)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
        self.writer.add_text("masked_examples", "\n".join(lines), step or 0)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class MetricsReporter:
    """The training loop's metrics sink: ``metrics.jsonl`` plus an optional W&B or TensorBoard backend.

    Args:
        output_dir: the run's output folder; ``metrics.jsonl``, ``masked_examples.jsonl``, ``wandb/`` and
            ``tensorboard/`` go there.
        report_to: ``"wandb"``, ``"tensorboard"`` or ``"none"`` (jsonl only).
        project, run_name, tags, wandb_entity: the W&B run's identity (ignored by other backends).
        run_config: the run's configuration, sent (redacted by :func:`redact_secrets`) to the dashboard.
        is_main: False on every rank but the main one, where all methods do nothing.
        run_id: optional W&B run id; pass the same id on ``--resume`` to continue the same W&B run.

    A failing backend is dropped with a warning and never interrupts training; ``metrics.jsonl`` is always
    written on the main rank.
    """

    def __init__(
        self,
        output_dir: Path,
        report_to: str,
        project: str,
        run_name: str | None,
        tags: list[str],
        run_config: dict[str, Any],
        is_main: bool,
        wandb_entity: str | None = None,
        run_id: str | None = None,
    ) -> None:
        if report_to not in REPORT_TO_CHOICES:
            raise ValueError(f"report_to must be one of {', '.join(REPORT_TO_CHOICES)}; got {report_to!r}")
        self.output_dir = Path(output_dir)
        self.report_to = report_to
        self.is_main = is_main
        self.backend: _Backend | None = None
        self._jsonl: TextIO | None = None
        if not is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.examples_path = self.output_dir / "masked_examples.jsonl"
        # Append: a resumed run continues the same file (plot.py keeps the newest record of each step).
        self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        config = redact_secrets(dict(run_config))
        if report_to == "wandb" and os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
            logger.info("WANDB_MODE=disabled: W&B is off for this run; metrics go to %s only", self.metrics_path)
        elif report_to == "wandb":
            self.backend = self._start("W&B", lambda: _WandbBackend(
                self.output_dir, project, run_name, tags, config, wandb_entity, run_id))
        elif report_to == "tensorboard":
            self.backend = self._start("TensorBoard", lambda: _TensorBoardBackend(self.output_dir, config))

    @staticmethod
    def _start(label: str, factory: Callable[[], _Backend]) -> _Backend | None:
        """Build a backend, or return None with one warning saying why and what to do."""
        try:
            return factory()
        except ImportError as err:
            package = "tensorboard" if label == "TensorBoard" else "wandb"
            logger.warning(
                "%s reporting needs the %s package (%s); install it with `pip install %s` "
                "(or `pip install -e .[dev]`). Continuing with metrics.jsonl only.", label, package, err, package)
        except Exception as err:  # noqa: BLE001 - a dashboard must never stop training
            logger.warning("%s could not start (%s: %s); continuing with metrics.jsonl only",
                           label, type(err).__name__, err)
        return None

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Record ``metrics`` for ``split`` (``train`` or ``valid``) at optimizer step ``step``.

        Values must be numbers (0-dim tensors are accepted); non-finite values are written to the jsonl as
        ``null`` so that the file stays strict JSON.
        """
        if not self.is_main:
            return
        values = {str(k): _number(k, v) for k, v in metrics.items()}
        record = {"step": int(step), "split": split, **values, "wall_time": round(time.time(), 3)}
        self._jsonl.write(json.dumps(_finite_or_none(record), ensure_ascii=False, allow_nan=False) + "\n")
        self._jsonl.flush()
        self._forward("log", int(step), split, values)

    def log_masked_examples(self, rows: list[dict[str, Any]], step: int | None = None) -> None:
        """Record masked example sentences (keys such as ``original``, ``masked``, ``predictions``).

        They go to ``masked_examples.jsonl`` and to the dashboard (a W&B Table, or a TensorBoard text table).
        """
        if not self.is_main or not rows:
            return
        with open(self.examples_path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **{k: _cell(v) for k, v in row.items()}}, ensure_ascii=False) + "\n")
        self._forward("log_table", rows, step)

    def _forward(self, method: str, *args: Any) -> None:
        """Call the backend; on any exception warn once and drop it for the rest of the run."""
        if self.backend is None:
            return
        try:
            getattr(self.backend, method)(*args)
        except Exception as err:  # noqa: BLE001 - a dashboard must never stop training
            logger.warning("%s failed in %s (%s: %s); continuing without it, metrics.jsonl is unaffected",
                           self.backend.name, method, type(err).__name__, err)
            self.backend = None

    def close(self) -> None:
        """Finish the dashboard run and close the files; safe to call twice."""
        if self.backend is not None:
            backend, self.backend = self.backend, None
            try:
                backend.close()
            except Exception as err:  # noqa: BLE001 - a dashboard must never stop training
                logger.warning("%s failed to finish (%s: %s)", backend.name, type(err).__name__, err)
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> "MetricsReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _number(name: Any, value: Any) -> float | int:
    """A metric value as a Python number; a clear TypeError for anything else."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()  # 0-dim torch tensor or numpy scalar
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}")
    return value


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf by None: strict JSON has no such numbers."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row))


def _cell(value: Any) -> str:
    """A table cell: lists (e.g. top-k predictions) joined, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)
