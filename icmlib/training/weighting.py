"""Loss-weighting strategies: who decides ``w_rate``, ``w_mse`` and ``w_task`` at each step.

The ICM loss (eq. 3 of Le et al., ICASSP 2021) is

    L_total = w_rate · L_rate + w_mse · L_mse + w_task · L_task

with ``L_rate`` in bits per pixel, ``L_mse`` on the 0–255 scale and ``L_task`` the frozen
task network's own loss (see ``icmlib.codec.losses``). The three terms pull in different
directions — fewer bits, a faithful image, a happy task network — and their raw sizes
differ by orders of magnitude, so *how* they are weighted decides what the codec learns.

Every strategy here has the same small interface::

    strategy.weights(step, terms) -> {"rate": w_rate, "mse": w_mse, "task": w_task}
    strategy.state_dict() / strategy.load_state_dict(state)    # for --resume

``step`` counts from 0; ``terms`` are the current batch's loss values as plain floats
(the trainer passes ``{"rate", "mse", "task"}``; strategies that only follow a schedule
ignore them). The trainer logs every weight at every step.

The operating point
-------------------
All strategies share one convention: ``w_rate = 1`` and the distortion weights are
multiples of the rate point's λ (``preset.rd_lambdas[i]``). With ``w_task = 0`` and
``w_mse = λ`` this is exactly CompressAI's ``L = R + λ·255²·MSE``, the MSE (human-vision)
baseline. Scaling every distortion weight by the same λ means that "rate point ``i``"
means the same bits-versus-distortion exchange rate for every strategy, so codecs trained
with different strategies at the same ``i`` are comparable. (Fixing ``w_rate`` and scaling
the distortion weights is the same trade-off as fixing the distortion weights and
scaling ``w_rate`` by ``1/λ``; the former keeps the MSE codec identical to CompressAI's.)

Two constants from the preset turn λ into ICM weights:

* ``preset.icm_task_weight`` (τ): full-strength task weight is ``w_task = τ·λ``. τ converts
  the task loss (≈ 0.1–2 for a detector) into "MSE-equivalent" units (``L_mse`` is tens
  to thousands). What matters is the gradient each term sends into x̂: measured on the
  ``ci`` world (MSE codec, detector; 4 batches), ‖∇L_task‖ / ‖∇L_mse‖ ≈ 0.0014, so with
  τ = 100 and μ = 0.1 the task term's gradient is ≈ 1.4× the MSE term's at full
  strength, and it grows as the codec's MSE (and so the MSE gradient) shrinks. The value
  is a choice, not the paper's (which gives none); it was not tuned on the ``cpu`` world.
* ``preset.icm_mse_weight`` (μ): the fraction of λ the MSE term keeps in an ICM codec,
  ``w_mse = μ·λ``. A small MSE term keeps x̂ image-like (the task network was trained on
  real images, and off-manifold images fool it), while leaving the bits to the task.

The strategies
--------------
``Fixed``     constant weights. ``fixed_weights(...)`` gives the ICM end point
              ``(1, μλ, τλ)`` — where the dynamic strategy ends — and the MSE baseline
              ``(1, λ, 0)``.
``Dynamic``   the paper's strategy, as we implement it (see its docstring for exactly
              what the paper says and which constants are ours).
``Magnitude`` an automatic balancing strategy from the multi-task literature: each
              distortion term is divided by its running magnitude, so each keeps a set
              share of the distortion budget whatever its raw scale.

``make_strategy(name, ...)`` builds one by name: ``"mse"``, ``"fixed"``, ``"dynamic"``,
``"auto"`` (= ``Magnitude``).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

#: Strategy names accepted by ``make_strategy`` (and ``icm train --strategy``).
STRATEGIES = ("mse", "fixed", "dynamic", "auto")


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value}")
    return value


class WeightingStrategy:
    """Base class: the interface every strategy implements (see the module docstring)."""

    #: Short name used in logs, cache keys and the CLI.
    name = "base"
    #: True if the strategy needs the task term at all (False for the MSE baseline).
    uses_task = True

    def weights(self, step: int, terms: Mapping[str, float]) -> Dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> Dict:
        """Everything ``weights`` depends on besides ``step`` and ``terms``."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass

    def describe(self) -> str:
        """One line for logs and the book."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class Fixed(WeightingStrategy):
    """Constant weights ``(w_rate, w_mse, w_task)`` for the whole run."""

    name = "fixed"

    def __init__(self, rate: float = 1.0, mse: float = 0.0, task: float = 0.0):
        self.w = {"rate": _check_weight("rate", rate), "mse": _check_weight("mse", mse),
                  "task": _check_weight("task", task)}
        if self.w["mse"] == 0 and self.w["task"] == 0:
            raise ValueError("fixed weights need w_mse > 0 or w_task > 0: with only the "
                             "rate term the codec learns to send nothing")
        self.uses_task = self.w["task"] > 0

    def weights(self, step: int, terms: Mapping[str, float]) -> Dict[str, float]:
        return dict(self.w)

    def describe(self) -> str:
        return "fixed: " + ", ".join(f"w_{k}={v:.4g}" for k, v in self.w.items())


def fixed_weights(lmbda: float, task: bool, task_weight: float, mse_weight: float) -> Dict[str, float]:
    """The constant weights at rate point λ: ICM ``(1, μλ, τλ)`` or MSE ``(1, λ, 0)``."""
    if task:
        return {"rate": 1.0, "mse": mse_weight * lmbda, "task": task_weight * lmbda}
    return {"rate": 1.0, "mse": lmbda, "task": 0.0}


class Dynamic(WeightingStrategy):
    """The paper's dynamic loss weighting, with the constants it leaves open made explicit.

    What Le et al. (ICASSP 2021, arXiv:2108.09993) tell us: training balances competing
    losses (task, MSE, rate) with "a set of training strategies" rather than one fixed
    weighting; the MSE term is there to help the codec learn to *reconstruct* early on,
    when the task loss alone gives a poor, hard-to-follow signal; later the task loss is
    what matters; the rate weight selects the operating point (one codec per rate). The
    text we could retrieve gives no schedule shape and no constants, so this class
    implements that description with constants of our own:

    ``progress p = step / total_steps``:

    1. **reconstruct** (``p < warmup``, default 0.1): ``w_mse = λ``, ``w_task = 0`` —
       the MSE baseline's loss, so the codec (or an MSE-pretrained one, see
       ``train_codec(init_from=...)``) settles at the rate point first.
    2. **hand over** (``warmup ≤ p < ramp_end``, default 0.5): with
       ``s = (1 - cos(π·u)) / 2``, ``u = (p - warmup) / (ramp_end - warmup)`` (a smooth
       0→1 ramp with zero slope at both ends, so no step in the loss),
       ``w_task = s·τλ`` rises linearly-in-s to full strength and
       ``w_mse = λ·μ^s`` falls *geometrically* from λ to μλ (the MSE term's size spans a
       decade or more, so a geometric decay spends equal time per factor).
    3. **task** (``p ≥ ramp_end``): ``w_mse = μλ``, ``w_task = τλ`` — the same weights as
       ``Fixed`` at this rate point, so dynamic and fixed differ only in the path, not
       in the destination. That is the comparison the book makes.

    ``w_rate = 1`` throughout (see the module docstring on the operating point).
    The schedule depends on ``step`` only, so resuming needs no state beyond the step.
    """

    name = "dynamic"

    def __init__(self, lmbda: float, total_steps: int, task_weight: float,
                 mse_weight: float, warmup: float = 0.1, ramp_end: float = 0.5):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup <= ramp_end <= 1:
            raise ValueError(f"need 0 <= warmup ({warmup}) <= ramp_end ({ramp_end}) <= 1")
        if not 0 < mse_weight <= 1:
            raise ValueError(f"mse_weight (μ, the share of λ the MSE term keeps) must be in "
                             f"(0, 1], got {mse_weight}")
        self.lmbda = _check_weight("lambda", lmbda)
        self.total_steps = int(total_steps)
        self.task_weight = _check_weight("task_weight", task_weight)
        self.mse_weight = float(mse_weight)
        self.warmup, self.ramp_end = float(warmup), float(ramp_end)

    def ramp(self, step: int) -> float:
        """The hand-over fraction s(step) in [0, 1]."""
        p = step / self.total_steps
        if p < self.warmup:
            return 0.0
        if p >= self.ramp_end or self.ramp_end == self.warmup:
            return 1.0
        u = (p - self.warmup) / (self.ramp_end - self.warmup)
        return 0.5 * (1.0 - math.cos(math.pi * u))

    def weights(self, step: int, terms: Mapping[str, float]) -> Dict[str, float]:
        s = self.ramp(step)
        return {"rate": 1.0,
                "mse": self.lmbda * self.mse_weight ** s,
                "task": self.lmbda * self.task_weight * s}

    def describe(self) -> str:
        return (f"dynamic: λ={self.lmbda:g}, MSE only until {self.warmup:.0%} of "
                f"{self.total_steps} steps, cosine hand-over to w_task={self.task_weight:g}λ, "
                f"w_mse={self.mse_weight:g}λ by {self.ramp_end:.0%}")


class Magnitude(WeightingStrategy):
    """Automatic balancing by running magnitude ("auto").

    A common multi-task recipe (loss normalisation; it is also what Kendall et al.'s
    uncertainty weighting, CVPR 2018, converges to, since their optimal weight for a
    term is 1/(2·L)): divide each term by a running estimate of its own size so that no
    term dominates just because of its units. Here it is applied to the *distortion*
    terms only — the rate term keeps ``w_rate = 1`` so the rate point still sets the
    operating point:

    1. **calibrate** (the first ``calib_steps``): the fixed weights
       ``Fixed``/``fixed_weights`` are used while exponential moving averages
       ``m_k`` (momentum β) of each distortion term are collected. At the end the
       distortion budget ``D = Σ_k w_k·m_k`` (what the fixed weights spent) is frozen.
    2. **balance**: ``w_k = share_k · D / m_k``, so each term contributes ``share_k·D``
       to the loss whatever its raw size (default: equal shares). Because
       ``∇(L_k / m_k) ≈ ∇ log L_k``, this trains rate against *log*-distortions —
       relative improvements of each term count equally, which for the MSE is the same
       as weighting PSNR.

    Its state (the averages, the budget) is saved in checkpoints, so a resumed run
    continues with the same weights. With ``task=False`` only the MSE term is balanced
    (a rate–log-MSE codec).
    """

    name = "auto"

    def __init__(self, lmbda: float, task: bool, task_weight: float, mse_weight: float,
                 calib_steps: int = 10, momentum: float = 0.9,
                 shares: Optional[Mapping[str, float]] = None):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.lmbda = _check_weight("lambda", lmbda)
        self.uses_task = bool(task)
        self.start = fixed_weights(lmbda, task, task_weight, mse_weight)
        self.calib_steps = max(int(calib_steps), 1)
        self.momentum = float(momentum)
        self.keys = ("mse", "task") if task else ("mse",)
        shares = dict(shares) if shares else {k: 1.0 / len(self.keys) for k in self.keys}
        if set(shares) != set(self.keys) or any(v <= 0 for v in shares.values()):
            raise ValueError(f"shares must give a positive share for each of {self.keys}, "
                             f"got {shares}")
        total = sum(shares.values())
        self.shares = {k: v / total for k, v in shares.items()}
        self.ema: Dict[str, float] = {}
        self.budget: Optional[float] = None
        self.seen = 0

    def _update(self, terms: Mapping[str, float]) -> None:
        for k in self.keys:
            v = float(terms[k])
            if not math.isfinite(v):
                return  # the trainer stops on a non-finite loss; keep the averages clean
        for k in self.keys:
            v = max(float(terms[k]), 1e-12)
            self.ema[k] = v if k not in self.ema else self.momentum * self.ema[k] + (1 - self.momentum) * v
        self.seen += 1

    def weights(self, step: int, terms: Mapping[str, float]) -> Dict[str, float]:
        self._update(terms)
        if self.budget is None:
            if self.seen < self.calib_steps:
                return dict(self.start)
            self.budget = sum(self.start[k] * self.ema[k] for k in self.keys)
        w = {"rate": 1.0, "mse": 0.0, "task": 0.0}
        for k in self.keys:
            w[k] = self.shares[k] * self.budget / self.ema[k]
        return w

    def state_dict(self) -> Dict:
        return {"ema": dict(self.ema), "budget": self.budget, "seen": self.seen}

    def load_state_dict(self, state: Mapping) -> None:
        self.ema = dict(state["ema"])
        self.budget = state["budget"]
        self.seen = int(state["seen"])

    def describe(self) -> str:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in self.shares.items())
        return (f"auto: λ={self.lmbda:g}, fixed weights for {self.calib_steps} steps, then each "
                f"distortion term ÷ its running size (β={self.momentum:g}); shares {shares}")


def make_strategy(name: str, lmbda, total_steps: int, task: bool, preset) -> WeightingStrategy:
    """Build strategy ``name`` for rate point λ with the preset's constants.

    ``task`` says whether a task network is attached; ``"mse"`` must not have one and
    the ICM strategies must. ``lmbda`` may be a sequence of λ (a variable-rate codec):
    the result is a :class:`PerRate` with one strategy per rate point.
    """
    if isinstance(lmbda, (list, tuple)):
        cycle = len(lmbda)
        return PerRate([_make_one(name, l, total_steps, task, preset, cycle) for l in lmbda])
    return _make_one(name, lmbda, total_steps, task, preset, 1)


def _make_one(name: str, lmbda: float, total_steps: int, task: bool, preset,
              cycle: int) -> WeightingStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown weighting strategy {name!r}; choose one of {STRATEGIES}")
    if name == "mse":
        if task:
            raise ValueError("strategy 'mse' is the human-vision baseline and takes no task; "
                             "use 'fixed', 'dynamic' or 'auto' with a task")
        return Fixed(**fixed_weights(lmbda, False, 0.0, 1.0))
    tau, mu = preset.icm_task_weight, preset.icm_mse_weight
    if name == "fixed":
        if not task:
            raise ValueError("the fixed ICM weights include a task term: give a task, or use "
                             "strategy 'mse' for the human-vision baseline")
        return Fixed(**fixed_weights(lmbda, True, tau, mu))
    if name == "dynamic":
        if not task:
            raise ValueError("the dynamic strategy hands over from MSE to the task loss: "
                             "it needs a task ('detection', 'instance' or 'semantic')")
        return Dynamic(lmbda, total_steps, tau, mu, preset.weighting_warmup,
                       preset.weighting_ramp_end)
    # auto calibrates on its own steps: with ``cycle`` rate points it sees 1 step in cycle
    calib = max(1, int(round(preset.weighting_warmup * total_steps / cycle)))
    return Magnitude(lmbda, task, tau, mu, calib_steps=calib, momentum=preset.auto_momentum)


def rate_at(step: int, rates: int) -> int:
    """The rate point a variable-rate codec trains at step ``step``: they take turns."""
    return int(step) % int(rates)


class PerRate(WeightingStrategy):
    """The weighting of a variable-rate codec: one strategy per rate point, each used on
    the steps that train its rate (:func:`rate_at`). The schedules (``dynamic``) run on
    the global step, so every rate point hands over from MSE to the task together."""

    def __init__(self, strategies: Sequence[WeightingStrategy]):
        if not strategies:
            raise ValueError("PerRate needs at least one strategy")
        self.strategies = list(strategies)
        self.name = self.strategies[0].name
        self.uses_task = self.strategies[0].uses_task

    def weights(self, step: int, terms: Mapping[str, float]) -> Dict[str, float]:
        return self.strategies[rate_at(step, len(self.strategies))].weights(step, terms)

    def state_dict(self) -> Dict:
        return {"per_rate": [s.state_dict() for s in self.strategies]}

    def load_state_dict(self, state: Mapping) -> None:
        for s, st in zip(self.strategies, state["per_rate"]):
            s.load_state_dict(st)

    def describe(self) -> str:
        return (f"{len(self.strategies)} rate points taking turns, each: "
                + "; ".join(s.describe() for s in self.strategies))


def schedule(strategy: WeightingStrategy, total_steps: int,
             terms: Optional[Sequence[Mapping[str, float]]] = None) -> Dict[str, list]:
    """The weights a strategy gives over ``total_steps`` steps, for plotting.

    ``terms`` (one dict per step) feeds strategies that react to the losses (``auto``);
    without it those see constant losses of 1, so only the schedule-driven part shows.
    Works on a copy: the strategy itself is not advanced.
    """
    import copy

    s = copy.deepcopy(strategy)
    out: Dict[str, list] = {"step": [], "rate": [], "mse": [], "task": []}
    for step in range(int(total_steps)):
        t = terms[step] if terms is not None else {"rate": 1.0, "mse": 1.0, "task": 1.0}
        w = s.weights(step, t)
        out["step"].append(step)
        for k in ("rate", "mse", "task"):
            out[k].append(w[k])
    return out
