"""The empirical leakage audit: canaries in, one federated run, attacks, audit, controls.

PRIVACY.md section 5. One audit trains the real learner (:func:`run_federation`, synthetic
protocol, frozen MiniLM embeddings) on a federation with m canaries (record-level pairs or
user-level clients, each in with probability 1/2; :mod:`fedvpa_secure.train.canaries`), scores
every canary by the published global model's Bradley-Terry loss on it, and turns the scores into

* membership inference statistics (:mod:`privacy.mia`): loss threshold (Yeom et al. 2018) and,
  with reference models, offline LiRA (Carlini et al. 2022): ROC, AUC +- DeLong SE, TPR at 1% and
  0.1% FPR;
* the one-run audit (Steinke, Nasr, Jagielski 2023; :mod:`privacy.one_run_audit`) with k+ and k-
  fixed before any score is seen (defaults m // 4 each), giving an epsilon lower bound;
* for DP runs, the Clopper-Pearson check TPR <= e^eps FPR + delta at every threshold against the
  accountant's epsilon.

The harness proves nothing without its controls, so :func:`empirical_audit` runs them itself:
a positive control (no DP, many local steps, the same mislabelled canaries: it must detect
leakage) and a negative control (the same run with canaries never inserted: AUC within
0.5 +- 3 SE). Reference models for LiRA are trained by the same procedure WITHOUT any canary
(offline LiRA needs only OUT models), so they are valid for every canary at once.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedvpa_secure.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from fedvpa_secure.data import build_federated_data
from fedvpa_secure.data.types import ClientData, FederatedData
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.backbone import pick_device
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.aggregation import Aggregator, plain_sum
from fedvpa_secure.train.canaries import LEVELS, CanarySet, record_canaries, user_canaries
from fedvpa_secure.train.dp_config import allow_test_mutants
from fedvpa_secure.train.evaluate import EvalEpisodes
from fedvpa_secure.train.features import PreparedClients, prepare_clients
from fedvpa_secure.train.federation import run_federation
from fedvpa_secure.train.leakage_dp import (
    DPSettings,
    UserDPAggregator,
    claimed_epsilon,
    record_dp_config,
)
from fedvpa_secure.train.tensors import ClientTensors, frozen_client_tensors, make_batch

log = logging.getLogger(__name__)

AUDIT_JSON = "audit.json"
ROC_PNG = "roc.png"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LeakageSettings:
    """One empirical audit: canaries, the federation, the attack and the audit parameters.

    The defaults are CI-sized (seconds per training run on two CPU cores).
    """

    level: str = "record"
    canaries: int = 64
    k_plus: int | None = None  # default m // 4, fixed before scoring
    k_minus: int | None = None
    confidence: float = 0.95
    delta: float = 1e-5
    reference_models: int = 2
    audit_attack: str = "loss"  # which attack's scores the one-run audit uses, fixed in advance
    seed: int = 0
    method: str = "fedvpa-gp"
    n_clients: int = 8
    pairs_per_client: int = 32
    pairs_per_canary: int = 24
    n_eval_clients: int = 2
    rounds: int = 8
    local_steps: int = 5
    learning_rate: float = 0.1
    context_size: int = 8
    query_size: int = 8
    episodes_per_step: int = 8
    positive_local_steps: int = 40
    positive_rounds: int = 12
    device: str = "cpu"
    cache_dir: str = ".cache/embeddings"
    dp: DPSettings | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"level={self.level!r} is invalid: expected one of {LEVELS}")
        if self.canaries < 4:
            raise ConfigError(f"canaries={self.canaries} is invalid: expected >= 4")
        kp, km = self.guesses
        if kp < 0 or km < 0 or kp + km == 0 or kp + km > self.canaries:
            raise ConfigError(
                f"k_plus={kp}, k_minus={km} are invalid: need 0 < k+ + k- <= canaries "
                f"({self.canaries})"
            )
        if self.audit_attack not in ("loss", "lira"):
            raise ConfigError(f"audit_attack={self.audit_attack!r} is invalid: loss or lira")
        if self.audit_attack == "lira" and self.reference_models < 2:
            raise ConfigError("audit_attack='lira' needs reference_models >= 2")
        if self.reference_models == 1:
            raise ConfigError("reference_models=1 is invalid: offline LiRA needs 0 or >= 2")
        if self.dp is not None and self.dp.level != self.level:
            raise ConfigError(
                f"DP level {self.dp.level!r} differs from the canary level {self.level!r}: a "
                "record-level guarantee is audited with record canaries, user-level with users"
            )

    @property
    def guesses(self) -> tuple[int, int]:
        """(k+, k-): fixed from m alone, never from the scores."""
        default = max(1, self.canaries // 4)
        return (
            default if self.k_plus is None else self.k_plus,
            default if self.k_minus is None else self.k_minus,
        )

    def experiment_config(
        self, *, overfit: bool = False, seed: int | None = None
    ) -> ExperimentConfig:
        """The learner's configuration for one training run of this audit."""
        return ExperimentConfig(
            method=self.method,
            device=self.device,
            cache_dir=self.cache_dir,
            model=ModelConfig(),
            train=TrainConfig(
                rounds=self.positive_rounds if overfit else self.rounds,
                clients_per_round=0,
                local_steps=self.positive_local_steps if overfit else self.local_steps,
                episodes_per_step=self.episodes_per_step,
                context_size=self.context_size,
                query_size=self.query_size,
                learning_rate=self.learning_rate,
                seed=self.seed if seed is None else seed,
            ),
            data=DataConfig(
                protocol="synthetic",
                n_clients=self.n_clients,
                n_eval_clients=self.n_eval_clients,
                pairs_per_client=self.pairs_per_client,
                eval_pairs_per_client=self.pairs_per_client,
            ),
        )


@dataclass
class Trial:
    """One trained model's view of the canaries."""

    label: str
    loss: np.ndarray  # mean BT loss on each canary's query pairs
    confidence: np.ndarray  # mean signed logit (logit-scaled confidence of the true label)
    accountant_epsilon: float | None = None
    noise_multiplier: float | None = None
    seconds: float = 0.0
    eval_accuracy: float = float("nan")
    extra: dict = field(default_factory=dict)


class _Embeddings:
    """Text -> frozen embedding, filled once from one :func:`prepare_clients` call."""

    def __init__(self, clients: Sequence[ClientData], tensors: Sequence[ClientTensors]) -> None:
        self.rows: dict[str, np.ndarray] = {}
        for c, t in zip(clients, tensors, strict=True):
            for i, p in enumerate(c.pairs):
                self.rows[p.text_a()] = t.emb_a[i].numpy()
                self.rows[p.text_b()] = t.emb_b[i].numpy()

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.rows[t] for t in texts]).astype(np.float32)


class LeakageHarness:
    """Everything shared by the runs of one audit: data, canaries, embeddings, device."""

    def __init__(self, settings: LeakageSettings, progress: Progress | None = None) -> None:
        self.s = settings
        self.say = progress or (lambda msg: log.info("%s", msg))
        self.device = pick_device(settings.device)
        if settings.dp is not None and settings.dp.level == "record":
            record_dp_config(settings.dp)  # fails early on an invalid learner DP config
        self.base = build_federated_data(
            "synthetic",
            None,
            n_clients=settings.n_clients,
            pairs_per_client=settings.pairs_per_client,
            n_eval_clients=settings.n_eval_clients,
            seed=settings.seed,
        )
        self.user_types = list(self.base.user_types)
        self.with_canaries, self.canaries = self._canaries(insert=True)
        _, self.never_inserted = self._canaries(insert=False)
        probes = [p.client for p in self.canaries.probes]
        cfg = settings.experiment_config()
        self.say(f"embedding texts of {len(probes)} canary probes and the federation")
        prepared = prepare_clients(
            self.base.train_clients,
            (*self.base.eval_clients, *probes),
            self.user_types,
            cfg.model,
            cfg.cache_dir,
            self.device,
        )
        if prepared.backbone is not None:
            raise ConfigError("the leakage harness runs in frozen mode only")
        self.embed_dim = prepared.embed_dim
        n_eval = len(self.base.eval_clients)
        self.eval_tensors = prepared.eval[:n_eval]
        self.probe_tensors = prepared.eval[n_eval:]
        self.embed = _Embeddings(
            (*self.base.train_clients, *self.base.eval_clients, *probes),
            (*prepared.train, *prepared.eval),
        )

    def _canaries(self, insert: bool) -> tuple[FederatedData, CanarySet]:
        s = self.s
        if s.level == "record":
            return record_canaries(self.base, s.canaries, s.seed, s.context_size, insert)
        return user_canaries(
            self.base, s.canaries, s.seed, s.pairs_per_canary, s.context_size, insert
        )

    # -- one training run ----------------------------------------------------------------------
    def train(
        self,
        label: str,
        data: FederatedData,
        cfg: ExperimentConfig,
        dp: DPSettings | None,
        ledger_path: Path | None = None,
    ) -> tuple[PreferenceModel, Trial]:
        """Train the global model on ``data`` (the real round loop) and return it."""
        start = time.perf_counter()
        train = frozen_client_tensors(data.train_clients, self.user_types, self.embed)
        prepared = PreparedClients(train, list(self.eval_tensors), self.embed_dim, None, {})
        from fedvpa_secure.train.experiment import build_model

        model = build_model(cfg, prepared, len(self.user_types), self.device)
        eval_eps = EvalEpisodes.for_unseen_users(prepared.eval, cfg.train)
        reference = EvalEpisodes.build(train, cfg.train.context_size, cfg.train.seed + 2)
        aggregate: Aggregator = plain_sum
        z = eps = None
        privacy_dir = None
        if dp is not None and dp.level == "user":
            z = dp.resolved_noise(cfg.train.rounds)
            eps = claimed_epsilon(dp, z, cfg.train.rounds)
            aggregate = UserDPAggregator(dp, z, cfg.train.seed, ledger_path, cfg.train.rounds)
        elif dp is not None:  # record level: the learner's own DP-SGD through cfg.dp
            cfg = replace(cfg, dp=record_dp_config(dp))
            privacy_dir = tempfile.mkdtemp(
                prefix=f"{label.replace(' ', '-')}-",
                dir=None if ledger_path is None else ledger_path.parent,
            )
        with allow_test_mutants():  # record-level mutants (DPConfig.mutant) run only here
            history = run_federation(
                model,
                train,
                eval_eps,
                reference,
                self.user_types,
                cfg,
                self.device,
                aggregate,
                privacy_dir=privacy_dir,
            )
        if history.privacy is not None:  # record level: the worst client's ledger epsilon
            eps = float(history.privacy["epsilon"])
            z = float(history.privacy["noise_multiplier"])
        loss, conf = self.score(model)
        bad = int((~np.isfinite(loss)).sum() + (~np.isfinite(conf)).sum())
        if bad:  # a diverged model (e.g. too much DP noise for the step size) still gets audited
            log.warning("%s: %d non-finite canary scores, mapped to the worst value", label, bad)
            loss = np.nan_to_num(loss, nan=1e6, posinf=1e6, neginf=-1e6)
            conf = np.nan_to_num(conf, nan=-1e6, posinf=1e6, neginf=-1e6)
        trial = Trial(
            label=label,
            loss=loss,
            confidence=conf,
            accountant_epsilon=eps,
            noise_multiplier=z,
            seconds=time.perf_counter() - start,
            eval_accuracy=history.rounds[-1].eval_accuracy if history.rounds else float("nan"),
        )
        if bad:
            trial.extra["non_finite_scores"] = bad
        if isinstance(aggregate, UserDPAggregator):
            trial.extra["max_update_norm"] = aggregate.max_norm_seen
        self.say(
            f"  {label}: trained in {trial.seconds:.1f}s, eval accuracy "
            f"{trial.eval_accuracy:.3f}, mean canary loss {float(loss.mean()):.3f}"
        )
        return model, trial

    @torch.no_grad()
    def score(self, model: PreferenceModel, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Each canary's mean BT loss and mean signed logit under ``model`` (posterior mean z)."""
        return probe_scores(
            model,
            self.probe_tensors,
            [(p.context, p.query) for p in self.canaries.probes],
            self.device,
            batch_size,
        )

    def references(self, cfg: ExperimentConfig, dp: DPSettings | None, label: str) -> np.ndarray:
        """Confidences under reference models trained WITHOUT canaries (offline LiRA)."""
        rows = []
        for j in range(self.s.reference_models):
            ref_cfg = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + 1000 + j))
            _, trial = self.train(f"{label} reference {j + 1}", self.base, ref_cfg, dp)
            rows.append(trial.confidence)
        return np.stack(rows) if rows else np.zeros((0, self.canaries.m))


@torch.no_grad()
def probe_scores(
    model: PreferenceModel,
    tensors: Sequence[ClientTensors],
    splits: Sequence[tuple[Sequence[int], Sequence[int]]],
    device: torch.device,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean Bradley-Terry loss and mean signed logit of each (context, query) probe.

    The signed logit y (r(a) - r(b)) with y = +-1 is log(p / (1 - p)) of the true label: the
    logit-scaled confidence LiRA fits Gaussians to (Carlini et al. 2022, section 4.1); the loss
    is softplus of its negative.
    """
    model.eval()
    items = [(t, tuple(c), tuple(q)) for t, (c, q) in zip(tensors, splits, strict=True)]
    losses, confs = [], []
    for start in range(0, len(items), batch_size):
        batch = make_batch(items[start : start + batch_size]).to(device)
        logits = model(batch, sample=False)["logits"]
        signed = torch.where(batch.query_label > 0.5, logits, -logits)
        mask = batch.query_mask.to(logits.dtype)
        n = mask.sum(-1).clamp(min=1.0)
        losses.append(((F.softplus(-signed) * mask).sum(-1) / n).cpu().numpy())
        confs.append(((signed * mask).sum(-1) / n).cpu().numpy())
    return np.concatenate(losses).astype(np.float64), np.concatenate(confs).astype(np.float64)


def analyse(
    trial: Trial,
    members: np.ndarray,
    references: np.ndarray,
    settings: LeakageSettings,
) -> tuple[dict, dict]:
    """Attacks, one-run audit and (for DP) the threshold check of one trial.

    Returns the JSON-ready section and the ROC curves by attack name. The audit (and the top-level
    AUC and TPR numbers) use the attack named by ``settings.audit_attack``, chosen before any
    score is seen: picking the better attack afterwards would be another hidden search.
    """
    from privacy.mia import evaluate_attack, lira_offline_scores, loss_threshold_scores
    from privacy.one_run_audit import check_dp_thresholds, one_run_audit

    attacks = {"loss": evaluate_attack("loss", loss_threshold_scores(trial.loss), members)}
    if references.shape[0] >= 2:
        lira = lira_offline_scores(trial.confidence, references)
        attacks["lira"] = evaluate_attack("lira", lira, members)
    primary = attacks[settings.audit_attack]
    kp, km = settings.guesses
    audit = one_run_audit(
        primary.scores, members, kp, km, delta=settings.delta, confidence=settings.confidence
    )
    section = {
        "attack": primary.name,
        "auc": primary.auc,
        "auc_se": primary.auc_se,
        "tpr_at_fpr_0.01": primary.tpr_at(0.01),
        "tpr_at_fpr_0.001": primary.tpr_at(0.001),
        "audited_epsilon": audit.epsilon_lower_bound,
        "accountant_epsilon": trial.accountant_epsilon,
        "one_run_audit": audit.to_dict(),
        "attacks": {name: a.summary() for name, a in attacks.items()},
        "members": int(members.sum()),
        "canaries": int(members.size),
        "mean_loss_in": float(trial.loss[members].mean()) if members.any() else None,
        "mean_loss_out": float(trial.loss[~members].mean()) if (~members).any() else None,
        "eval_accuracy": trial.eval_accuracy,
        "train_seconds": round(trial.seconds, 2),
        **({"noise_multiplier": trial.noise_multiplier} if trial.noise_multiplier else {}),
        **trial.extra,
    }
    if trial.accountant_epsilon is not None:
        check = check_dp_thresholds(
            primary.scores,
            members,
            trial.accountant_epsilon,
            settings.delta,
            settings.confidence,
        )
        section["threshold_check"] = check.to_dict()
        section["dp_consistent"] = bool(
            check.ok and audit.epsilon_lower_bound <= trial.accountant_epsilon
        )
    return section, {name: a.roc for name, a in attacks.items()}


def _run(
    h: LeakageHarness,
    label: str,
    *,
    insert: bool,
    overfit: bool,
    dp: DPSettings | None,
    references: np.ndarray | None,
    out_dir: Path | None,
) -> tuple[dict, dict, np.ndarray]:
    cfg = h.s.experiment_config(overfit=overfit)
    data = h.with_canaries if insert else h.base
    canaries = h.canaries if insert else h.never_inserted
    ledger = None if out_dir is None or dp is None else out_dir / f"{label}.server.ledger.jsonl"
    h.say(f"{label}: {canaries.m} {h.s.level} canaries, {int(canaries.members.sum())} inserted")
    _, trial = h.train(label, data, cfg, dp, ledger)
    if references is None:
        references = h.references(cfg, dp, label)
    section, curves = analyse(trial, canaries.included, references, h.s)
    return section, curves, references


def _within_null(section: dict) -> bool:
    return abs(section["auc"] - 0.5) <= 3 * section["auc_se"]


def empirical_audit(
    settings: LeakageSettings,
    out_dir: str | Path | None = None,
    *,
    controls: bool = True,
    progress: Progress | None = None,
) -> dict:
    """Run the audit (and its controls) and write OUT/audit.json and OUT/roc.png.

    Returns the report written to ``audit.json``. Its top level describes the audited run
    (``audited_epsilon``, ``accountant_epsilon`` - None without DP - ``auc``,
    ``tpr_at_fpr_0.01``, ...); ``positive_control`` and ``negative_control`` carry the same
    fields for the controls plus ``passed``.
    """
    from fedvpa_secure.train.experiment import write_json_atomic
    from privacy.mia import plot_roc

    started = time.perf_counter()
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    h = LeakageHarness(settings, progress)
    main, curves, refs = _run(
        h, "audited", insert=True, overfit=False, dp=settings.dp, references=None, out_dir=out
    )
    report: dict = {
        "level": settings.level,
        "dp": None if settings.dp is None else settings.dp.__dict__,
        **main,
    }
    all_curves = {f"audited ({k})": v for k, v in curves.items()}
    if controls:
        neg, neg_curves, _ = _run(
            h, "negative", insert=False, overfit=False, dp=settings.dp, references=refs, out_dir=out
        )
        neg["passed"] = _within_null(neg)
        pos, pos_curves, _ = _run(
            h, "positive", insert=True, overfit=True, dp=None, references=None, out_dir=out
        )
        pos["passed"] = bool(pos["auc"] >= 0.6 or pos["audited_epsilon"] >= 1.0)
        report["positive_control"] = pos
        report["negative_control"] = neg
        report["controls_passed"] = bool(pos["passed"] and neg["passed"])
        all_curves.update({f"positive control ({k})": v for k, v in pos_curves.items()})
        all_curves.update({f"negative control ({k})": v for k, v in neg_curves.items()})
    report["settings"] = {k: v for k, v in settings.__dict__.items() if k != "dp"} | {
        "k_plus": settings.guesses[0],
        "k_minus": settings.guesses[1],
    }
    report["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        report["roc_png"] = ROC_PNG
        plot_roc(all_curves, out / ROC_PNG, title=f"{settings.level}-level canaries")
        write_json_atomic(out / AUDIT_JSON, report)
    return report


__all__ = [
    "AUDIT_JSON",
    "ROC_PNG",
    "LeakageHarness",
    "LeakageSettings",
    "Trial",
    "analyse",
    "empirical_audit",
    "probe_scores",
]
