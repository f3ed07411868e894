"""Latency model of offline batches: fit on known accelerators, calibrate a new one.

Latency of an offline batch is a positive combination of the physical terms of
:mod:`mist.calibrate.batch_physics`, each scaled by an inefficiency ``exp(theta_j)``
(:data:`PARAMS`): prompt FLOPs and memory traffic under a roofline, per-pass and
per-sequence overheads, all-reduce hops and bytes, pipeline hand-offs, a run constant.

1. :func:`fit_group` fits ``theta`` of every (accelerator, framework) of the *other*
   accelerators on all their rows (log-space least squares, weak priors).
2. :func:`learn_prior` splits those fits into framework means plus accelerator effects
   (two-way, weighted by how well each parameter was identified) and measures how far
   accelerators and accelerator x framework interactions stray: the prior of a new one.
3. :func:`calibrate_joint` fits the target's ``theta`` of every framework from K rows
   drawn across them: a deviation shared by the accelerator's frameworks (Gaussian, sd
   the spread of the training accelerators' effects times the scale the K rows give the
   most evidence for) plus a tight per-framework one;
   :func:`calibrate` fits one framework alone on its rows (Student-t prior).  Both MAP,
   from several starts.

Everything is deterministic given the inputs (random starts use a fixed generator).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, nnls

from mist.calibrate.batch_physics import TERMS

#: parameter -> (meaning, default log value); times in the unit its name states.
PARAMS = {
    "const_1dev_s": ("run constant of one-device runs", np.log(0.05)),
    "const_multi_s": ("run constant of multi-device runs", np.log(0.05)),
    "prefill_ineff": ("peak / achieved FLOP/s of prompt passes", np.log(1.5)),
    "memory_ineff": ("peak / achieved bandwidth of weight reads", np.log(1.6)),
    "kv_ineff": ("KV-read inefficiency relative to weight reads", 0.0),
    "sliding_kv": ("extra KV-read cost of sliding-window models", np.log(0.1)),
    "step_ms": ("overhead per forward pass, ms", np.log(0.3)),
    "seq_step_ms": ("overhead per running sequence per pass, ms", np.log(0.02)),
    "allreduce_10us": ("latency per all-reduce hop, 10 us", np.log(2.0)),
    "link_ineff": ("peak / achieved link bandwidth", np.log(2.0)),
    "hop_ms": ("latency per pipeline hand-off, ms", np.log(1.0)),
}
NAMES = tuple(PARAMS)
DEFAULT = np.array([v for _, v in PARAMS.values()])
#: learned per framework from other accelerators only (a target's few points cannot pin it).
FRAMEWORK_ONLY = ("sliding_kv",)
DECODE_FLOP_INEFF = 2.0  # decode GEMMs at half of peak when compute-bound (roofline partner)
SIGMA_LOG = 0.1  # model error of one row in log latency (~10 %)
TRAIN_PRIOR_SD = 3.0  # weak prior of the per-group fits
PRIOR_FLOOR = 0.3  # smallest prior sd of a target parameter (log units)
IDENTIFIED_SD = 1.5  # a group's parameter informs the prior when its posterior sd is below
#: a framework's own deviation on a new accelerator: Gaussian, this share of the measured
#: interaction spread (with 0-3 of K points it would otherwise fit noise; the shared
#: accelerator deviation, Student-t, carries what the frameworks agree on).
INTERACTION_SCALE = 0.5
STARTS = 20
#: scales of the training accelerators' spread tried as a new accelerator's prior sd
#: (:func:`calibrate_joint` keeps the one its K rows give the most evidence for)
PRIOR_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)

_TI = {t: i for i, t in enumerate(TERMS)}
_PI = {p: i for i, p in enumerate(NAMES)}


def _smax(x: np.ndarray, y: np.ndarray, p: float = 6.0) -> np.ndarray:
    """Smooth maximum (p-norm): the roofline without a kink."""
    m = np.maximum(np.maximum(x, y), 1e-300)
    return m * ((x / m) ** p + (y / m) ** p) ** (1 / p)


def predict(theta: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Batch latency (s) of rows with physical ``terms`` under parameters ``theta``.

    Parameters
    ----------
    theta : array, shape (P,) or (n_rows, P)
        Log inefficiencies in :data:`NAMES` order.
    terms : array, shape (n_rows, len(TERMS))
        From :func:`mist.calibrate.batch_physics.batch_terms`.
    """
    e = np.exp(np.broadcast_to(theta, (len(terms), len(NAMES))))
    c = {t: terms[:, i] for t, i in _TI.items()}
    p = {n: e[:, i] for n, i in _PI.items()}
    prefill = _smax(p["prefill_ineff"] * c["prefill"], p["memory_ineff"] * c["prefill_weights"])
    memory = p["memory_ineff"] * (c["weights"] + p["kv_ineff"] * (c["kv"] + p["sliding_kv"] * c["kv_sliding"]))
    decode = _smax(memory, DECODE_FLOP_INEFF * c["decode_flops"])
    return (p["const_1dev_s"] * c["const_1dev"] + p["const_multi_s"] * c["const_multi"] + prefill
            + decode + p["step_ms"] * 1e-3 * c["steps"] + p["seq_step_ms"] * 1e-3 * c["seq_steps"]
            + p["allreduce_10us"] * 1e-5 * c["allreduce"] + p["link_ineff"] * c["allreduce_bytes"]
            + p["hop_ms"] * 1e-3 * c["hops"])


def _log_error(theta, terms, y):
    return np.log(predict(theta, terms)) - np.log(y)


def fit_group(terms: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit one (accelerator, framework) on all its rows.

    Returns
    -------
    theta : array (P,)
        MAP log inefficiencies (prior N(:data:`DEFAULT`, :data:`TRAIN_PRIOR_SD`)).
    sd : array (P,)
        Their posterior sd (Gauss-Newton); large = not identified by these rows.
    """
    def residual(th):
        return np.concatenate([_log_error(th, terms, y) / SIGMA_LOG, (th - DEFAULT) / TRAIN_PRIOR_SD])

    best = None
    for const in (DEFAULT[0], 1.0, 3.0):  # the run constant is often far from its default
        x0 = DEFAULT.copy()
        x0[[_PI["const_1dev_s"], _PI["const_multi_s"]]] = const
        r = least_squares(residual, x0, loss="soft_l1", f_scale=1.0)
        best = r if best is None or r.cost < best.cost else best
    jac = best.jac[: len(y)]
    hess = jac.T @ jac / SIGMA_LOG**2 + np.eye(len(NAMES)) / TRAIN_PRIOR_SD**2
    return best.x, np.sqrt(np.diag(np.linalg.inv(hess)))


@dataclass(frozen=True)
class Prior:
    """What other accelerators say about a new one's parameters (log units).

    Attributes
    ----------
    framework_mean : dict[str, ndarray]
        Per framework (case-folded), the parameters of a typical accelerator.
    overall : ndarray
        Mean over frameworks, for a framework no other accelerator ran.
    accelerator_sd, interaction_sd, framework_sd : ndarray
        Spread of accelerator effects, of accelerator x framework interactions, and of
        framework means: the prior sd of a new accelerator's deviation combines them.
    accelerator_effect : dict[str, ndarray]
        Fitted effect of each training accelerator (for reports).
    """

    framework_mean: dict
    overall: np.ndarray
    accelerator_sd: np.ndarray
    interaction_sd: np.ndarray
    framework_sd: np.ndarray
    accelerator_effect: dict = field(default_factory=dict)

    def mean_and_sd(self, framework: str) -> tuple[np.ndarray, np.ndarray]:
        """Prior mean and sd of the parameters of a new accelerator running ``framework``."""
        key = str(framework).casefold()
        var = self.accelerator_sd**2 + self.interaction_sd**2
        if key not in self.framework_mean:
            var = var + self.framework_sd**2
        return self.framework_mean.get(key, self.overall), np.maximum(np.sqrt(var), PRIOR_FLOOR)


def _median_where(mask: np.ndarray, values: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per column, the median of ``values`` where ``mask`` holds, else ``fallback``."""
    return np.array([np.median(values[mask[:, j], j]) if mask[:, j].any() else fallback[j]
                     for j in range(values.shape[1])])


def learn_prior(fits: dict, iterations: int = 10) -> Prior:
    """Split group fits ``{(accelerator, framework): (theta, sd)}`` into framework means
    and accelerator effects and measure the spreads.

    The split is Tukey's median polish over the parameters each group's rows informed
    (posterior sd below :data:`IDENTIFIED_SD`): medians, not precision-weighted means, so
    one accelerator whose runs pin a parameter tightly (a 17 s run constant, say) cannot
    become every framework's typical value.  With no fits at all the prior is
    :data:`DEFAULT` with sd 1 (weak, but finite).
    """
    if not fits:
        ones = np.ones(len(NAMES))
        return Prior({}, DEFAULT.copy(), ones, ones, ones)
    keys = sorted(fits)
    accs = sorted({a for a, _ in keys})
    fws = sorted({f.casefold() for _, f in keys})
    th = np.array([fits[k][0] for k in keys])
    informed = np.array([fits[k][1] for k in keys]) < IDENTIFIED_SD
    ai = np.array([accs.index(a) for a, _ in keys])
    fi = np.array([fws.index(f.casefold()) for _, f in keys])
    overall = _median_where(informed, th, DEFAULT)
    mean = np.tile(overall, (len(fws), 1))
    eff = np.zeros((len(accs), len(NAMES)))
    zero = np.zeros(len(NAMES))
    for _ in range(iterations):
        for f in range(len(fws)):
            rows = fi == f
            mean[f] = _median_where(informed[rows], th[rows] - eff[ai[rows]], overall)
        for a in range(len(accs)):
            rows = ai == a
            eff[a] = _median_where(informed[rows], th[rows] - mean[fi[rows]], zero)
    seen = np.array([informed[ai == a].any(0) for a in range(len(accs))])
    resid = np.where(informed, th - mean[fi] - eff[ai], np.nan)
    acc_sd = np.array([np.sqrt(np.mean(eff[seen[:, j], j] ** 2)) if seen[:, j].sum() >= 2 else 0.5
                       for j in range(len(NAMES))])
    counts = np.isfinite(resid).sum(0)
    sq = np.where(np.isfinite(resid), resid, 0.0) ** 2
    int_sd = np.where(counts >= 3, np.sqrt(sq.sum(0) / np.maximum(counts, 1)), 0.3)
    return Prior({f: mean[i] for i, f in enumerate(fws)}, overall, acc_sd, int_sd,
                 np.std(mean, 0), {a: eff[i] for i, a in enumerate(accs)})


def _robust_prior(u: np.ndarray) -> np.ndarray:
    """Residual whose square is the Student-t (nu = 1, Cauchy) negative log density."""
    return np.sign(u) * np.sqrt(np.log1p(u * u))


def _nnls_start(terms: np.ndarray, y: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """A data-driven start: relative-error non-negative least squares on the terms as a
    sum (roofline max -> sum), lightly pulled toward the prior mean."""
    c = {t: terms[:, i] for t, i in _TI.items()}
    cols = {"const_1dev_s": c["const_1dev"], "const_multi_s": c["const_multi"],
            "prefill_ineff": c["prefill"], "memory_ineff": c["weights"] + c["prefill_weights"],
            "kv_ineff": c["kv"], "step_ms": 1e-3 * c["steps"], "seq_step_ms": 1e-3 * c["seq_steps"],
            "allreduce_10us": 1e-5 * c["allreduce"], "link_ineff": c["allreduce_bytes"],
            "hop_ms": 1e-3 * c["hops"]}
    names = list(cols)
    w0 = np.exp([mean[_PI[n]] for n in names])
    w0[names.index("kv_ineff")] *= np.exp(mean[_PI["memory_ineff"]])
    a = np.column_stack([cols[n] for n in names]) / y[:, None]
    lam = 1e-2
    w, _ = nnls(np.vstack([a, np.sqrt(lam) * np.diag(1 / w0)]),
                np.concatenate([np.ones(len(y)), np.sqrt(lam) * np.ones(len(names))]))
    w = np.maximum(w, 1e-3 * w0)
    theta = mean.copy()
    for n, v in zip(names, np.log(w)):
        theta[_PI[n]] = v
    theta[_PI["kv_ineff"]] -= theta[_PI["memory_ineff"]]
    return theta


def calibrate_joint(terms: np.ndarray, y: np.ndarray, group: np.ndarray, prior: Prior,
                    frameworks: list, starts: int = STARTS, scales=PRIOR_SCALES) -> tuple[dict, float]:
    """MAP parameters of several frameworks of one new accelerator from rows of all of them.

    ``theta_f = mean_f + d + e_f``: a deviation ``d`` shared by the accelerator's
    frameworks (Gaussian, prior sd :attr:`Prior.accelerator_sd` times a scale) and one per
    framework (Gaussian, :data:`INTERACTION_SCALE` x :attr:`Prior.interaction_sd`, plus
    :attr:`Prior.framework_sd` for a framework no other accelerator ran), so a framework
    with few or no rows falls back on its mean plus what the accelerator's other
    frameworks' rows say. ``group[i]`` indexes ``frameworks`` for row i.

    The scale of ``d``'s prior is chosen among ``scales`` by the evidence of the K rows
    (:func:`_fit_joint`, a Laplace approximation): the training accelerators' spread is
    right for a device like them, and the rows themselves say when the device is not
    (Intel PVC's vLLM stack: a 17 s run constant where others have milliseconds), in
    which case a wider prior explains them better than its Occam penalty costs. (A
    Student-t prior instead let weakly identified parameters wander on unlucky draws.)

    Returns
    -------
    thetas : dict
        ``{framework: theta}``.
    scale : float
        The chosen prior scale.
    """
    best, x0 = None, None
    for i, scale in enumerate(sorted(scales)):
        # the first scale from ``starts`` starts; each wider one from the last optimum
        # and a quarter as many random starts (the optimum moves little between scales)
        fit = _fit_joint(terms, y, group, prior, frameworks, scale, starts if i == 0 else max(starts // 4, 1), x0)
        x0 = fit[3]
        best = fit if best is None or fit[1] > best[1] else best
    return best[0], best[2]


def _fit_joint(terms, y, group, prior: Prior, frameworks: list, scale: float, starts: int, x_first=None):
    """One MAP fit of :func:`calibrate_joint` at prior scale ``scale``: ``(thetas, log
    evidence, scale, optimum)``. The evidence is Laplace's, ``-cost - log det(J'J) / 2 -
    sum(log prior sd)`` (terms common to every scale dropped), with ``J`` the
    loss-weighted Jacobian of the residuals at the optimum. The first start is
    ``x_first`` (default: the prior mean), the others random from a fixed generator."""
    free = np.array([n not in FRAMEWORK_ONLY for n in NAMES])
    nf, nfree = len(frameworks), int(free.sum())
    means = np.array([prior.mean_and_sd(f)[0] for f in frameworks])
    acc_sd = scale * np.maximum(prior.accelerator_sd, PRIOR_FLOOR)[free]
    int_sd = INTERACTION_SCALE * np.array([np.maximum(np.sqrt(prior.interaction_sd**2 + (
        0 if str(f).casefold() in prior.framework_mean else prior.framework_sd**2)), PRIOR_FLOOR)[free]
        for f in frameworks])

    def thetas(v):
        th = means.copy()
        th[:, free] += v[:nfree] + v[nfree:].reshape(nf, nfree)
        return th

    def residual(v):
        th = thetas(v)[group]
        err = np.log(predict(th, terms)) - np.log(y)
        return np.concatenate([err / SIGMA_LOG, v[:nfree] / acc_sd,
                               (v[nfree:].reshape(nf, nfree) / int_sd).ravel()])

    rng = np.random.default_rng(0)
    best = None
    for i in range(starts):
        x0 = np.zeros(nfree * (1 + nf))
        if i:
            x0[:nfree] = rng.normal(0, 2 * np.maximum(acc_sd, 1.0))
        elif x_first is not None:
            x0 = x_first.copy()
        r = least_squares(residual, x0, loss="soft_l1", f_scale=2.0)
        best = r if best is None or r.cost < best.cost else best
    sign, logdet = np.linalg.slogdet(best.jac.T @ best.jac)
    evidence = -best.cost - 0.5 * logdet - np.log(acc_sd).sum() if sign > 0 else -np.inf
    return dict(zip(frameworks, thetas(best.x))), float(evidence), float(scale), best.x


def calibrate(terms: np.ndarray, y: np.ndarray, mean: np.ndarray, sd: np.ndarray,
              starts: int = STARTS) -> np.ndarray:
    """MAP parameters of one framework on a new accelerator from its measured rows.

    Parameters
    ----------
    terms, y : arrays
        Physical terms and measured latencies (s) of the calibration rows.
    mean, sd : arrays (P,)
        Prior (:meth:`Prior.mean_and_sd`); :data:`FRAMEWORK_ONLY` parameters stay at it.

    Returns
    -------
    ndarray (P,)
        Log inefficiencies; the best of ``starts`` local fits (zero deviation, an NNLS
        start, then random ones from a fixed generator).
    """
    free = np.array([n not in FRAMEWORK_ONLY for n in NAMES])

    def theta_of(v):
        th = mean.copy()
        th[free] += v
        return th

    def residual(v):
        return np.concatenate([_log_error(theta_of(v), terms, y) / SIGMA_LOG,
                               _robust_prior(v / sd[free])])

    rng = np.random.default_rng(0)
    inits = [np.zeros(free.sum()), (_nnls_start(terms, y, mean) - mean)[free]]
    best = None
    for i in range(max(starts, len(inits))):
        x0 = inits[i] if i < len(inits) else rng.normal(0, 2 * np.maximum(sd[free], 1.0))
        r = least_squares(residual, x0, loss="soft_l1", f_scale=2.0)
        best = r if best is None or r.cost < best.cost else best
    return theta_of(best.x)
