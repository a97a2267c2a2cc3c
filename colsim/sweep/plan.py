"""Sweeps: many runs of one base configuration, one dask.distributed task per run.

    colsim sweep protocols/sweeps/rules_seeds.yaml [--out DIR] [--steps N]
                 [--scheduler ADDRESS | --cluster local|slurm] [--workers N] [--threads N]

A sweep file (validated here with pydantic; unknown keys are errors naming the field)::

    name: rules_seeds                  # default --out: runs/<name>
    base: {protocol: nonstationary, rule: backprop, model: null, steps: null, device: cpu,
           set: ["protocol.stream.batch=16"]}           # --set overrides for every run
    grid:                               # cartesian product over these fields ...
      rule: [backprop, lpl]
      seed: [0, 1, 2]                   # or "0-2"
      rule.optimizer.lr: [1.0e-3, 3.0e-3]               # any --set path
    zip:                                # ... crossed with these, zipped (equal lengths)
      protocol.stream.batch: [8, 16]
      protocol.stream.episode_length: [4, 8]
    cluster:
      kind: local                       # local | slurm (--cluster wins)
      threads: 1                        # torch threads per run
      workers: null                     # local: default cores // threads
      dashboard_address: ":8787"
      slurm: {queue: gpu, account: null, cores: 8, memory: 32GB, walltime: "02:00:00", jobs: 4,
              job_extra_directives: ["--gres=gpu:1"], prologue: ["module load cuda"], python: null}

Swept fields: ``protocol``, ``rule``, ``model`` (preset names or paths), ``seed``, ``device``,
``steps``, or any config path ``--set`` accepts. Each field is a coordinate of the sweep's
dataset (``colsim.analysis.open_runs(SWEEP_DIR)``), named by its last path component when that is
unique (``rule.optimizer.lr`` -> ``lr``).

The sweep folder (docs/architecture.md, "Sweeps")::

    DIR/sweep.yaml             the sweep as last run (with --steps applied)
    DIR/.sweep.lock            held (flock) while a sweep writes here: a second one refuses
    DIR/runs/<field=value__...>/   an ordinary run folder (config.yaml, store.zarr, summary.json,
                               checkpoints/) + sweep_run.json: {name, point, status, error, attempts, ...}

Failure: a run that raises is recorded as ``failed`` (its error in sweep_run.json and
error.txt) and the others go on. Running the same sweep again skips runs whose status is
``completed`` or ``diverged`` (a result: the same seed diverges again) and runs the rest again
(failed, interrupted, never finished). A finished run whose config.yaml differs from what the
sweep now asks for is an error: the folder holds a different sweep.

Cluster sizing: a LocalCluster of ``workers`` processes, one dask thread each, every run with
``threads`` torch threads, so workers x threads <= cores. SLURM (dask-jobqueue): each job of
``cores`` cores runs ``cores // threads`` worker processes, each holding the resource ``run=1``
so that it runs one run at a time with ``threads`` torch threads.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional

import yaml
from pydantic import Field, field_validator

from colsim.lock import FolderLock
from colsim.config import ConfigError, Strict, load_yaml_file, resolve_run_config, validate_as

__all__ = ["SweepBase", "SlurmConfig", "ClusterConfig", "SweepConfig", "SweepRun", "SIMPLE_FIELDS", "DONE",
           "load_sweep", "plan_runs", "SweepLock", "check_slurm", "slurm_cluster", "cores_available",
           "local_cluster_size", "coordinate_names", "sweep_file", "read_status", "is_done", "ensemble_groups",
           "check_ensemble"]

SIMPLE_FIELDS = ("protocol", "rule", "model", "seed", "device", "steps")
DONE = ("completed", "diverged")  # statuses a re-run skips
_SET_ROOTS = ("protocol", "model", "rule")


class SweepBase(Strict):
    protocol: str = "nonstationary"
    rule: Optional[str] = None  # default: the protocol's rule
    model: Optional[str] = None  # default: the protocol's model
    steps: Optional[int] = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    set: list[str] = Field(default_factory=list)


class SlurmConfig(Strict):
    queue: Optional[str] = None  # partition (#SBATCH -p)
    account: Optional[str] = None
    cores: int = Field(4, ge=1)  # cores per job
    memory: str = "16GB"  # per job
    walltime: str = "01:00:00"
    jobs: int = Field(1, ge=1)  # jobs to start
    job_extra_directives: list[str] = Field(default_factory=list)  # extra #SBATCH lines, e.g. --gres=gpu:1
    prologue: list[str] = Field(default_factory=list)  # shell lines before the worker starts
    python: Optional[str] = None  # python on the nodes (default: this one)
    log_directory: Optional[str] = None

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        if not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", v):
            raise ValueError(f"{v!r} is not a SLURM time; write HH:MM:SS or D-HH:MM:SS")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B)", v.strip(), flags=re.I):
            raise ValueError(f"{v!r} is not a memory size; write e.g. 16GB")
        return v.strip()


class ClusterConfig(Strict):
    kind: Literal["local", "slurm"] = "local"
    threads: int = Field(1, ge=1)  # torch threads per run
    workers: Optional[int] = Field(None, ge=1)  # local: worker processes (default cores // threads)
    dashboard_address: str = ":8787"
    slurm: Optional[SlurmConfig] = None


class SweepConfig(Strict):
    name: Optional[str] = None
    description: str = ""
    base: SweepBase = Field(default_factory=SweepBase)
    grid: dict[str, Any] = Field(default_factory=dict)
    zip: dict[str, Any] = Field(default_factory=dict)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    ensemble: bool = False  # the runs that differ only in their seed run as one seed ensemble per task


class SweepRun(NamedTuple):
    name: str  # folder name under DIR/runs
    point: dict  # coordinate name -> value (the swept fields)
    config: dict  # resolved RunConfig.to_dict()
    identity: dict  # rule (full spec name), model, protocol, seed: the run's identity in colsim.analysis


# ------------------------------------------------------------------------------------------
# loading and planning

def sweep_file(path: str) -> Path:
    """A sweep YAML path, or a packaged sweep's name (``rules_seeds``) / path under protocols/sweeps/."""
    p = Path(path)
    if p.is_file():
        return p
    from importlib import resources

    packaged = resources.files("colsim.protocols") / "sweeps" / f"{p.stem}.yaml"
    if (p.suffix in ("", ".yaml", ".yml")) and (p.parent.name in ("sweeps", "")) and packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"{path}: sweep file not found")


def load_sweep(path: str, steps: Optional[int] = None) -> tuple[SweepConfig, Path]:
    """Read and validate a sweep YAML; ``steps`` (``--steps``) replaces ``base.steps``."""
    p = sweep_file(path)
    doc = load_yaml_file(p)
    sw = validate_as(SweepConfig, doc, "sweep")
    if steps is not None:
        if steps <= 0:
            raise ConfigError(f"--steps: must be > 0, got {steps}")
        sw = sw.model_copy(update={"base": sw.base.model_copy(update={"steps": steps})})
    if sw.name is None:
        sw = sw.model_copy(update={"name": p.stem})
    return sw, p


def _values(where: str, key: str, vals: Any) -> list:
    if key == "seed" and isinstance(vals, str):
        from colsim.config import parse_seeds

        try:
            return parse_seeds(vals)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
    if not isinstance(vals, list):
        raise ConfigError(f"{where}: must be a list of values, got {type(vals).__name__}")
    if not vals:
        raise ConfigError(f"{where}: empty list of values (give at least one, or remove the field)")
    return vals


def _check_key(where: str, key: str) -> None:
    if key in SIMPLE_FIELDS:
        return
    root = re.split(r"[.\[]", key, maxsplit=1)[0]
    if root not in _SET_ROOTS or "." not in key:
        raise ConfigError(f"{where}: unknown sweep field; sweep {', '.join(SIMPLE_FIELDS)} or a config path such "
                          "as rule.optimizer.lr")


def coordinate_names(keys: list[str]) -> dict[str, str]:
    """Swept field -> coordinate name: the last path component when unique (``rule.optimizer.lr`` -> ``lr``)."""
    short = {k: (k if k in SIMPLE_FIELDS else re.sub(r"\[\d+\]", "", k).rsplit(".", 1)[-1]) for k in keys}
    counts: dict[str, int] = {}
    for k, s in short.items():
        counts[s] = counts.get(s, 0) + 1
    return {k: (s if counts[s] == 1 and (s == k or s not in SIMPLE_FIELDS) else k) for k, s in short.items()}


def _label(value: Any, key: str) -> str:
    if key == "protocol" and isinstance(value, str):
        value = Path(value).stem
    s = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9._+-]", "_", s)


def _resolve(base: SweepBase, point: dict[str, Any]):
    kw = {"protocol": base.protocol, "rule": base.rule, "model": base.model, "seed": base.seed,
          "device": base.device, "steps": base.steps}
    sets = list(base.set)
    for k, v in point.items():
        if k in SIMPLE_FIELDS:
            kw[k] = v
        else:
            sets.append(f"{k}={json.dumps(v)}")
    if not isinstance(kw["seed"], int) or isinstance(kw["seed"], bool) or kw["seed"] < 0:
        raise ConfigError(f"must be a non-negative integer, got {kw['seed']!r}")
    if kw["steps"] is not None and (not isinstance(kw["steps"], int) or kw["steps"] <= 0):
        raise ConfigError(f"must be a positive integer, got {kw['steps']!r}")
    for k in ("protocol", "rule", "model", "device"):
        if kw[k] is not None and not isinstance(kw[k], str):
            raise ConfigError(f"must be a name (string), got {kw[k]!r}")
    return resolve_run_config(kw["protocol"], rule=kw["rule"], model=kw["model"], overrides=sets, seed=kw["seed"],
                              device=kw["device"], steps=kw["steps"])


def plan_runs(sw: SweepConfig) -> list[SweepRun]:
    """Every run of the sweep (grid x zip), each resolved and validated before anything runs.

    The registries must be loaded (models, rules, protocols). Errors name the sweep field:
    ``sweep.grid['rule.optimizer.lrr']: rule.optimizer.lrr: unknown key ...``.
    """
    fields: dict[str, tuple[str, list]] = {}  # key -> (where, values)
    for section in ("grid", "zip"):
        for key, vals in getattr(sw, section).items():
            where = f"sweep.{section}[{key!r}]"
            _check_key(where, key)
            if key in fields:
                raise ConfigError(f"{where}: also swept in {fields[key][0]}; sweep a field once")
            fields[key] = (where, _values(where, key, vals))
    if not fields:
        raise ConfigError("sweep.grid: empty grid — the sweep has no runs; give grid (and/or zip) values, "
                          "e.g. grid: {seed: [0, 1, 2]}")
    zkeys = list(sw.zip)
    if zkeys:
        n0 = len(fields[zkeys[0]][1])
        for k in zkeys[1:]:
            if len(fields[k][1]) != n0:
                raise ConfigError(f"{fields[k][0]}: {len(fields[k][1])} values, but sweep.zip[{zkeys[0]!r}] has {n0}; "
                                  "zipped fields need equal lengths")
    try:
        _resolve(sw.base, {})
    except ConfigError as exc:
        raise ConfigError(f"sweep.base: {exc}") from None
    for key, (where, vals) in fields.items():  # each value alone on the base: errors name the field
        for v in vals:
            try:
                _resolve(sw.base, {key: v})
            except ConfigError as exc:
                raise ConfigError(f"{where} = {v!r}: {exc}") from None
    gkeys = list(sw.grid)
    zipped = list(zip(*(fields[k][1] for k in zkeys))) if zkeys else [()]
    coord = coordinate_names(list(fields))
    runs, names = [], {}
    for gv in itertools.product(*(fields[k][1] for k in gkeys)):
        for zv in zipped:
            point = dict(zip(gkeys, gv)) | dict(zip(zkeys, zv))
            try:
                cfg = _resolve(sw.base, point)
            except ConfigError as exc:
                raise ConfigError(f"sweep run {point}: {exc}") from None
            name = "__".join(f"{_label(coord[k], k)}={_label(v, k)}" for k, v in point.items())
            if name in names:
                raise ConfigError(f"sweep: runs {names[name]} and {point} have the same folder name {name!r}; "
                                  "make the swept values distinct")
            names[name] = point
            ident = {"rule": cfg.rule.name, "model": cfg.protocol.model, "protocol": cfg.protocol.name,
                     "seed": cfg.seed}
            runs.append(SweepRun(name, {coord[k]: v for k, v in point.items()}, cfg.to_dict(), ident))
    return runs


def ensemble_groups(runs: list[SweepRun]) -> list[list[SweepRun]]:
    """The runs grouped by their config without the seed, in the sweep's order: each group of two or more runs is
    one seed ensemble (``sweep.ensemble``); a run whose config no other run shares except for the seed stays alone."""
    groups: dict[str, list[SweepRun]] = {}
    for r in runs:
        key = json.dumps({k: v for k, v in r.config.items() if k != "seed"}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def check_ensemble(groups: list[list[SweepRun]]) -> None:
    """ConfigError naming ``sweep.ensemble`` unless every group of two or more runs can run as a seed ensemble (the
    checks of ``colsim run --ensemble``: the CPU, no autocast, a rule and column batched over seeds). One run of
    each distinct rule / model / device is built to ask its rule and column."""
    from colsim.config import build_run_config

    asked: set = set()
    for g in groups:
        if len(g) < 2:
            continue
        cfg = build_run_config(g[0].config)
        if cfg.device != "cpu":
            raise ConfigError(f"sweep.ensemble: seed ensembles run on the CPU only so far, not device {cfg.device}; "
                              "drop --ensemble (or ensemble: true in the sweep file)")
        if getattr(cfg.model, "autocast", None) not in (None, "none"):
            raise ConfigError(f"sweep.ensemble: model.autocast={cfg.model.autocast} is not batched over seeds yet; "
                              "drop --ensemble (or ensemble: true in the sweep file)")
        key = (cfg.rule.name, json.dumps(g[0].config.get("rule"), sort_keys=True, default=str),
               json.dumps(g[0].config.get("model"), sort_keys=True, default=str))
        if key in asked:
            continue
        asked.add(key)
        from colsim.rundir import build_for_run
        from colsim.sim.ensemble import ensemble_refusal

        b = build_for_run(cfg)
        why = ensemble_refusal(cfg.rule.name, b.rule, b.column)
        if why is not None:
            raise ConfigError("sweep.ensemble: " + why.removeprefix("--ensemble: ").replace(
                "run the seeds separately with --seeds", "drop --ensemble (or ensemble: true in the sweep file)"))


# ------------------------------------------------------------------------------------------
# the sweep folder

def SweepLock(folder: Path) -> FolderLock:
    """``DIR/.sweep.lock`` held while a sweep writes to DIR (:class:`colsim.lock.FolderLock`; released when the
    process ends, even on a crash). A second holder gets a ConfigError naming the pid inside."""
    path = Path(folder) / ".sweep.lock"
    return FolderLock(path, where=f"--out {path.parent}",
                      busy=lambda pid: f"--out {path.parent}: another colsim sweep is writing to this folder (pid {pid} "
                                       f"holds {path}); wait for it to finish or choose another --out")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "sweep_run.json").read_text())
    except (OSError, ValueError):
        return {}


def _normal(d: Any) -> Any:
    return json.loads(json.dumps(d))


def is_done(run_dir: Path, config: dict) -> bool:
    """True when the run folder holds a finished run (completed / diverged) of exactly ``config``."""
    st = read_status(run_dir)
    if st.get("status") not in DONE or not (run_dir / "summary.json").is_file():
        return False
    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    if _normal(old) != _normal(config):
        raise ConfigError(f"{run_dir}/config.yaml: this finished run's config differs from what the sweep now asks "
                          "for (another sweep, or other --steps); choose another --out")
    return True


# ------------------------------------------------------------------------------------------
# clusters

def cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_cluster_size(cc: ClusterConfig, cores: Optional[int] = None) -> int:
    """Worker processes of the default LocalCluster: ``workers`` or cores // threads (at least 1)."""
    return cc.workers or max(1, (cores or cores_available()) // cc.threads)


def check_slurm(cc: ClusterConfig) -> None:
    """ConfigError unless ``cluster.slurm`` is there, fits ``threads`` and dask-jobqueue is installed."""
    sc = cc.slurm
    if sc is None:
        raise ConfigError("sweep.cluster.slurm: required for --cluster slurm (queue, cores, memory, walltime)")
    if sc.cores < cc.threads:
        raise ConfigError(f"sweep.cluster.slurm.cores: {sc.cores} cores per job is fewer than cluster.threads = "
                          f"{cc.threads} torch threads per run")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        raise ConfigError("--cluster slurm: needs dask-jobqueue (pip install 'colsim[distributed]')") from None


def slurm_cluster(cc: ClusterConfig):
    """A dask-jobqueue SLURMCluster from the sweep's ``cluster.slurm`` (starts a scheduler; submits no job)."""
    import sys

    check_slurm(cc)
    from dask_jobqueue import SLURMCluster

    sc = cc.slurm

    return SLURMCluster(
        queue=sc.queue, account=sc.account, cores=sc.cores, processes=sc.cores // cc.threads, memory=sc.memory,
        walltime=sc.walltime, job_extra_directives=list(sc.job_extra_directives),
        job_script_prologue=[f"export OMP_NUM_THREADS={cc.threads}", f"export MKL_NUM_THREADS={cc.threads}",
                             *sc.prologue],
        worker_extra_args=["--resources", "run=1"], python=sc.python or sys.executable,
        log_directory=sc.log_directory, scheduler_options={"dashboard_address": cc.dashboard_address})
