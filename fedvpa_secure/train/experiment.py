"""One experiment end to end: tensors, model, federation, evaluation, report and plots."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fedvpa_secure.atomic_json import write_json_atomic
from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.data.types import FederatedData
from fedvpa_secure.model.backbone import pick_device
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.aggregation import Aggregator, plain_sum
from fedvpa_secure.train.evaluate import EvalEpisodes, evaluate
from fedvpa_secure.train.features import PreparedClients, prepare_clients
from fedvpa_secure.train.federation import History, RoundRecord, run_federation
from fedvpa_secure.train.model_io import MODEL_FILE, save_global_model
from fedvpa_secure.train.plots import plot_latent_grid, plot_training_curves

log = logging.getLogger(__name__)


def build_model(
    cfg: ExperimentConfig, prepared: PreparedClients, n_types: int, device: torch.device
) -> PreferenceModel:
    torch.manual_seed(cfg.train.seed)
    model = PreferenceModel(
        cfg.spec,
        cfg.model,
        cfg.objective,
        prepared.embed_dim,
        n_types,
        prepared.backbone,
        seed=cfg.train.seed,
    )
    return model.to(device)


def privacy_report(history: History, aggregate: Aggregator) -> dict:
    """report.json's "privacy" section: each guarantee with its unit, (epsilon, delta), accountant.

    The two guarantees are never merged into one number (PRIVACY.md): record level from the
    clients' ledgers, user level from the server's.
    """
    summary = getattr(aggregate, "privacy_summary", None)
    user = summary() if callable(summary) else None
    return {
        "record_level": history.privacy,
        "user_level": user,
        "secure_aggregation": aggregate is not plain_sum,
    }


def run_experiment(
    cfg: ExperimentConfig,
    data: FederatedData,
    out_dir: str | Path,
    aggregate: Aggregator = plain_sum,
    on_round=None,
) -> dict:
    """Train with ``cfg`` on ``data`` and write OUT/report.json plus plots; returns the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = pick_device(cfg.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    user_types = list(data.user_types)
    t0 = time.perf_counter()
    prepared = prepare_clients(
        data.train_clients, data.eval_clients, user_types, cfg.model, cfg.cache_dir, device
    )
    prep_seconds = time.perf_counter() - t0
    model = build_model(cfg, prepared, len(user_types), device)
    eval_eps = EvalEpisodes.for_unseen_users(prepared.eval, cfg.train)
    reference = EvalEpisodes.build(prepared.train, cfg.train.context_size, cfg.train.seed + 2)
    t1 = time.perf_counter()
    history: History = run_federation(
        model,
        prepared.train,
        eval_eps,
        reference,
        user_types,
        cfg,
        device,
        aggregate,
        on_round,
        privacy_dir=out,
    )
    train_seconds = time.perf_counter() - t1
    save_global_model(model, out / MODEL_FILE)  # what the server publishes (mia attacks it)
    final = evaluate(model, eval_eps, user_types, device, reference=reference, full=True)
    report = {
        "method": cfg.method,
        "protocol": data.protocol,
        "seed": cfg.train.seed,
        "data": data.description,
        "user_types": user_types,
        "clients": {"train": len(data.train_clients), "eval": len(data.eval_clients)},
        **final,
        "rounds": [r.to_dict() for r in history.rounds],
        "seconds": round(time.perf_counter() - started, 2),
        "timing": {
            "prepare_seconds": round(prep_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            **prepared.cache_info,
        },
        "device": str(device),
        "config": cfg.to_dict(),
        "privacy": privacy_report(history, aggregate),
    }
    write_json_atomic(out / "report.json", report)
    plots = {}
    scatter = plot_latent_grid(
        [r.latent for r in history.rounds], history.latent_types, user_types, out / "latent.png"
    )
    if scatter is not None:
        plots["latent"] = scatter.name
    plots["curves"] = plot_training_curves(
        report["rounds"], out / "training.png", f"{cfg.method} on {data.protocol}"
    ).name
    report["plots"] = plots
    write_json_atomic(out / "report.json", report)
    return report


__all__ = ["RoundRecord", "run_experiment", "write_json_atomic"]
