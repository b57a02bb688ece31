"""DP-SGD step cost against a plain step, measured in the same run on the same batch.

    python benchmarks/dp_bench.py [--json out.json] [--quick] [--repeats N] [--threads N]

Cases: frozen mode (cached embeddings, heads only) and lora mode (backbone with LoRA inside the
step) with the tiny causal backbone and the real all-MiniLM-L6-v2 at small batches, all with the
default per-episode gradient engine (``hooks``: one forward and one backward pass, exact
per-episode norms, Opacus adds the noise; :mod:`fedvpa_secure.train.dp_hooks`); the frozen case
is also run with the ``vmap`` engine (``torch.func.vmap`` over episodes, the default before) as a
reference. A step is one call of ``train_local`` (plain) or ``train_local_dp`` (DP: per-episode
gradients, clipping, noise) with one local step on the same client, so per-round set-up (the
optimisers) is inside both; sampling rate 1, so both see the same number of episodes. Target
(issue text): DP step <= 1.5x the plain step. Plain and DP steps alternate ``--repeats`` times;
the reported ratio is the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedvpa_secure.config import ExperimentConfig, ModelConfig, ObjectiveConfig, TrainConfig
from fedvpa_secure.model.backbone import pick_device
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.dp_local import episode_sizes, train_local_dp
from fedvpa_secure.train.local import ClientState, train_local
from fedvpa_secure.train.tensors import ClientTensors

TARGET = 1.5


def _client(n: int, embed: int | None, length: int, vocab: int, seed: int = 0) -> ClientTensors:
    gen = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, generator=gen) > 0.5).float()
    common = (label, torch.zeros(n, dtype=torch.bool), torch.zeros(n, 2, dtype=torch.long))
    if embed is not None:
        return ClientTensors(
            "bench",
            0,
            *common,
            emb_a=torch.randn(n, embed, generator=gen),
            emb_b=torch.randn(n, embed, generator=gen),
        )
    att = torch.ones(n, length, dtype=torch.long)
    return ClientTensors(
        "bench",
        0,
        *common,
        ids_a=torch.randint(min(100, vocab // 2), vocab, (n, length), generator=gen),
        att_a=att,
        ids_b=torch.randint(min(100, vocab // 2), vocab, (n, length), generator=gen),
        att_b=att.clone(),
    )


def _case(
    name: str, backbone: str, mode: str, ctx: int, query: int, length: int, n: int, engine: str
):
    model_cfg = ModelConfig(
        backbone=backbone, mode=mode, max_length=max(16, length), latent_dim=32, hidden_dim=128
    )
    n_episodes = episode_sizes(n, ctx, query)[2]
    cfg = ExperimentConfig(
        method="fedvpa-gp",
        model=model_cfg,
        objective=ObjectiveConfig(),
        train=TrainConfig(
            context_size=ctx, query_size=query, episodes_per_step=n_episodes, local_steps=1
        ),
    )
    bb = None
    if mode == "lora":
        from fedvpa_secure.model.backbone import Backbone
        from fedvpa_secure.train.features import add_lora

        bb = add_lora(Backbone(backbone, model_cfg.max_length), model_cfg)
        embed_dim = bb.info.hidden_size
        client = _client(n, None, length, int(bb.model.config.vocab_size))
    else:
        embed_dim = 384
        client = _client(n, embed_dim, length, 0)
    torch.manual_seed(0)
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, embed_dim, 2, bb)
    return name, cfg, model, client, n_episodes, engine


def _paired(plain, private, repeats: int) -> tuple[float, float, float]:
    """Median plain time, median DP time and median of per-pair ratios.

    Plain and DP steps alternate, so load from other processes on a shared machine hits both
    alike; the ratio of each adjacent pair is robust to slow drift of that load.
    """
    plain()
    private()  # warm-up (allocations, lazy init)
    tp, td, ratios = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        private()
        t2 = time.perf_counter()
        tp.append(t1 - t0)
        td.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(tp), statistics.median(td), statistics.median(ratios)


def run(quick: bool, repeats: int) -> list[dict]:
    device = pick_device("auto")
    cases = [
        ("frozen (MiniLM dim, heads)", "all-MiniLM-L6-v2", "frozen", 8, 4, 0, 96, "hooks"),
        ("frozen (MiniLM dim, heads)", "all-MiniLM-L6-v2", "frozen", 8, 4, 0, 96, "vmap"),
        ("lora tiny-causal", "tiny-causal", "lora", 4, 2, 32, 24, "hooks"),
    ]
    if not quick:
        cases.append(
            ("lora MiniLM (small batch)", "all-MiniLM-L6-v2", "lora", 4, 2, 64, 12, "hooks")
        )
    rows = []
    for spec in cases:
        name, cfg, model, client, n_episodes, engine = _case(*spec)
        model = model.to(device)
        plain_model, dp_model = model, copy.deepcopy(model)

        def plain(m=plain_model, c=client, cf=cfg) -> None:
            train_local(m, [c], ClientState(), cf, 1, 0.5, np.random.default_rng(0), device)

        def private(m=dp_model, c=client, cf=cfg, e=engine) -> None:
            train_local_dp(
                m, [c], ClientState(), cf, 1, 0.5, np.random.default_rng(0), device, 1.0, 1.0, e
            )

        t_plain, t_dp, ratio = _paired(plain, private, repeats)
        rows.append(
            {
                "case": name,
                "mode": cfg.model.mode,
                "engine": engine,
                "episodes": n_episodes,
                "plain_s": t_plain,
                "dp_s": t_dp,
                "ratio": ratio,
                "meets_target": ratio <= TARGET,
            }
        )
        print(f"  measured {name} ({engine})", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows as JSON to this path")
    p.add_argument("--quick", action="store_true", help="skip the real MiniLM LoRA case")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads oversubscribe "
        "the cores and small steps slow down 100x, drowning the comparison)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    rows = run(args.quick, args.repeats)
    header = f"{'case':30} {'engine':6} {'episodes':>8} {'plain s':>9} {'DP s':>9} {'DP/plain':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        flag = "" if r["meets_target"] else f"  (> {TARGET}x target)"
        print(
            f"{r['case']:30} {r['engine']:6} {r['episodes']:8d} {r['plain_s']:9.4f} "
            f"{r['dp_s']:9.4f} {r['ratio']:8.2f}x{flag}"
        )
    if args.json:
        payload = {
            "rows": rows,
            "target_ratio": TARGET,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.platform(),
            "device": str(pick_device("auto")),
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
