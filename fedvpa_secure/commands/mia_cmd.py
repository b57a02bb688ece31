"""``fedvpa-secure mia RUN_DIR``: membership inference against the global model a run published.

The attacker's view (PRIVACY.md section 5): the published global model (RUN_DIR/model.safetensors,
written by ``experiment``) and the run's data description (RUN_DIR/report.json's config, which
rebuilds the same clients). Members are the training clients' pairs (record level) or the
training clients themselves (user level); non-members are the unseen evaluation clients' pairs
and clients. Attacks: loss threshold (Yeom et al. 2018) and, for synthetic runs, offline LiRA
(Carlini et al. 2022) with reference models trained by the run's own configuration on freshly
generated users (so every target is OUT for them). Writes OUT/mia.json and OUT/mia_roc.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from fedvpa_secure.errors import ConfigError, DataError

MIA_JSON = "mia.json"
MIA_PNG = "mia_roc.png"


def register(subparsers: Any) -> None:
    """Add the ``mia`` subcommand."""
    p = subparsers.add_parser(
        "mia",
        help="membership inference against a run's published global model",
        description=(
            "Attack RUN_DIR/model.safetensors with the loss-threshold attack and offline LiRA, "
            "record level (pairs) and user level (clients); write mia.json and mia_roc.png."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="an `experiment` output folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR)")
    p.add_argument(
        "--reference-models",
        type=int,
        default=2,
        metavar="N",
        help="offline LiRA reference models (0: loss attack only; synthetic runs only)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=run)


def _build(cls: type, values: dict) -> Any:
    names = {f.name for f in fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
    return cls(**kwargs)


def config_from_report(report: dict) -> Any:
    """Rebuild the run's :class:`ExperimentConfig` from report.json (unknown keys ignored)."""
    from fedvpa_secure.config import (
        DataConfig,
        ExperimentConfig,
        ModelConfig,
        ObjectiveConfig,
        TrainConfig,
    )

    c = report.get("config")
    if not isinstance(c, dict):
        raise DataError("report.json has no config section; was it written by `experiment`?")
    nested = {
        "model": _build(ModelConfig, c.get("model", {})),
        "objective": _build(ObjectiveConfig, c.get("objective", {})),
        "train": _build(TrainConfig, c.get("train", {})),
        "data": _build(DataConfig, c.get("data", {})),
    }
    top = {k: v for k, v in c.items() if k not in nested and not isinstance(v, dict)}
    return _build(ExperimentConfig, {**top, **nested})


def _load_data(cfg: Any, seed: int) -> Any:
    from fedvpa_secure.train.data_setup import load_federated_data

    d = cfg.data
    kwargs = {
        "eval_data_dir": d.eval_data_dir,
        "n_clients": d.n_clients,
        "n_eval_clients": d.n_eval_clients,
        "pairs_per_client": d.pairs_per_client,
        "eval_pairs_per_client": d.eval_pairs_per_client,
        "type_mix": d.type_mix,
        "max_pairs_per_subset": d.max_pairs_per_subset,
    }
    data, _ = load_federated_data(d.data_dir, d.protocol, kwargs, seed)
    return data


def _targets(cfg: Any, prepared: Any) -> tuple[list, list, Any, Any]:
    """(record items, user items, record membership, user membership)."""
    import numpy as np

    from fedvpa_secure.train.evaluate import EvalEpisodes

    record, user, rec_in, user_in = [], [], [], []
    for member, clients, seed in (
        (True, prepared.train, cfg.train.seed + 11),
        (False, prepared.eval, cfg.train.seed + 12),
    ):
        episodes = EvalEpisodes.build(clients, cfg.train.context_size, seed)
        for client, (ctx, query) in zip(episodes.clients, episodes.splits, strict=True):
            user.append((client, ctx, query))
            user_in.append(member)
            for q in query:
                record.append((client, ctx, (q,)))
                rec_in.append(member)
    return record, user, np.array(rec_in), np.array(user_in)


def _scores(model: Any, items: list, device: Any) -> tuple[Any, Any]:
    from fedvpa_secure.train.leakage import probe_scores

    return probe_scores(model, [c for c, _, _ in items], [(x, q) for _, x, q in items], device)


def run(args: argparse.Namespace) -> int:
    """Attack the run's global model; print a summary and write mia.json + mia_roc.png."""
    import numpy as np
    import torch

    from fedvpa_secure.model.backbone import pick_device
    from fedvpa_secure.train.evaluate import EvalEpisodes
    from fedvpa_secure.train.experiment import build_model, write_json_atomic
    from fedvpa_secure.train.features import prepare_clients
    from fedvpa_secure.train.federation import run_federation
    from fedvpa_secure.train.model_io import MODEL_FILE, load_global_model
    from privacy.mia import (
        evaluate_attack,
        lira_offline_scores,
        loss_threshold_scores,
        plot_roc,
    )

    run_dir: Path = args.run_dir
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise DataError(f"{report_path} does not exist: pass an `experiment` output folder")
    if args.reference_models < 0 or args.reference_models == 1:
        raise ConfigError(f"--reference-models must be 0 or >= 2, got {args.reference_models}")
    torch.set_num_threads(max(1, args.threads))
    cfg = config_from_report(json.loads(report_path.read_text()))
    device = pick_device(args.device or cfg.device)
    data = _load_data(cfg, cfg.train.seed)
    types = list(data.user_types)
    prepared = prepare_clients(
        data.train_clients, data.eval_clients, types, cfg.model, cfg.cache_dir, device
    )
    model = build_model(cfg, prepared, len(types), device)
    load_global_model(model, run_dir / MODEL_FILE)
    record, user, rec_in, user_in = _targets(cfg, prepared)
    rec_loss, rec_conf = _scores(model, record, device)
    user_loss, user_conf = _scores(model, user, device)
    n_ref = args.reference_models if cfg.data.protocol == "synthetic" else 0
    if args.reference_models and not n_ref:
        print(
            "LiRA skipped: reference users can be generated only for synthetic runs",
            file=sys.stderr,
        )
    rec_refs, user_refs = [], []
    for j in range(n_ref):
        print(f"training reference model {j + 1}/{n_ref}", file=sys.stderr, flush=True)
        ref_data = _load_data(cfg, cfg.train.seed + 1000 + j)
        ref_prep = prepare_clients(
            ref_data.train_clients, ref_data.eval_clients, types, cfg.model, cfg.cache_dir, device
        )
        ref_model = build_model(cfg, ref_prep, len(types), device)
        run_federation(
            ref_model,
            ref_prep.train,
            EvalEpisodes.build(ref_prep.eval, cfg.train.context_size, cfg.train.seed + 1),
            EvalEpisodes.build(ref_prep.train, cfg.train.context_size, cfg.train.seed + 2),
            types,
            cfg,
            device,
        )
        rec_refs.append(_scores(ref_model, record, device)[1])
        user_refs.append(_scores(ref_model, user, device)[1])
    result: dict = {"run_dir": str(run_dir), "reference_models": n_ref}
    curves = {}
    for level, loss, conf, refs, members in (
        ("record", rec_loss, rec_conf, rec_refs, rec_in),
        ("user", user_loss, user_conf, user_refs, user_in),
    ):
        attacks = {"loss": evaluate_attack("loss", loss_threshold_scores(loss), members)}
        if refs:
            attacks["lira"] = evaluate_attack(
                "lira", lira_offline_scores(conf, np.stack(refs)), members
            )
        result[level] = {name: a.summary() for name, a in attacks.items()}
        curves.update({f"{level} {name}": a.roc for name, a in attacks.items()})
        for name, a in attacks.items():
            print(
                f"{level:6s} {name:4s}  AUC {a.auc:.3f} +- {a.auc_se:.3f}  "
                f"TPR@1%FPR {a.tpr_at(0.01):.3f}  TPR@0.1%FPR {a.tpr_at(0.001):.3f}  "
                f"({a.roc.n_members} members, {a.roc.n_nonmembers} non-members)"
            )
    out = args.out or run_dir
    result["roc_png"] = MIA_PNG
    plot_roc(curves, out / MIA_PNG, title="membership inference on the published model")
    write_json_atomic(out / MIA_JSON, result)
    print(f"wrote {out / MIA_JSON}")
    return 0
