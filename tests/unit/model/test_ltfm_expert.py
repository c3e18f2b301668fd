"""LTFM expert: shapes, equality with the release's per-image maths, release key names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly_ov.model.expert import AnomalyExpert, ExpertWeightsError, count_parameters, load_expert_weights

RELEASE_KEYS = {
    "positive_embedding", "negative_embedding", "pooling_layer.0.weight", "pooling_layer.0.bias",
    "class_predictor.0.weight", "class_predictor.0.bias", "class_predictor.2.weight", "class_predictor.2.bias",
    "final_predictor.0.weight", "final_predictor.0.bias", "final_predictor.2.weight", "final_predictor.2.bias",
    "q_former.query_proj.weight", "q_former.query_proj.bias", "q_former.key_proj.weight", "q_former.key_proj.bias",
    *{f"{m}.{i}.{p}" for m in ("siglip_adaptors", "prompt_adaptors") for i in range(4) for p in ("weight", "bias")},
}


def _inputs(counts, grid, hidden, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = sum(counts)
    v = torch.randn(n, grid * grid, hidden, generator=gen)
    levels = [torch.randn(n, grid * grid, hidden, generator=gen) for _ in range(4)]
    return v, levels


def release_reference(expert: AnomalyExpert, v, levels, counts):
    """The release's maths written as a straightforward loop over images (no batching tricks)."""
    g, c = expert.grid_size, expert.hidden_size
    maps_all, tokens_all, globals_, scores = [], [], [], []
    start = 0
    for k in counts:
        vi = v[start : start + k]
        fi = [f[start : start + k] for f in levels]
        start += k
        base = vi[0:1].repeat(k, 1, 1)
        pooled = expert.pooling_layer(base.transpose(1, 2)).squeeze(-1)
        cls = expert.class_predictor(pooled)
        pos = expert.positive_embedding.repeat(k, 1)
        neg = expert.negative_embedding.repeat(k, 1)
        level_maps, sigs = [], []
        for i in range(4):
            dp = expert.prompt_adaptors[i](torch.cat([pos, cls], -1))
            dp = dp / dp.norm(dim=-1, keepdim=True)
            dn = expert.prompt_adaptors[i](torch.cat([neg, cls], -1))
            dn = dn / dn.norm(dim=-1, keepdim=True)
            prompt = torch.cat([dp.unsqueeze(-1), dn.unsqueeze(-1)], -1)
            s = expert.siglip_adaptors[i](fi[i])
            s = s / s.norm(dim=-1, keepdim=True)
            m = torch.matmul(expert.temperature * s, prompt).permute(0, 2, 1).reshape(k, 2, g, g).softmax(1)
            level_maps.append(m[:, 1:])
            sigs.append(m[:, 1:].mean(dim=(1, 2, 3)))
        amap = sum(level_maps) / 4
        sig = sum(sigs) / 4
        grid = vi.permute(0, 2, 1).reshape(k, c, g, g)
        scaled = grid * amap
        pool = torch.nn.AdaptiveAvgPool2d((2, 2))
        inp = pool(amap)
        q = (pool(scaled) / inp).permute(0, 2, 3, 1).reshape(k, 4, c)
        inp = inp.permute(0, 2, 3, 1).reshape(k, 4, 1)
        gs = inp * sig[:, None, None]
        Q = expert.q_former.query_proj(q)
        K = expert.q_former.key_proj(vi)
        att = F.softmax(Q @ K.transpose(-2, -1) / torch.sqrt(torch.tensor(float(K.shape[-1]))), -1)
        tok = att @ vi
        r = (tok * gs).mean(dim=(0, 1)) / gs.mean(dim=(0, 1))
        maps_all.append(amap)
        tokens_all.append(tok)
        globals_.append(r[None])
        scores.append(torch.sigmoid(expert.final_predictor(r[None])))
    return torch.cat(maps_all), torch.cat(tokens_all), torch.cat(globals_)[:, None], torch.cat(scores)


@pytest.mark.parametrize(("grid", "counts"), [(4, [1]), (5, [1, 3, 2]), (7, [5, 1, 10, 2])])
def test_shapes(grid, counts):
    expert = AnomalyExpert(hidden_size=32, embed_dim=16, grid_size=grid)
    v, levels = _inputs(counts, grid, 32)
    out = expert(v, levels, counts)
    n, b = sum(counts), len(counts)
    assert out.maps.shape == (n, 1, grid, grid)
    assert out.crop_tokens.shape == (n, 4, 32)
    assert out.global_tokens.shape == (b, 1, 32)
    assert out.scores.shape == (b, 1)
    assert out.base_maps.shape == (b, 1, grid, grid)
    assert out.base_index.tolist() == [sum(counts[:i]) for i in range(b)]
    assert bool(((out.maps >= 0) & (out.maps <= 1)).all())
    assert bool(((out.scores > 0) & (out.scores < 1)).all())


@pytest.mark.parametrize(
    ("grid", "counts", "temperature"), [(5, [1, 3, 2], 100.0), (6, [4, 1, 7], 10.0), (27, [2, 1], 100.0)]
)
def test_batched_equals_release_loop(grid, counts, temperature):
    torch.manual_seed(0)
    expert = AnomalyExpert(hidden_size=24, embed_dim=16, grid_size=grid, temperature=temperature, eps=0.0).double()
    v, levels = _inputs(counts, grid, 24, seed=1)
    v, levels = v.double(), [f.double() for f in levels]
    with torch.no_grad():
        out = expert(v, levels, counts)
        maps, tokens, glob, scores = release_reference(expert, v, levels, counts)
    torch.testing.assert_close(out.maps, maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.crop_tokens, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.global_tokens, glob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.scores, scores, atol=1e-5, rtol=0)


def test_tiny_eps_matches_release_float32():
    torch.manual_seed(0)
    expert = AnomalyExpert(hidden_size=24, embed_dim=16, grid_size=5, temperature=100.0, eps=1e-8)
    v, levels = _inputs([3, 1], 5, 24, seed=2)
    with torch.no_grad():
        out = expert(v, levels, [3, 1])
        _, tokens, glob, scores = release_reference(expert, v, levels, [3, 1])
    torch.testing.assert_close(out.scores, scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.global_tokens, glob, atol=1e-4, rtol=1e-4)


def _collapse(expert: AnomalyExpert) -> None:
    """Make every map exactly 0: features equal the normal prompt, the abnormal prompt opposite, huge temperature."""
    e = expert.embed_dim
    with torch.no_grad():
        expert.temperature = 1e6
        expert.positive_embedding.zero_()[0, 0] = 1.0
        expert.negative_embedding.zero_()[0, 0] = -1.0
        for i in range(4):
            expert.prompt_adaptors[i].weight.zero_()[:, :e] = torch.eye(e)
            expert.prompt_adaptors[i].bias.zero_()
            expert.siglip_adaptors[i].weight.zero_()
            expert.siglip_adaptors[i].bias.zero_()[0] = 1.0


@pytest.mark.parametrize(("eps", "finite"), [(0.0, False), (1e-6, True)])
def test_eps_guards_collapsed_map(eps, finite):
    expert = AnomalyExpert(hidden_size=8, embed_dim=8, grid_size=4, eps=eps)
    _collapse(expert)
    v, levels = _inputs([2], 4, 8)
    with torch.no_grad():
        out = expert(v, levels, [2])
    assert float(out.maps.max()) == 0.0
    assert bool(torch.isfinite(out.scores).all()) is finite


def test_full_size_parameter_count_and_release_keys():
    expert = AnomalyExpert()
    assert set(expert.state_dict()) == RELEASE_KEYS
    assert 7.0e6 < count_parameters(expert) < 7.2e6


def test_release_state_dict_loads_all_keys(tmp_path):
    src = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=3)
    path = tmp_path / "pretrained_expert_tiny.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    dst = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=3)
    report = load_expert_weights(dst, path, strict=True)
    assert set(report["matched"]) == set(src.state_dict()) and not report["missing"] and not report["unexpected"]
    for k, val in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], val)


def test_wrong_checkpoint_is_refused(tmp_path):
    dst = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=3)
    with pytest.raises(ExpertWeightsError, match="no key matches"):
        load_expert_weights(dst, {"encoder.weight": torch.zeros(3)})
    other = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4).state_dict()
    with pytest.raises(ExpertWeightsError, match="another shape"):
        load_expert_weights(dst, other)
    with pytest.raises(ExpertWeightsError, match="missing"):
        load_expert_weights(dst, {"positive_embedding": torch.zeros(1, 8)}, strict=True)


def test_bad_crop_counts_are_refused():
    expert = AnomalyExpert(hidden_size=8, embed_dim=8, grid_size=3)
    v, levels = _inputs([2], 3, 8)
    with pytest.raises(ValueError, match="sums to"):
        expert(v, levels, [3])
    with pytest.raises(ValueError, match="at least one crop"):
        expert(v, levels, [2, 0])
