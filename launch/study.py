"""The masking-strategy study: pretrain with each strategy and seed, evaluate, fine-tune, report.

    python launch/study.py --config studies/cpu.yaml            # run what is unfinished, then write the report
    python launch/study.py --config studies/cpu.yaml --max-runs 2   # fit a sitting: work on 2 pretraining runs
    OMP_NUM_THREADS=1 python launch/study.py --config studies/cpu.yaml --runs token-seed1,wwm-seed1 &  # two workers
    python launch/study.py --config studies/cpu.yaml --report-only  # just rewrite docs/results.md and the plots

Finished stages are kept in the config's ``results_dir`` and skipped, so the study resumes where it stopped.
See docs/evaluation.md ("The masking study").
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    """Run the unfinished stages (unless ``--report-only``) and write the report."""
    p = argparse.ArgumentParser(prog="launch/study.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="study YAML (studies/cpu.yaml, studies/gpu.yaml)")
    p.add_argument("--max-runs", type=int, default=None, help="work on at most N pretraining runs this time")
    p.add_argument("--runs", default=None,
                   help="comma-separated runs to work on (e.g. token-seed2,wwm-seed1), to split the study between "
                        "workers; default all")
    p.add_argument("--stages", default="pretrain,evaluate,finetune",
                   help="comma-separated stages to run this time (default all)")
    p.add_argument("--report-only", action="store_true", help="only write the report from finished stages")
    p.add_argument("--drop-checkpoints", action="store_true",
                   help="delete a run's checkpoints once all its stages are done (its exported model is kept)")
    args = p.parse_args(argv)
    from framework.console import configure_logging

    configure_logging(logging.INFO, stream=sys.stderr)
    from framework.evaluation.study import STAGES, StudyError, StudyConfig, run_study, write_report

    try:
        cfg = StudyConfig.from_yaml(args.config)
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        if set(stages) - set(STAGES):
            raise StudyError(f"--stages {args.stages}: use some of {', '.join(STAGES)}")
        outcome = None if args.report_only else run_study(cfg, stages, args.max_runs,
                                                          keep_models=not args.drop_checkpoints,
                                                          runs=None if args.runs is None else
                                                          [r.strip() for r in args.runs.split(",") if r.strip()])
    except StudyError as exc:
        print(f"launch/study.py: {exc}", file=sys.stderr)
        return 2
    command = f"python3 launch/study.py --config {args.config}"
    report = write_report(cfg, command)
    if outcome is not None:
        print(f"this sitting: {len(outcome['done'])} stages done in {outcome['seconds']:.0f} s"
              + (f"; {len(outcome['failed'])} failed:\n  " + "\n  ".join(outcome["failed"]) if outcome["failed"] else ""))
    print(f"report: {report}")
    return 1 if outcome is not None and outcome["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
