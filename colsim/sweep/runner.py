"""Run a planned sweep on dask.distributed (colsim.sweep): connect, submit one task per run, one
rich progress bar over the runs, record what each task returned or why it died.

:func:`sweep_main` is ``colsim sweep``; it returns the exit code (0: every run completed,
1: some run failed / diverged / was interrupted) and raises ConfigError for bad input (exit 2).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Optional

import yaml

from colsim.config import ConfigError
from colsim import registry
from colsim.sweep.plan import (ClusterConfig, check_ensemble, check_slurm, ensemble_groups, SweepConfig, SweepLock,
                               SweepRun, coordinate_names, is_done, load_sweep, local_cluster_size, cores_available,
                               plan_runs, read_status, slurm_cluster)

__all__ = ["sweep_main", "connect", "probe_scheduler"]

SCHEDULER_TIMEOUT_S = 5


def connect(cc: ClusterConfig, scheduler: Optional[str] = None, console=None):
    """-> (client, cluster or None, task resources). ``scheduler``: an existing cluster's address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("colsim sweep: needs dask.distributed (pip install 'colsim[distributed]')") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s", set_as_default=False)
        except Exception as exc:  # noqa: BLE001 — OSError / TimeoutError / ValueError: all bad input
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"--scheduler {scheduler}: cannot connect to a dask scheduler there ({msg[:200]})") \
                from None
        return client, None, None
    if cc.kind == "slurm":
        cluster = slurm_cluster(cc)
        cluster.scale(jobs=cc.slurm.jobs)
        if console is not None:
            console.print(f"SLURMCluster: {cc.slurm.jobs} job(s) x {cc.slurm.cores} cores, "
                          f"{cc.slurm.cores // cc.threads} worker(s) per job x {cc.threads} torch thread(s)",
                          highlight=False)
        return Client(cluster, set_as_default=False), cluster, {"run": 1}
    n = local_cluster_size(cc)
    _forkserver_with_colsim()
    try:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=cc.dashboard_address, silence_logs=logging.ERROR)
    except Exception as exc:  # noqa: BLE001 — e.g. a dashboard address that cannot be bound
        raise ConfigError(f"sweep.cluster: cannot start a LocalCluster ({type(exc).__name__}: {exc})") from None
    if console is not None:
        console.print(f"LocalCluster: {n} worker process(es) x {cc.threads} torch thread(s) "
                      f"({cores_available()} cores)", highlight=False)
    return Client(cluster, set_as_default=False), cluster, None


def _forkserver_with_colsim() -> None:
    """Start LocalCluster workers from a forkserver that has imported torch and colsim's plugins once.

    With dask's default (spawn) every worker process imports torch and the plugins itself at start-up,
    all at once; forked from one server that imported them, a worker starts with them loaded (no torch
    op has run there, so no thread pool is forked). Linux and macOS only; elsewhere spawn stays.
    """
    import multiprocessing

    import dask

    if "forkserver" not in multiprocessing.get_all_start_methods() or _cwd_shadows_colsim():
        return
    from colsim import registry

    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    from distributed.utils import get_mp_context

    get_mp_context().set_forkserver_preload(["distributed", "torch", "colsim.sweep.task",
                                             *registry.PACKAGES.values()])


def _cwd_shadows_colsim() -> bool:
    """True when the working folder holds a ``colsim/`` that is not the imported package (a source checkout
    with a non-editable install). The forkserver starts with the working folder first on ``sys.path`` (it does
    not take the parent's path), so its workers would import that source tree, which lacks the sub-packages
    pyproject maps in (``colsim.analysis`` ...); spawn takes the parent's ``sys.path`` and imports the same
    colsim as this process."""
    import colsim

    cand = Path(os.getcwd()).resolve() / "colsim"
    return cand.is_dir() and cand != Path(colsim.__file__).resolve().parent


def probe_scheduler(address: str, timeout: float = 3.0) -> None:
    """Fail fast (ConfigError naming the address) when nothing listens at a scheduler address."""
    import socket

    try:
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port
    except ImportError:
        raise ConfigError("colsim sweep: needs dask.distributed (pip install 'colsim[distributed]')") from None
    try:
        scheme, loc = parse_address(address.strip())
        if scheme not in ("tcp", "tls"):
            raise ValueError(f"scheme {scheme!r} is not tcp:// or tls://")
        host, port = parse_host_port(loc)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--scheduler {address}: not a scheduler address ({exc}); give e.g. tcp://host:8786") \
            from None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"--scheduler {address}: cannot reach a dask scheduler there "
                          f"({exc.strerror or type(exc).__name__})") from None


def sweep_main(path: str, out: Optional[Path] = None, steps: Optional[int] = None, scheduler: Optional[str] = None,
               cluster: Optional[str] = None, workers: Optional[int] = None, threads: Optional[int] = None,
               quiet: bool = False, console=None, git_revision: str = "unknown",
               ensemble: Optional[bool] = None) -> int:
    from rich.console import Console

    console = console or Console()
    if scheduler is not None and cluster is not None:
        raise ConfigError("--scheduler / --cluster: give one (an existing cluster's address, or a cluster to start)")
    if cluster is not None and cluster not in ("local", "slurm"):
        raise ConfigError(f"--cluster {cluster}: choose local or slurm")
    if scheduler is not None and not scheduler.strip():
        raise ConfigError("--scheduler: empty address; give e.g. tcp://host:8786")
    sw, src = load_sweep(path, steps)
    if scheduler is not None:
        probe_scheduler(scheduler)
    upd = {k: v for k, v in (("kind", cluster), ("workers", workers), ("threads", threads)) if v is not None}
    for k, v in upd.items():
        if k != "kind" and v < 1:
            raise ConfigError(f"--{k}: must be >= 1, got {v}")
    cc = sw.cluster.model_copy(update=upd)
    if scheduler is None and cc.kind == "slurm":
        check_slurm(cc)
    registry.load_plugins()
    if ensemble is not None:
        sw = sw.model_copy(update={"ensemble": ensemble})
    runs = plan_runs(sw)
    if sw.ensemble:
        check_ensemble(ensemble_groups(runs))
    out = Path(out) if out is not None else Path("runs") / str(sw.name)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the sweep folder ({exc.strerror or exc})") from None
    with SweepLock(out), _sigterm_as_interrupt() as got:
        try:
            return _run_locked(sw, src, cc, runs, out.resolve(), scheduler, quiet, console, git_revision)
        except KeyboardInterrupt:
            return 128 + got.get("signum", signal.SIGINT)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the sweep as Ctrl-C does (KeyboardInterrupt in the main thread); yields a dict that holds the
    signal number once one arrived, for the exit code (130 / 143)."""
    got: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum, frame):
        got["signum"] = int(signum)
        raise KeyboardInterrupt

    prev = signal.signal(signal.SIGTERM, handler)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, prev)


def _mark_interrupted(out: Path, todo: list[SweepRun], finished: dict) -> list[str]:
    """After a signal stopped the sweep (its cluster closed): each run still ``running`` in its sweep_run.json is
    recorded ``interrupted``; the same command runs them again. Returns their names."""
    from colsim.sweep.task import write_status

    names = []
    for r in todo:
        if r.name in finished:
            continue
        meta = read_status(out / "runs" / r.name)
        if meta.get("status") == "running":
            meta.update(status="interrupted", error="stopped by a signal to colsim sweep",
                        finished=_dt.datetime.now().isoformat(timespec="seconds"))
            write_status(out / "runs" / r.name, meta)
            names.append(r.name)
    return names


def _run_locked(sw: SweepConfig, src: Path, cc: ClusterConfig, runs: list[SweepRun], out: Path, scheduler, quiet,
                console, git_revision) -> int:
    todo = [r for r in runs if not is_done(out / "runs" / r.name, r.config)]  # raises for another sweep's runs
    doc = sw.model_dump(mode="json")
    doc["coordinates"] = coordinate_names(list(sw.grid) + list(sw.zip))
    doc["source"], doc["written"] = str(src), _dt.datetime.now().isoformat(timespec="seconds")
    (out / "sweep.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    console.print(f"[bold]colsim sweep[/] {sw.name}: {len(runs)} runs ({len(runs) - len(todo)} already done, "
                  f"{len(todo)} to run) -> {out}", highlight=False)
    statuses = {r.name: read_status(out / "runs" / r.name) for r in runs if r not in todo}
    if todo and sw.ensemble:
        units = ensemble_groups(todo)
        console.print(f"seed ensembles: {len(todo)} runs as {len(units)} task(s) "
                      f"({', '.join(str(len(u)) for u in units)} seeds)", highlight=False)
    if todo:
        statuses.update(_submit(cc, scheduler, todo, len(runs), out, quiet, console, sw, git_revision))
    return _report(runs, statuses, console)


def _submit(cc, scheduler, todo, total, out, quiet, console, sw, git_revision) -> dict:
    from distributed import as_completed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from colsim.sweep.task import execute, execute_ensemble, write_status

    client, cluster, resources = connect(cc, scheduler, console)
    statuses: dict[str, dict] = {}
    futures = {}
    units = ensemble_groups(todo) if sw.ensemble else [[r] for r in todo]
    try:
        console.print(f"dask dashboard: {client.dashboard_link}", highlight=False)
        threads = cc.threads

        def spec(r: SweepRun) -> dict:
            prev = read_status(out / "runs" / r.name)
            return {"name": r.name, "point": r.point, "identity": r.identity, "config": r.config,
                    "dir": str(out / "runs" / r.name), "threads": threads, "attempts": prev.get("attempts", 0),
                    "attrs": {"git_revision": git_revision, "sweep": str(sw.name)}}

        for unit in units:
            key = f"colsim-run-{unit[0].name}-{uuid.uuid4().hex[:8]}"
            if len(unit) == 1:
                fut = client.submit(execute, spec(unit[0]), key=key, pure=False, resources=resources)
            else:
                fut = client.submit(execute_ensemble, [spec(r) for r in unit], key=key, pure=False,
                                    resources=resources)
            futures[fut] = unit
        cols = [TextColumn("[bold blue]sweep {task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[bad]} not ok[/]"), TimeElapsedColumn(),
                TimeRemainingColumn()]
        with Progress(*cols, console=console, disable=quiet) as prog:
            task = prog.add_task("sweep", total=total, completed=total - len(todo), name=sw.name, ok=0, bad=0)
            ok = bad = 0
            for fut in as_completed(list(futures), loop=client.loop):
                unit = futures[fut]
                try:
                    got = fut.result()
                    metas = got if isinstance(got, list) else [got]
                except Exception as exc:  # noqa: BLE001 — the task itself died (KilledWorker, lost worker, ...)
                    metas = []
                    for r in unit:
                        meta = read_status(out / "runs" / r.name) or {"name": r.name, "point": r.point,
                                                                      "identity": r.identity, "attempts": 1}
                        meta.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
                        (out / "runs" / r.name).mkdir(parents=True, exist_ok=True)
                        write_status(out / "runs" / r.name, meta)
                        metas.append(meta)
                for r, meta in zip(unit, metas):
                    statuses[r.name] = meta
                    ok, bad = (ok + 1, bad) if meta.get("status") == "completed" else (ok, bad + 1)
                prog.update(task, advance=len(unit), ok=ok, bad=bad)
    except KeyboardInterrupt:
        interrupted = True
        client.cancel(list(futures))
    else:
        interrupted = False
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if interrupted:
        stopped = _mark_interrupted(out, todo, statuses)
        console.print(f"[yellow]sweep interrupted[/]: {len(statuses)} of {len(todo)} runs finished; "
                      f"{len(stopped)} stopped in flight (sweep_run.json: interrupted); the same command runs every "
                      "unfinished run again", highlight=False, soft_wrap=True)
        raise KeyboardInterrupt
    return statuses


def _report(runs: list[SweepRun], statuses: dict, console) -> int:
    from rich.table import Table

    counts: dict[str, int] = {}
    for r in runs:
        s = statuses.get(r.name, {}).get("status", "missing")
        counts[s] = counts.get(s, 0) + 1
    console.print("runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), highlight=False)
    bad = [(r, statuses.get(r.name, {})) for r in runs if statuses.get(r.name, {}).get("status") != "completed"]
    if bad:
        t = Table(title="runs not completed (run the same command again to retry failed ones)")
        t.add_column("run"), t.add_column("status"), t.add_column("error")
        for r, st in bad:
            t.add_row(r.name, str(st.get("status", "missing")), str(st.get("error") or ""))
        console.print(t)
    return 0 if not bad else 1
