"""Batched LTFM expert vs the release's per-image loop, at full size (C 1152, E 512, 27x27), float32 CPU.

    .venv/bin/python benchmarks/expert_speed.py [--images 8 --crops 10 --repeats 3 --threads 2]

Prints the time of the batched expert (one call over all crops), of a per-image loop (the expert called once per
image) and their ratio, and of the release's formulation (docs/model.md, 'The LTFM expert', written as the release
computes it: normalised [N,T,E] features, [N,C,G,G] pooling, keys projected for all tokens, a loop per image for
the global token); checks all give the same scores.
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

    def release_maths():
        """The release's formulation (docs/model.md, 'The LTFM expert'): base view repeated per crop, normalised [N,T,E]
        features scaled by 100, [N,C,G,G] pooling, keys projected for all T tokens, a Python loop per image."""
        e, g, c = expert, 27, 1152
        base = torch.cat([v[i * args.crops].unsqueeze(0).repeat(args.crops, 1, 1) for i in range(args.images)])
        cls = e.class_predictor(e.pooling_layer(base.transpose(1, 2)).squeeze(-1))
        pos, neg = e.positive_embedding.repeat(n, 1), e.negative_embedding.repeat(n, 1)
        maps, sigs = [], []
        for i in range(4):
            dp = e.prompt_adaptors[i](torch.cat([pos, cls], -1))
            dn = e.prompt_adaptors[i](torch.cat([neg, cls], -1))
            prompt = torch.stack([dp / dp.norm(dim=-1, keepdim=True), dn / dn.norm(dim=-1, keepdim=True)], -1)
            f = e.siglip_adaptors[i](levels[i])
            f = f / f.norm(dim=-1, keepdim=True)
            m = torch.matmul(100.0 * f, prompt).permute(0, 2, 1).reshape(n, 2, g, g).softmax(1)[:, 1:]
            maps.append(m)
            sigs.append(m.mean(dim=(1, 2, 3)))
        amap, sig = sum(maps) / 4, sum(sigs) / 4
        pool = torch.nn.AdaptiveAvgPool2d(2)
        inp = pool(amap)
        q = (pool(v.permute(0, 2, 1).reshape(n, c, g, g) * amap) / inp).permute(0, 2, 3, 1).reshape(n, 4, c)
        gs = inp.permute(0, 2, 3, 1).reshape(n, 4, 1) * sig[:, None, None]
        k = e.q_former.key_proj(v)
        tok = ((e.q_former.query_proj(q) @ k.transpose(-2, -1)) / (512**0.5)).softmax(-1) @ v
        out = []
        for i in range(args.images):
            sl = slice(i * args.crops, (i + 1) * args.crops)
            out.append(((tok[sl] * gs[sl]).mean(dim=(0, 1)) / gs[sl].mean(dim=(0, 1)))[None])
        return torch.sigmoid(e.final_predictor(torch.cat(out)))

    t_release, s_release = best(release_maths)
    print(f"expert parameters: {count_parameters(expert):,}")
    print(f"input: {args.images} images x {args.crops} crops = {n} crops of 27x27 tokens, C=1152, E=512, "
          f"float32, {args.threads} threads, best of {args.repeats}")
    print(f"batched (one call):       {t_batch * 1000:8.1f} ms")
    print(f"per-image loop ({args.images} calls): {t_loop * 1000:8.1f} ms")
    print(f"loop / batched:           {t_loop / t_batch:8.2f}x")
    print(f"release formulation:      {t_release * 1000:8.1f} ms ({t_release / t_batch:.2f}x the batched expert)")
    print(f"max |score difference| loop: {float((s_batch - s_loop).abs().max()):.2e}, "
          f"release: {float((s_batch - s_release).abs().max()):.2e}")


if __name__ == "__main__":
    main()
