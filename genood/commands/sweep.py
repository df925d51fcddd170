"""Sweeps over a grid of runs from a dysweep-format meta-configuration.

    python sweep.py create --config meta_configurations/ood/<x>.yaml [--backend local|wandb] [--force]
    python sweep.py agent <sweep-id> [--gpu IDX] [--count N]       (./meta_run_*.sh wrap this)
    python sweep.py launch <sweep-id> --slurm --agents N [--gpus-per-agent 1] [--partition P] [--time MIN] [--mem GB]
    python sweep.py launch <sweep-id> --local --agents N [--wait]   (the same job array on this machine)
    python sweep.py status <sweep-id>
    python sweep.py rerun <sweep-id> [--failed | RUN_NAME]
    python sweep.py aggregate <sweep-id> [<sweep-id> ...]   (pivot with intervals, CSV/Markdown, report.html, heatmap)
    python sweep.py report <sweep-id> [<sweep-id> ...]      (only the self-contained report.html)
    python sweep.py report <sweep-id> --wandb                (a W&B Report of the sweep instead)

Several sweep ids put their runs in one table (e.g. one sweep per model family, compared side by side);
the outputs then go to <runs_root>/<id1>+<id2>+....
    python sweep.py list

`create` prints the sweep id as its last line; it is the drop-in for `dysweep_create --config X`.
Local sweep ids start with 'local-' and live in <runs_root>/sweeps.sqlite; W&B ids look like
'entity/project/abc123'.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

from genood import entrypoint
from genood.paths import PROJECT_ROOT

ROOT = PROJECT_ROOT


def _runs_root(arg) -> Path:
    raw = arg or os.environ.get("OOD_RUNS_ROOT") or "runs"
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else (ROOT / path)
    from genood import rundir
    rundir.allow_writes(path)  # typed by the user (or OOD_RUNS_ROOT): where this command's files go
    return path


def _open_store(runs_root: Path, store: str = None):
    """The sweep store: ``--store`` / ``$OOD_SWEEP_STORE`` (a postgresql:// URL, for many hosts) or <runs_root>/sweeps.sqlite."""
    from genood.orchestration.store import open_store, store_locator
    return open_store(store_locator(runs_root, store), runs_root=runs_root)


def _local_sweep(store, sweep_id: str):
    from genood.orchestration.sweep_runs import local_sweep
    return local_sweep(store, sweep_id)


def cmd_create(args) -> None:
    from genood.orchestration import metaconfig
    meta = metaconfig.load(args.config)
    runs_root = _runs_root(args.runs_root)
    specs = metaconfig.expand(meta)  # validates every run before anything is queued
    backend = args.backend
    if backend is None:
        from genood.orchestration import wandb_backend
        from genood.tracking import has_login
        backend = "wandb" if (has_login() and meta.entity and wandb_backend.reachable()) else "local"
        print(f"backend: {backend} ({'W&B login and entity found' if backend == 'wandb' else 'no W&B login/entity reachable; the embedded local backend'})",
              file=sys.stderr)
    if backend == "wandb":
        from genood.orchestration import wandb_backend
        rel = os.path.relpath(Path(args.config).resolve(), ROOT)
        print(f"grid: {len(specs)} runs ({meta.method}); axes: {metaconfig.describe_axes(meta)}", file=sys.stderr)
        print(wandb_backend.create(meta, rel))
        return
    from genood.orchestration.store import new_sweep_id
    store = _open_store(runs_root, args.store)
    sweep_id = new_sweep_id()
    rows = []
    for spec in specs if meta.method == "grid" else []:  # random/bayes: proposed one at a time as agents ask
        cfg = dict(spec.config)
        cfg["run"] = dict(cfg["run"], runs_root=str(runs_root), sweep_id=sweep_id, name=spec.name)
        rows.append({"name": spec.name, "params": spec.params, "digest": spec.digest, "config": cfg})
    sweep_id, queued, reused = store.create_sweep(
        sweep_id, name=meta.raw.get("sweep_name") or Path(args.config).stem, job=meta.job, method=meta.method,
        source=str(args.config), meta=meta.raw, project=meta.project, entity=meta.entity,
        max_attempts=meta.max_attempts, run_cap=meta.raw.get("run_cap"), runs=rows, force=args.force)
    what = f"{queued} queued, {reused} reused from finished runs" if meta.method == "grid" else f"{meta.method} search, runs proposed on demand"
    print(f"sweep {sweep_id}: {len(specs)} grid points; {what}; store {store.describe()}", file=sys.stderr)
    print(f"axes: {metaconfig.describe_axes(meta)}", file=sys.stderr)
    print(f"start agents: ./meta_run_{'train' if meta.job == 'train' else 'ood'}.sh {sweep_id} [gpu-index] [count]", file=sys.stderr)
    print(sweep_id)


def cmd_agent(args) -> None:
    runs_root = _runs_root(args.runs_root)
    if args.gpu not in (None, ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if not args.sweep_id.startswith("local-"):
        from genood.orchestration import wandb_backend
        wandb_backend.run_agent(args.sweep_id, ROOT, runs_root, args.count)
        return
    from genood.orchestration.agent import run_agent
    from genood.orchestration.store import store_locator
    log_dir = runs_root / args.sweep_id / "agents"
    log_dir.mkdir(parents=True, exist_ok=True)
    logging.raiseExceptions = False  # a log line lost on a full disk is not worth a traceback; the run's error says why
    logger = logging.getLogger(f"agent.{os.getpid()}")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(log_dir / f"{socket.gethostname()}-gpu{args.gpu if args.gpu not in (None, '') else 'none'}.log")
    handler.setFormatter(logging.Formatter(f"%(asctime)s pid{os.getpid()} %(message)s"))
    logger.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("agent: %(message)s"))
    logger.addHandler(console)
    claim_times: list = []
    try:
        done = run_agent(store_locator(runs_root, args.store), args.sweep_id, gpu=args.gpu, count=args.count, lease=args.lease,
                         log=logger, runs_root=runs_root, outage_limit=args.store_outage_limit, claim_times=claim_times)
    except Exception as exc:
        logger.removeHandler(console)  # the console gets the one sentence from entrypoint.guarded
        logger.info(f"agent stops: {exc}")
        raise
    logger.info(f"agent stops: {done}")
    if args.stats:
        from genood import rundir
        rundir.allow_writes(Path(args.stats).parent)  # a file the user named
        rundir.write_json(Path(args.stats), {"pid": os.getpid(), "counters": done, "claim_seconds": claim_times})


def cmd_status(args) -> None:
    store = _open_store(_runs_root(args.runs_root), args.store)
    sweep = _local_sweep(store, args.sweep_id)
    counts = store.counts(args.sweep_id)
    print(f"sweep {sweep['id']} ({sweep['name']}, job {sweep['job']}, {sweep['method']}): "
          + ", ".join(f"{v} {k}" for k, v in counts.items()))
    runs = store.runs(args.sweep_id)
    width = max([len(r["name"]) for r in runs] + [4])
    print(f"{'run':{width}s}  {'status':9s} {'fails':>5s} {'claims':>6s} {'time':>8s}  note")
    now = time.time()
    for r in runs:
        note = (r["error"] or "").strip().splitlines()[-1:] if r["status"] in ("failed", "queued") and r["error"] else []
        note = note[0][:80] if note else (f"reused {r['reused_from']}" if r["reused_from"] else (r["agent"] or ""))
        print(f"{r['name']:{width}s}  {r['status']:9s} {r['failures']:5d} {r['claims']:6d} {_run_time(r, now):>8s}  {note}")


def _run_time(run, now: float) -> str:
    """How long a run has been running (its last claim to now) or took (claim to finish); '-' before any claim
    and for a run reused from another sweep (its time is that sweep's)."""
    start = run.get("started")
    end = now if run["status"] == "running" else run.get("finished")
    if not start or not end or run.get("reused_from"):
        return "-"
    seconds = max(0, int(float(end) - float(start)))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def cmd_rerun(args) -> None:
    store = _open_store(_runs_root(args.runs_root), args.store)
    _local_sweep(store, args.sweep_id)
    n = store.requeue(args.sweep_id, name=args.run, failed_only=args.failed)
    print(f"re-queued {n} run(s) of {args.sweep_id}")


def _sweep_run_dirs(args):
    """(finished run directories, how many runs are not finished, the output folder) of one or several sweeps."""
    from genood.orchestration.sweep_runs import sweep_run_dirs
    runs_root = _runs_root(args.runs_root)
    dirs, missing, outs = [], 0, []
    for sweep_id in args.sweep_ids:
        d, m, o = sweep_run_dirs(runs_root, sweep_id, args.store)
        dirs += d
        missing += m
        outs.append(o)
    out = outs[0] if len(outs) == 1 else runs_root / "+".join(s.replace("/", "_") for s in args.sweep_ids)
    from genood.integrity import split_intact
    dirs, _ = split_intact(dirs, say=lambda sentence: print(sentence, file=sys.stderr))  # damaged runs: one sentence each
    return dirs, missing, out


def cmd_report(args) -> None:
    from genood.reports import report
    from genood.reports.aggregate import collect_runs
    from genood.reports.suite import selection_tokens
    dirs, missing, out = _sweep_run_dirs(args)
    frame, unreadable = collect_runs(dirs)
    if getattr(args, "wandb", False):
        from genood.reports import wandb_report
        if len(args.sweep_ids) == 1 and args.sweep_ids[0].count("/") == 2:
            entity, project = args.sweep_ids[0].split("/")[:2]
        else:
            entity, project = args.entity, args.project
        print(f"saved the W&B report: {wandb_report.save(frame, ' + '.join(args.sweep_ids), entity, project)}")
        return
    from genood.reports.suite import SelectionError
    try:
        path = report.write(frame, dirs, out / "report.html", title=f"Sweep {' + '.join(args.sweep_ids)}",
                            select_on=selection_tokens(args.select_on))
    except SelectionError as exc:
        raise SystemExit(f"error: {exc}")
    if missing or unreadable:
        print(f"({missing + unreadable} run(s) not finished; the report shows the {len(dirs) - unreadable} that are)")
    print(f"wrote {path} (self-contained: open it anywhere, no network needed)")


def cmd_aggregate(args) -> None:
    from genood.reports.aggregate import collect_runs, format_pivot, format_suite, lid_error_section, write_outputs
    from genood.reports.headroom import headroom_lines
    from genood.reports.suite import SelectionError, seed_view, selection_tokens
    dirs, missing, out = _sweep_run_dirs(args)
    frame, unreadable = collect_runs(dirs)
    select_on = selection_tokens(args.select_on)
    try:
        per_seed = seed_view(frame, select_on)  # once, for the console, suite_seeds.csv and the report
        suite_text = format_suite(frame, select_on, run_dirs=dirs, per_seed=per_seed)
    except SelectionError as exc:
        raise SystemExit(f"error: {exc}")
    print(format_pivot(frame) + lid_error_section(dirs) + suite_text)
    if missing or unreadable:
        print(f"({missing + unreadable} run(s) not finished; aggregated the {len(dirs) - unreadable} that are)")
    table = None
    if args.separability:
        table = _headroom_table(frame, select_on, selection_tokens(args.separability), args.separability_steps)
        print("\n".join(headroom_lines(table)))
    for p in write_outputs(frame, dirs, out, heatmap=True, select_on=select_on, headroom=table, per_seed=per_seed):
        print(f"wrote {p}")
    if getattr(args, "wandb", False) or (any(not s.startswith("local-") for s in args.sweep_ids) and not frame.empty):
        from genood.reports.aggregate import log_to_wandb
        print(f"logged the aggregate table to W&B run {log_to_wandb(frame, '+'.join(args.sweep_ids), out)}")


def _headroom_table(frame, select_on, tokens, steps):
    """``--separability``: the selected detectors beside a supervised discriminator on the sets ``tokens`` name
    (measured or read from the cache under the data root); :func:`genood.reports.headroom.headroom`'s table."""
    from genood import runconfig
    from genood.ood import separability
    from genood.reports import headroom, suite
    if not suite.has_suite(frame):
        raise SystemExit("error: --separability needs runs with OOD sets (an OOD suite); these runs have none.")
    sets = suite.per_set(frame)
    picked = suite.selection(sets, select_on or suite.default_selection(frame))
    defaults = runconfig.CORE_DEFAULTS

    def measure(in_dataset, names):
        return separability.measure(in_dataset, names, defaults["data"]["val_fraction"], defaults["run"]["seed"],
                                    steps, log=print, progress=sys.stderr.isatty())
    try:
        table = headroom.headroom(sets, picked, tokens, measure)
    except suite.SelectionError as exc:
        raise SystemExit("error: " + str(exc).replace("--select-on", "--separability", 1))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise SystemExit(f"error: --separability: {str(exc).strip(chr(39))}")
    return table


def cmd_launch(args) -> None:
    from genood.orchestration.launch import launch
    from genood.orchestration.store import store_locator
    runs_root = _runs_root(args.runs_root)
    locator = store_locator(runs_root, args.store)
    store = _open_store(runs_root, args.store)
    try:
        _local_sweep(store, args.sweep_id)
    finally:
        store.close()
    jobs = launch(args.sweep_id, locator, runs_root, args.agents, slurm=args.slurm, gpus_per_agent=args.gpus_per_agent,
                  partition=args.partition, time_min=args.time, mem_gb=args.mem, cpus_per_agent=args.cpus_per_agent,
                  lease=args.lease, count=args.count)
    where = "Slurm" if args.slurm else "this machine (submitit's local executor)"
    print(f"submitted {len(jobs)} agent task(s) of {args.sweep_id} on {where}: job ids {', '.join(str(j.job_id) for j in jobs)}; "
          f"logs in {runs_root / args.sweep_id / 'slurm'}", file=sys.stderr)
    if args.wait:
        for job in jobs:
            print(f"task {job.job_id}: {job.result()}", file=sys.stderr)


def cmd_list(args) -> None:
    store = _open_store(_runs_root(args.runs_root), args.store)
    for s in store.sweeps():
        counts = store.counts(s["id"])
        print(f"{s['id']}  {s['name']:30s} {s['job']:5s} " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def _agent_parsers(sub) -> None:
    p = sub.add_parser("agent", help="work on a sweep until it is drained: agent <sweep-id> [gpu-index] [count]")
    p.add_argument("sweep_id")
    p.add_argument("gpu_pos", nargs="?", metavar="gpu-index")
    p.add_argument("count_pos", nargs="?", type=int, metavar="count")
    p.add_argument("--gpu", help="GPU index: sets CUDA_VISIBLE_DEVICES")
    p.add_argument("--count", type=int, help="stop after this many runs")
    p.add_argument("--lease", type=float, default=60.0, help="seconds a run stays claimed without a heartbeat")
    p.add_argument("--store-outage-limit", type=float, default=600.0,
                   help="seconds the agent waits out an unreachable store (server restart, locked SQLite file) before it stops")
    p.add_argument("--stats", help="write the agent's counters and claim latencies to this JSON file when it stops")
    p = sub.add_parser("launch", help="start N agents as one Slurm job array (or the same array locally) through submitit")
    p.add_argument("sweep_id")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--slurm", action="store_true", help="submit to Slurm")
    where.add_argument("--local", action="store_true", help="run the array on this machine")
    p.add_argument("--agents", type=int, required=True, help="array tasks (one agent each)")
    p.add_argument("--gpus-per-agent", type=int, default=0)
    p.add_argument("--partition")
    p.add_argument("--time", type=int, help="minutes per task (Slurm's time limit)")
    p.add_argument("--mem", type=float, help="GB of memory per task")
    p.add_argument("--cpus-per-agent", type=int)
    p.add_argument("--lease", type=float, default=60.0, help="seconds a run stays claimed without a heartbeat")
    p.add_argument("--count", type=int, help="each agent stops after this many runs")
    p.add_argument("--wait", action="store_true", help="wait for every task and print its counters")


def _report_parsers(sub) -> None:
    for name in ("aggregate", "report"):
        p = sub.add_parser(name)
        p.add_argument("sweep_ids", nargs="+", metavar="sweep-id", help="one or more sweeps, aggregated together")
        p.add_argument("--select-on", action="append", metavar="GROUPS_OR_SETS",
                       help="choose one label-free detector by its worst AUROC on these OOD groups (near, corruption, "
                            "far, real) or sets, comma-separated, and report it on every other set (default with an "
                            "OOD suite: near,corruption)")
        if name == "aggregate":
            p.add_argument("--wandb", action="store_true",
                           help="also log the table as a wandb.Table (always for W&B sweeps; offline without a login)")
            p.add_argument("--separability", action="append", metavar="GROUPS_OR_SETS",
                           help="beside the selected detector, a supervised discriminator's AUROC on these OOD groups or "
                                "sets (optimistic, ~1 minute a set on one core, cached under the data root): "
                                "separability.csv")
            from genood.ood.separability import STEPS
            p.add_argument("--separability-steps", type=int, default=STEPS, metavar="N",
                           help=f"the discriminator's training steps (default {STEPS})")
        else:
            p.add_argument("--wandb", action="store_true", help="build and save a W&B Report instead of report.html "
                           "(needs a login; W&B sweeps name their entity/project, local ones take --entity/--project)")
            p.add_argument("--entity", help="W&B entity of the report (default: your default entity)")
            p.add_argument("--project", default="likelihood-paradox", help="W&B project of the report")


def parser() -> argparse.ArgumentParser:
    """The command line of ``sweep.py`` / ``genood-sweep``."""
    top = argparse.ArgumentParser(prog="sweep.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    where = {"--runs-root": "runs root holding sweeps.sqlite (default: $OOD_RUNS_ROOT or ./runs)",
             "--store": "the sweep store: a postgresql:// URL for agents on several machines "
                        "(default: $OOD_SWEEP_STORE, else <runs-root>/sweeps.sqlite, one machine only)"}
    for flag, text in where.items():
        top.add_argument(flag, help=text)
    sub = top.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("create", help="expand a meta-configuration and create a sweep")
    p.add_argument("--config", required=True)
    p.add_argument("--backend", choices=["local", "wandb"])
    p.add_argument("--force", action="store_true", help="recompute runs that already finished in another sweep")
    _agent_parsers(sub)
    sub.add_parser("status").add_argument("sweep_id")
    _report_parsers(sub)
    p = sub.add_parser("rerun", help="re-queue runs (default: all finished and failed ones)")
    p.add_argument("sweep_id")
    p.add_argument("run", nargs="?")
    p.add_argument("--failed", action="store_true")
    sub.add_parser("list")
    for command in sub.choices.values():  # also after the command (`sweep.py aggregate <id> --runs-root R`)
        for flag, text in where.items():
            command.add_argument(flag, help=text, default=argparse.SUPPRESS)
    return top


HANDLERS = {"create": cmd_create, "agent": cmd_agent, "status": cmd_status, "rerun": cmd_rerun,
            "aggregate": cmd_aggregate, "report": cmd_report, "list": cmd_list, "launch": cmd_launch}


def _sweep_ref_problem(ref: str):
    """Why a sweep id typed on the command line cannot name a folder (one sentence), or None."""
    from genood.paths import UnsafeName, check_sweep_ref
    try:
        check_sweep_ref(ref, "sweep id")
    except UnsafeName as exc:
        return str(exc)
    return None


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    for ref in [getattr(args, "sweep_id", None), *(getattr(args, "sweep_ids", None) or [])]:
        if ref is not None:
            problem = _sweep_ref_problem(ref)
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                return entrypoint.EXIT_USER_ERROR
    if args.cmd == "agent":
        args.gpu = args.gpu if args.gpu is not None else (args.gpu_pos or None)
        args.count = args.count if args.count is not None else args.count_pos

    def job():
        from genood.orchestration.wandb_backend import WandbUnavailable
        try:
            HANDLERS[args.cmd](args)
        except WandbUnavailable as exc:
            raise entrypoint.UserError(str(exc)) from exc
    return entrypoint.guarded(job)


def dysweep_create(argv=None) -> int:
    """``dysweep_create --config <meta.yaml> [--backend B] [--force]``: the seed workflow's command, our ``create``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(["create", *args])


if __name__ == "__main__":
    sys.exit(main())
