"""In-run evaluation (schedule steps 0, 8 and 12) and the store schema of its groups.

An :class:`Evaluator` draws one fixed probe set per phase when the run starts, then at every evaluation embeds
them all once, scores the read-outs (:mod:`colsim.evaluate`; per column and for the vote in a circuit), keeps
the frozen read-outs fitted at each phase's end, appends the row the summary reads (``evals``) and writes the
``evaluation`` group (and the ``probe`` group when ``record.probe``) with their dimension names.
"""
from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np
import torch

from colsim.circuit.evaluate import COLUMN_SUMMARY_KEYS, circuit_eval_data, circuit_probe_data, circuit_scores
from colsim.column import Circuit
from colsim.device import pin_probe_set
from colsim.evaluate import embed_probe_sets, probe_scores, spiking_probe_arrays
from colsim.sim.host import seeded
from colsim.analysis import schema as S

__all__ = ["Evaluator", "EVAL_SET_KEYS", "EVAL_SCALAR_KEYS", "readouts_to_tensors", "readouts_from_tensors"]

# evaluation-group variables (written every evaluation; see colsim.evaluate)
EVAL_SET_KEYS = ("acc_agg", "acc_agg_se", "acc_z", "acc_z_se", "seen_acc", "seen_acc_se", "frozen_acc", "frozen_acc_se",
                 "prediction_loss", "prediction_loss_se", "equivariance_r2_set", "equivariance_r2_set_se")
HEAD_SET_KEYS = ("head_acc", "head_acc_se")  # only for columns with read-out heads (models/classifier.py)
LAYER_READOUT_KEYS = ("layer_acc", "layer_acc_se", "layer_spikes")  # only for columns with ``readout`` (echospike)
EVAL_SCALAR_KEYS = ("probe_acc_agg", "probe_acc_agg_se", "probe_acc_z", "probe_acc_z_se", "equivariance_r2",
                    "equivariance_r2_se")


class Evaluator:
    """Owns the probe sets, the frozen read-outs, the evaluation rows and the time spent evaluating."""

    def __init__(self, column, protocol, world, recorder, *, seed: int, device: str, amp, resume: Optional[dict]):
        self.column, self.protocol, self.recorder = column, protocol, recorder
        self.seed, self.device, self.amp = seed, device, amp
        ev = protocol.evaluation
        self.names = [ph.name for ph in protocol.phases]
        self.action_names = list(world.spec.action_names)
        self.probe_sets = [pin_probe_set(world.probe_set(ph.classes, ev.probe_samples, ev.views, seeded(seed, 7, j),
                                                         ph.world, pool=ev.pool), device)
                           for j, ph in enumerate(protocol.phases)]
        self.circ = column if isinstance(column, Circuit) else None  # several columns (issue 14)
        self.entries = self.circ.names + ["vote"] if self.circ is not None else []
        if self.circ is not None:
            recorder.set_columns(self.circ.names)
            recorder.set_attrs(circuit=json.dumps(self.circ.describe()))
        self.evals: list[dict] = []
        # probe set j -> the task read-out fitted right after phase j (re-applied unchanged); circuits: per entry k
        self.frozen: dict = {} if self.circ is None else {k: {} for k in range(len(self.entries))}
        if resume is not None:
            self.evals = [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in e.items()}
                          for e in resume.get("evals", [])]
            if resume.get("frozen_readouts"):
                self.frozen = readouts_from_tensors(resume["frozen_readouts"], circuit=self.circ is not None)
                for k in range(len(self.entries)):
                    self.frozen.setdefault(k, {})
        self.seconds = 0.0

    def frozen_tensors(self) -> dict:
        """The frozen read-outs as plain tensors, for a checkpoint."""
        return readouts_to_tensors(self.frozen, circuit=self.circ is not None)

    def __call__(self, phase_name: str, step: int, phase_end: Optional[int] = None) -> None:
        te = time.perf_counter()
        self.recorder.flush()  # the store holds every metric row up to this evaluation
        circ, frozen, probe_sets = self.circ, self.frozen, self.probe_sets
        with self.amp():
            emb = embed_probe_sets(self.column, probe_sets, self.protocol.evaluation.batch, self.device)
        if circ is None:
            per = [probe_scores(emb, probe_sets, self.action_names, seed=self.seed, frozen=frozen,
                                heads_only=self.protocol.evaluation.readouts == "heads")]
        else:  # every column and the vote (the last entry), each on its own
            per = circuit_scores(emb, probe_sets, self.action_names, self.seed, frozen)
        for e_k, sc in enumerate(per):
            if phase_end is not None:  # freeze this phase's read-out: its frozen cell is the task probe's
                (frozen if circ is None else frozen[e_k])[phase_end] = sc["readouts"][phase_end]
                sc["frozen_acc"][phase_end], sc["frozen_acc_se"][phase_end] = sc["acc_agg"][phase_end], sc["acc_agg_se"][phase_end]
        sc = per[-1]  # one column's, or the vote's: the summary's numbers
        k = len(self.evals)
        self.evals.append({"phase": phase_name, "step": step, **{n: v for n, v in sc.items() if n != "readouts"},
                           **({f"col_{n}": np.array([p[n] for p in per], dtype=np.float64) for n in COLUMN_SUMMARY_KEYS}
                              if circ is not None else {})})
        coords = self._coords(k, step, phase_name, sc)
        if self.protocol.record.probe:
            self._record_probe(emb, coords)
        if circ is not None:
            self.recorder.record_eval("evaluation", circuit_eval_data(per, EVAL_SET_KEYS, EVAL_SCALAR_KEYS), coords)
        else:
            self.recorder.record_eval("evaluation", _evaluation_data(sc), coords)
        self.seconds += time.perf_counter() - te

    def _coords(self, k: int, step: int, phase_name: str, sc: dict) -> dict:
        coords = {S.EVAL: ((S.EVAL,), np.array([k])), "step": ((S.EVAL,), np.array([step], dtype=np.int64)),
                  "phase": ((S.EVAL,), np.array([phase_name], dtype="<U64")),
                  S.PROBE_SET: ((S.PROBE_SET,), np.array(self.names, dtype="<U64")),
                  S.ACTION_DIM: ((S.ACTION_DIM,), np.array(self.action_names, dtype="<U64")),
                  S.BLOCK: ((S.BLOCK,), np.array([f"block{i}" for i in range(sc["block_pred_loss"].shape[1])],
                                                 dtype="<U64"))}
        if self.circ is not None:
            coords[S.COLUMN] = ((S.COLUMN,), np.array(self.entries, dtype="<U64"))
        if "layer_names" in sc:  # a column that reads its layers out (colsim.evaluate.layer_readout_scores)
            coords[S.READOUT_LAYER] = ((S.READOUT_LAYER,), np.array(sc["layer_names"], dtype="<U64"))
        return coords

    def _record_probe(self, emb, coords: dict) -> None:
        probe_sets = self.probe_sets
        static = {
            "actions": ((S.PROBE_SET, S.SAMPLE, S.VIEW, S.ACTION_DIM), np.stack([p.actions.numpy() for p in probe_sets])),
        }
        for lab in probe_sets[0].labels:  # every label the world's probe sets carry (class, image, angle, ...)
            if all(lab in p.labels for p in probe_sets):
                arr = np.stack([p.labels[lab].numpy() for p in probe_sets])  # (P, N) or (P, N, V, ...)
                static[f"label_{lab}"] = ((S.PROBE_SET, *S.label_layout(lab, arr.ndim - 1)), arr)
        spk, spk_static = spiking_probe_arrays(emb)  # spike counts and a raster (spiking columns only)
        zs = circuit_probe_data(emb) if self.circ is not None else {
            "z": (S.z_layout(), emb.z[None].astype(np.float32)),
            "z_agg": (S.z_agg_layout(), emb.z_agg[None].astype(np.float32))}
        self.recorder.record_eval("probe", {**zs, **spk}, {n: c for n, c in coords.items()
                                                         if n not in (S.BLOCK, S.READOUT_LAYER)},
                                  {**static, **spk_static})


def _evaluation_data(sc: dict) -> dict:
    """One column's evaluation row as the ``evaluation`` group's variables, with their dimension names."""
    data = {}
    for n in EVAL_SET_KEYS:
        data[n] = (S.evaluation_layout("set"), np.asarray(sc[n], dtype=np.float64)[None])
    for n in EVAL_SCALAR_KEYS:
        data[n] = (S.evaluation_layout("scalar"), np.array([sc[n]], dtype=np.float64))
    for n in ("equivariance_r2_dim", "equivariance_r2_dim_se"):
        data[n] = (S.evaluation_layout("dim"), np.asarray(sc[n], dtype=np.float64)[None])
    for n in ("equivariance_r2_set_dim", "equivariance_r2_set_dim_se"):
        data[n] = (S.evaluation_layout("set_dim"), np.asarray(sc[n], dtype=np.float64)[None])
    data["block_pred_loss"] = (S.evaluation_layout("block"), np.asarray(sc["block_pred_loss"], np.float64)[None])
    for n in LAYER_READOUT_KEYS:  # a column that reads its layers out (colsim.evaluate.layer_readout_scores)
        if n in sc:
            data[n] = (S.evaluation_layout("readout"), np.asarray(sc[n], dtype=np.float64)[None])
    for n in HEAD_SET_KEYS:  # a supervised column's own heads (colsim.evaluate.head_accuracy)
        if n in sc:
            data[n] = (S.evaluation_layout("set"), np.asarray(sc[n], dtype=np.float64)[None])
    return data


def readouts_to_tensors(frozen: dict, circuit: bool = False) -> dict:
    """Frozen read-outs as plain tensors (checkpoints load with ``weights_only=True``); a circuit's under
    ``"<entry>:<probe set>"``."""
    if circuit:
        return {f"{k}:{j}": v for k, fr in frozen.items() for j, v in readouts_to_tensors(fr).items()}
    return {str(j): {f: torch.as_tensor(np.asarray(getattr(r, f))) for f in r._fields}
            for j, r in frozen.items() if r is not None}


def readouts_from_tensors(d: dict, circuit: bool = False) -> dict:
    from colsim.analysis.probes import LinearReadout

    if circuit:
        out: dict = {}
        for key, r in d.items():
            k, j = (int(x) for x in key.split(":"))
            out.setdefault(k, {})[j] = LinearReadout(**{f: v.cpu().numpy() for f, v in r.items()})
        return out
    return {int(j): LinearReadout(**{f: v.cpu().numpy() for f, v in r.items()}) for j, r in d.items()}


