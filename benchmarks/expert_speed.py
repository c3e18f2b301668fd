"""Batched LTFM expert vs the release's per-image loop, at full size (C 1152, E 512, 27x27), float32 CPU.

    .venv/bin/python benchmarks/expert_speed.py [--images 8 --crops 10 --repeats 3 --threads 2]

Prints the time of the batched expert (one call over all crops), of a per-image loop (the expert called once per
image, as the release's Python loop does per image) and their ratio; checks both give the same scores. Also times
the batched expert with the release's q_former formula (keys projected to E for all T tokens) for comparison.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--crops", type=int, default=10, help="crops per image, base view included")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from anomaly_ov.model.expert import AnomalyExpert, count_parameters

    torch.manual_seed(0)
    expert = AnomalyExpert(hidden_size=1152, embed_dim=512, grid_size=27).eval()
    n = args.images * args.crops
    v = torch.randn(n, 729, 1152)
    levels = [torch.randn(n, 729, 1152) for _ in range(4)]
    counts = [args.crops] * args.images

    def batched():
        return expert(v, levels, counts).scores

    def per_image():
        scores = []
        for i in range(args.images):
            sl = slice(i * args.crops, (i + 1) * args.crops)
            scores.append(expert(v[sl], [f[sl] for f in levels], [args.crops]).scores)
        return torch.cat(scores)

    def best(fn):
        times = []
        with torch.inference_mode():
            out = fn()
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        return min(times), out

    t_batch, s_batch = best(batched)
    t_loop, s_loop = best(per_image)

    def release_qformer(queries, keys, values):
        q = expert.q_former.query_proj(queries)
        k = expert.q_former.key_proj(keys)
        return torch.matmul((q @ k.transpose(-2, -1) / (k.shape[-1] ** 0.5)).softmax(-1), values)

    expert.q_former.forward = release_qformer
    t_release, s_release = best(batched)
    print(f"expert parameters: {count_parameters(expert):,}")
    print(f"input: {args.images} images x {args.crops} crops = {n} crops of 27x27 tokens, C=1152, E=512, "
          f"float32, {args.threads} threads, best of {args.repeats}")
    print(f"batched (one call):       {t_batch * 1000:8.1f} ms")
    print(f"per-image loop ({args.images} calls): {t_loop * 1000:8.1f} ms")
    print(f"loop / batched:           {t_loop / t_batch:8.2f}x")
    print(f"batched, release q_former: {t_release * 1000:7.1f} ms ({t_release / t_batch:.2f}x the batched expert)")
    print(f"max |score difference| loop: {float((s_batch - s_loop).abs().max()):.2e}, "
          f"release q_former: {float((s_batch - s_release).abs().max()):.2e}")


if __name__ == "__main__":
    main()
