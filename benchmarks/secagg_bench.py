"""Secure-aggregation benchmark: keystream and masking rates, protocol overhead, unmask time.

Prints a table; with ``--json PATH`` also writes the headline numbers::

    python benchmarks/secagg_bench.py [--json out.json] [--quick]

Everything is measured in this run on this machine, and ratios compare the whole in-process
protocol (every client and the server, all stages, in one process) with a plain sum of the same
float32 vectors. Targets (issue text): masking >= 300 M coordinates/s on one core or within 2x of
the raw keystream rate; n=100, L=4M unmasking <= 2 s at 10% dropout; upload <= 1.05x plain bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvpa_secure.secagg import InProcessRound, SecAggConfig, Stage, prg
from fedvpa_secure.secagg.driver import client_ids_for

M = 1 << 20


def _best(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def keystream_rate(length: int, algorithm: str, repeats: int) -> float:
    """Raw keystream words/s on one thread, into one preallocated buffer."""
    out = np.empty(length, dtype=np.uint32)
    key = os.urandom(32)
    return length / _best(lambda: prg.keystream_into(key, out, algorithm=algorithm), repeats)


def mask_rate(length: int, streams: int, workers: int, repeats: int) -> float:
    """Mask coordinates/s: streams added (+/-) in place into one accumulator."""
    acc = np.zeros(length, dtype=np.uint32)
    keys = [(os.urandom(32), 1 if i % 2 else -1) for i in range(streams)]
    seconds = _best(lambda: prg.accumulate(acc, keys, workers=workers), repeats)
    return streams * length / seconds


def plain_sum_seconds(vectors: list[np.ndarray], repeats: int) -> float:
    """A plain float sum of the same vectors (what the protocol replaces)."""

    def run() -> None:
        acc = np.zeros(vectors[0].shape, dtype=np.float64)
        for v in vectors:
            np.add(acc, v, out=acc)

    return _best(run, repeats)


def protocol_run(
    n: int, length: int, *, drop: int = 0, workers: int | None = None, degree: int | None = None
) -> dict:
    """One full in-process round; the same float32 vector for every client (saves memory)."""
    x = np.random.default_rng(0).uniform(-1, 1, length).astype(np.float32)
    cfg = SecAggConfig(n_clients=n, clip={"": 1.0}, degree=degree)
    ids = client_ids_for(n)
    dropped = {ids[i] for i in range(0, n, n // drop)} if drop else set()
    rnd = InProcessRound(
        [{"update": x}] * n,
        cfg,
        drop_at={Stage.MASKED_INPUT: dropped} if dropped else None,
        workers=workers,
        record_transcript=False,
    )
    result = rnd.run()
    survivors = len(result.survivors)
    error = float(np.abs(result.tensors["update"] - survivors * x.astype(np.float64)).max())
    if error >= survivors / 2.0 ** cfg.frac_bits[""]:
        raise RuntimeError(f"benchmark round returned a wrong sum (max error {error})")
    plain = plain_sum_seconds([x] * n, 3)
    return {
        "n": n,
        "length": length,
        "dropped": len(dropped),
        "degree": "full" if cfg.full_graph else cfg.degree,
        "total_s": rnd.timings["total"],
        "plain_s": plain,
        "stage_s": {k: v for k, v in rnd.timings.items() if k != "total"},
        "server_s": dict(rnd.server.timings),
        "unmask_s": rnd.timings["server close UNMASK"],
        "unmask_streams": rnd.server.unmask_streams,
        "upload_bytes": rnd.upload_bytes,
        "plain_upload_bytes": n * x.nbytes,
        "max_error": error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the headline numbers as JSON here")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: all CPUs)")
    parser.add_argument(
        "--degree",
        type=int,
        default=40,
        help="SecAgg+ degree for the extra n=100 unmask run (0 skips it; default 40)",
    )
    args = parser.parse_args(argv)
    big = 4 * M if not args.quick else M // 4
    mid = M if not args.quick else M // 8
    workers = args.workers or prg.default_workers()

    print(
        f"# secure aggregation benchmark - {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{workers} worker thread(s), load average {os.getloadavg()[0]:.1f}, "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    ks_aes = keystream_rate(big, "aes-256-ctr", 7)
    ks_chacha = keystream_rate(big, "chacha20", 7)
    mask_1 = mask_rate(big, 11, 1, 5)
    mask_w = mask_rate(big, 11, workers, 5)
    print("  keystream/mask rates done", file=sys.stderr)
    n10 = protocol_run(10, mid, workers=workers)
    print("  n=10 done", file=sys.stderr)
    n100 = protocol_run(100, mid, workers=workers)
    print("  n=100 done", file=sys.stderr)
    unmask = protocol_run(100, big, drop=10, workers=workers)
    print("  n=100 L=4M drop 10% done", file=sys.stderr)
    sparse = None
    if args.degree:
        sparse = protocol_run(100, big, drop=10, workers=workers, degree=args.degree)
        print(f"  n=100 L=4M drop 10% SecAgg+ k={args.degree} done", file=sys.stderr)

    headline = {
        "mask_coords_per_s": mask_1,
        "keystream_coords_per_s": ks_aes,
        "secure_over_plain_n10": n10["total_s"] / n10["plain_s"],
        "secure_over_plain_n100": n100["total_s"] / n100["plain_s"],
        "unmask_seconds_n100_L4M_drop10": unmask["unmask_s"],
        "upload_bytes_ratio": n100["upload_bytes"] / n100["plain_upload_bytes"],
    }
    if sparse:
        headline[f"unmask_seconds_n100_L4M_drop10_secaggplus_k{args.degree}"] = sparse["unmask_s"]

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    ratio10 = headline["secure_over_plain_n10"]
    ratio100 = headline["secure_over_plain_n100"]
    upload = headline["upload_bytes_ratio"]
    mask_target = min(300e6, ks_aes / 2)
    rows = [
        ("keystream AES-256-CTR, 1 thread [coords/s]", f"{ks_aes / 1e6:,.0f} M", ""),
        ("keystream ChaCha20, 1 thread [coords/s]", f"{ks_chacha / 1e6:,.0f} M", ""),
        (
            "masking (11 streams in place), 1 thread [coords/s]",
            f"{mask_1 / 1e6:,.0f} M",
            f">= 300 M or >= keystream/2 ({ks_aes / 2e6:,.0f} M): {verdict(mask_1 >= mask_target)}",
        ),
        (f"masking, {workers} threads [coords/s]", f"{mask_w / 1e6:,.0f} M", ""),
        (
            f"protocol n=10, L={mid:,}: secure / plain sum",
            f"{ratio10:,.1f}x",
            f"{n10['total_s']:.2f} s vs {n10['plain_s'] * 1e3:.1f} ms",
        ),
        (
            f"protocol n=100, L={mid:,}: secure / plain sum",
            f"{ratio100:,.1f}x",
            f"{n100['total_s']:.2f} s vs {n100['plain_s'] * 1e3:.1f} ms",
        ),
        (
            f"unmask n=100, L={big:,}, 10 dropped at stage 2, full graph [s]",
            f"{unmask['unmask_s']:.2f}",
            f"<= 2 s: {verdict(unmask['unmask_s'] <= 2.0)}; {unmask['unmask_streams']} streams",
        ),
    ]
    if sparse:
        rows.append(
            (
                f"  same, SecAgg+ degree {args.degree} (not the n<=200 default) [s]",
                f"{sparse['unmask_s']:.2f}",
                f"<= 2 s: {verdict(sparse['unmask_s'] <= 2.0)}; {sparse['unmask_streams']} streams",
            )
        )
    rows += [
        (
            "upload bytes / plain float32 bytes (n=100)",
            f"{upload:.4f}",
            f"<= 1.05: {verdict(upload <= 1.05)}",
        ),
        (
            "upload bytes / plain float32 bytes (n=10)",
            f"{n10['upload_bytes'] / n10['plain_upload_bytes']:.4f}",
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'value':>12}  notes")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    print(f"\n# where the time goes, n=100, L={big:,}, 10 dropped at stage 2, full graph (seconds)")
    for key, value in unmask["stage_s"].items():
        print(f"  {key:<32} {value:8.3f}")
    for key, value in unmask["server_s"].items():
        if key.startswith("unmask:"):
            print(f"  server {key:<25} {value:8.3f}")
    if args.json:
        detail = {
            "n10": n10,
            "n100": n100,
            "unmask_run_full_graph": unmask,
            "unmask_run_secaggplus": sparse,
            "workers": workers,
            "load_average_at_end": os.getloadavg(),
            "mask_coords_per_s_threads": mask_w,
            "keystream_chacha20_coords_per_s": ks_chacha,
        }
        args.json.write_text(json.dumps({**headline, "details": detail}, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
