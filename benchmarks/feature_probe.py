"""How much user-type signal the frozen features carry: linear probes, no federation.

The learner's p3 ceiling is the oracle (a BT head told the user's type). This script asks the
question under it: with the SAME frozen embeddings, the same split and the same users, how well
does the best linear Bradley-Terry reward of each type do, and how often do an unseen user's own
context pairs name its type under those two rewards? If the probes' type identification is near
chance, no posterior (encoder or likelihood) can personalise on these features, and the lever is
the backbone (lora mode, a larger model), not the prior.

    python benchmarks/feature_probe.py --data ../shared/data/hh-rlhf --seeds 0 1 2

Per type t, a logistic regression on e(a) - e(b) is fitted to type t's labels of EVERY training
pair (both labels of every p3 pair are known), its L2 strength chosen by 5-fold cross-validated
log-loss on the training pairs only. Reported on the unseen users' pairs: accuracy of the
own-type probe (overall, conflicting) and of one probe for everyone, and type identification
from K_ctx context pairs: argmax_t of sum_C log sigmoid(+-w_t . (e(a) - e(b))), balanced by the
training users' mean, on the same cross-fitted folds that evaluation uses.

Each probe runs on three feature sets: ``plain`` e(a) - e(b); ``domain-gated`` [d (1 - g), d g]
with g = P(harmless-base | pair) from a logistic classifier fitted to the training pairs' source
tags (unseen users' pairs are routed from their text only); ``tag-gated`` the same with the true
tag (the routing ceiling). The gate gives a linear reward the interaction "refuse when the
request is harmful, comply otherwise" that one direction in embedding space cannot express.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np


def _differences(clients) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(e(a) - e(b), per-type labels (N, T), own label, conflicting) over all pairs of clients."""
    x = np.concatenate([(c.emb_a - c.emb_b).numpy() for c in clients])
    type_labels = np.concatenate([c.type_labels.numpy() for c in clients])
    own = np.concatenate([c.label.numpy() for c in clients])
    conflicting = np.concatenate([c.conflicting.numpy() for c in clients])
    return x, type_labels, own, conflicting


def _fit(x: np.ndarray, y: np.ndarray, seed: int):
    """L2 logistic BT reward, strength chosen by 5-fold cross-validated log-loss."""
    from sklearn.linear_model import LogisticRegressionCV

    with warnings.catch_warnings():
        # scikit-learn 1.8 announces default changes (l1_ratios, attribute layout) that do not
        # concern a plain L2 fit read through coef_ and C_
        warnings.simplefilter("ignore", FutureWarning)
        return LogisticRegressionCV(
            Cs=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
            cv=5,
            fit_intercept=False,
            scoring="neg_log_loss",
            max_iter=3000,
            random_state=seed,
        ).fit(x, y)


def _log_lik(weights: np.ndarray, x: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(N, T) log-likelihood of each pair's label under each type's linear reward."""
    margin = x @ weights.T  # (N, T): logit that a wins
    sign = np.where(label[:, None] == 1, 1.0, -1.0)
    return -np.logaddexp(0.0, -sign * margin)


def probe_seed(args: argparse.Namespace, seed: int, folders: tuple[Path, Path]) -> dict:
    from fedvpa_secure.config import ModelConfig
    from fedvpa_secure.model.backbone import pick_device
    from fedvpa_secure.train.data_setup import load_federated_data
    from fedvpa_secure.train.features import prepare_clients

    train_dir, eval_dir = folders
    kwargs = {
        "eval_data_dir": str(eval_dir),
        "n_clients": args.clients,
        "n_eval_clients": args.eval_clients,
        "pairs_per_client": args.pairs_per_client,
        "eval_pairs_per_client": args.eval_pairs_per_client,
        "type_mix": (0.5, 0.5),
        "max_pairs_per_subset": None,
    }
    data, _ = load_federated_data(str(train_dir), "p3", kwargs, seed)
    types = list(data.user_types)
    prepared = prepare_clients(
        data.train_clients,
        data.eval_clients,
        types,
        ModelConfig(),
        args.cache_dir,
        pick_device("cpu"),
    )
    x, type_labels, own, tag = _differences(prepared.train)
    ex, _, e_own, e_tag = _differences(prepared.eval)
    # p3's conflicting pairs are exactly its harmless-base pairs, so the flag is the source tag
    domain = _domain_classifier(prepared.train, tag, seed)
    gates = {
        "plain": (None, None),
        "domain-gated": (domain(prepared.train), domain(prepared.eval)),
        "tag-gated": (tag.astype(float), e_tag.astype(float)),
    }
    row = {"domain_classifier_accuracy": float(((gates["domain-gated"][1] > 0.5) == e_tag).mean())}
    for name, (gate, e_gate) in gates.items():
        probe = _probe(
            _gated(x, gate),
            type_labels,
            own,
            _gated(ex, e_gate),
            e_own,
            e_tag,
            prepared.eval,
            args.context_sizes,
            seed,
        )
        row.update({f"{name}:{k}": v for k, v in probe.items()})
    return row


def _domain_classifier(train, tag: np.ndarray, seed: int):
    """P(pair comes from the harmlessness collection | mean of its two embeddings).

    Fitted to the source tags of the TRAINING pairs only; unseen users' pairs are routed from
    their text alone, so the gate never reads an evaluation pair's tag.
    """
    from sklearn.linear_model import LogisticRegression

    def mean_emb(clients) -> np.ndarray:
        return np.concatenate([((c.emb_a + c.emb_b) / 2).numpy() for c in clients])

    clf = LogisticRegression(C=1.0, max_iter=3000, random_state=seed).fit(mean_emb(train), tag)
    return lambda clients: clf.predict_proba(mean_emb(clients))[:, 1]


def _gated(x: np.ndarray, gate: np.ndarray | None) -> np.ndarray:
    """[x (1 - g), x g]: one linear reward per domain, blended by the gate (None: plain x).

    A single linear reward on e(a) - e(b) cannot say "refuse when the request is harmful,
    comply otherwise"; routing by the prompt's domain gives it that interaction.
    """
    if gate is None:
        return x
    return np.hstack([x * (1.0 - gate)[:, None], x * gate[:, None]])


def _probe(x, type_labels, own, ex, e_own, e_conf, eval_clients, context_sizes, seed) -> dict:
    """Per-type and shared linear probes on one feature set, scored on the unseen users."""
    from fedvpa_secure.train.evaluate import EvalEpisodes

    probes = [_fit(x, type_labels[:, t], seed) for t in range(type_labels.shape[1])]
    shared = _fit(x, own, seed)  # one reward for everyone (the monolithic reference)
    weights = np.stack([p.coef_[0] for p in probes])
    offset = _log_lik(weights, x, own).mean(0)  # balancing, from training users only
    owner = np.concatenate([np.full(c.n_pairs, c.user_type) for c in eval_clients])
    own_ok = ((ex @ weights.T)[np.arange(len(ex)), owner] > 0) == (e_own == 1)
    shared_ok = shared.predict(ex) == e_own
    row = {
        "own_type_overall": float(own_ok.mean()),
        "own_type_conflicting": float(own_ok[e_conf].mean()),
        "shared_overall": float(shared_ok.mean()),
        "shared_conflicting": float(shared_ok[e_conf].mean()),
    }
    # row offset of each unseen user's pairs in ex (EvalEpisodes repeats the same objects)
    offsets = np.cumsum([0] + [c.n_pairs for c in eval_clients])[:-1]
    start = dict(zip(map(id, eval_clients), offsets, strict=True))
    for k in context_sizes:
        episodes = EvalEpisodes.build(eval_clients, k, seed + 1, cross_fit=True)
        hits = []
        for client, (context, _) in zip(episodes.clients, episodes.splits, strict=True):
            idx = start[id(client)] + np.asarray(list(context))
            ll = _log_lik(weights, ex[idx], e_own[idx]) - offset
            hits.append(int(ll.sum(0).argmax()) == client.user_type)
        row[f"type_id_ctx{k}"] = float(np.mean(hits))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="HH-RLHF folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--pairs-per-client", type=int, default=256)
    parser.add_argument("--eval-clients", type=int, default=8)
    parser.add_argument("--eval-pairs-per-client", type=int, default=320)
    parser.add_argument("--context-sizes", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--cache-dir", default=".cache/embeddings")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fedvpa_secure.data import split_folder

    tmp = Path(tempfile.mkdtemp(prefix="fedvpa-probe-"))
    folders = (tmp / "train", tmp / "eval")
    split_folder(args.data, folders[0], folders[1], 0.3, 0)  # the split learner_table uses
    rows = []
    for seed in args.seeds:
        rows.append(probe_seed(args, seed, folders))
        print(f"seed {seed}: {rows[-1]}", file=sys.stderr, flush=True)
    keys = list(rows[0])
    print(f"\np3 linear probes on frozen all-MiniLM-L6-v2 features, seeds {args.seeds}")
    print("metric | mean | sd")
    for key in keys:
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{key} | {statistics.mean(vals):.3f} | {sd:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
