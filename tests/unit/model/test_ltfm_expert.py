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


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_exactly_zero_pooled_map_gives_zero_tokens_not_nan(eps):
    """The release divides by the pooled map, NaN when a map is exactly 0; the guard returns 0 there, any eps."""
    expert = AnomalyExpert(hidden_size=8, embed_dim=8, grid_size=4, eps=eps)
    _collapse(expert)
    v, levels = _inputs([2], 4, 8)
    with torch.no_grad():
        out = expert(v, levels, [2])
    assert float(out.maps.max()) == 0.0
    assert bool(torch.isfinite(out.scores).all()) and bool(torch.isfinite(out.crop_tokens).all())
    assert float(out.global_tokens.abs().max()) == 0.0


def _confidently_normal(expert: AnomalyExpert, margin: float = 0.04) -> None:
    """Every token's feature sits at cosine +margin to the normal prompt and -margin to the abnormal one: at
    temperature 100 the map is sigmoid(-2 * 100 * margin) = 3.4e-4 everywhere (a confidently normal crop)."""
    e = expert.embed_dim
    with torch.no_grad():
        expert.positive_embedding.zero_()[0, 0] = 1.0
        expert.negative_embedding.zero_()[0, 0] = -1.0
        for i in range(4):
            expert.prompt_adaptors[i].weight.zero_()[:, :e] = torch.eye(e)
            expert.prompt_adaptors[i].bias.zero_()
            expert.siglip_adaptors[i].weight.zero_()
            bias = expert.siglip_adaptors[i].bias.zero_()
            bias[0], bias[1] = margin, (1 - margin**2) ** 0.5


def test_pretrained_presets_use_the_release_maths_and_tiny_keeps_its_eps():
    """A confidently normal crop (mean map 3e-4): with eps 1e-6 the global token shrank to ~0.3x the release's; the
    pretrained presets' expert (settings from params) now computes the release's numbers."""
    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import expert_config

    pretrained = expert_config(Params(model={"preset": "llava-onevision-0.5b"}))
    assert pretrained["eps"] == 0.0 and pretrained["temperature"] == 100.0
    assert expert_config(Params())["eps"] == 1e-6  # tiny: explicit, its from-scratch training needs it
    explicit = Params(model={"preset": "llava-onevision-7b", "expert": {"eps": 1e-7}})
    assert expert_config(explicit)["eps"] == 1e-7

    torch.manual_seed(0)
    expert = AnomalyExpert(**{**pretrained, "embed_dim": 8}, hidden_size=16, grid_size=6).double()
    _confidently_normal(expert)
    v, levels = _inputs([1, 1], 6, 16, seed=3)
    v, levels = v.double(), [f.double() for f in levels]
    with torch.no_grad():
        out = expert(v, levels, [1, 1])
        _, _, glob, scores = release_reference(expert, v, levels, [1, 1])
        expert.eps = 1e-6
        with_eps = expert(v, levels, [1, 1]).global_tokens
    assert 2e-4 < float(out.maps.mean()) < 5e-4
    torch.testing.assert_close(out.global_tokens, glob, atol=0, rtol=1e-6)
    torch.testing.assert_close(out.scores, scores, atol=0, rtol=1e-6)
    ratio = float(with_eps.norm() / glob.norm())
    assert ratio < 0.5, ratio  # what an eps of 1e-6 did to the release's global token


def test_eps_counts_once_per_crop_so_a_repeated_base_view_changes_nothing():
    """A 128 px image's one AnyRes crop is its base view again. The tiny recipe's stage 1 trains on the base view alone
    (``base_view_only``) and inference runs both; with eps once per image the two-crop global token of a confidently
    normal image was about 1.5 times the one-crop token that the predictor was trained on."""
    torch.manual_seed(0)
    expert = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=6, temperature=100.0, eps=1e-6).double()
    _confidently_normal(expert)
    v, levels = _inputs([1], 6, 16, seed=3)
    v, levels = v.double(), [f.double() for f in levels]
    with torch.no_grad():
        alone = expert(v, levels, [1])
        repeated = expert(v.repeat(2, 1, 1), [f.repeat(2, 1, 1) for f in levels], [2])
        expert.eps = 0.0
        release = expert(v, levels, [1])
    assert 2e-4 < float(alone.maps.mean()) < 5e-4  # where eps is not small next to the global weight
    torch.testing.assert_close(repeated.global_tokens, alone.global_tokens, atol=0, rtol=1e-9)
    torch.testing.assert_close(repeated.scores, alone.scores, atol=0, rtol=1e-9)
    assert float(alone.global_tokens.norm() / release.global_tokens.norm()) < 0.5  # eps still shrinks it


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


def release_shapes(hidden: int = 1152, embed: int = 512, patches: int = 729) -> dict[str, tuple[int, ...]]:
    """Every tensor of the release's AnomalyOV expert (its module names; 1152 -> 512 at full size), written out from
    the release's module definitions rather than from this package's class."""
    shapes: dict[str, tuple[int, ...]] = {
        "positive_embedding": (1, embed), "negative_embedding": (1, embed),
        "pooling_layer.0.weight": (1, patches), "pooling_layer.0.bias": (1,),
        "class_predictor.0.weight": (embed, hidden), "class_predictor.0.bias": (embed,),
        "class_predictor.2.weight": (embed, embed), "class_predictor.2.bias": (embed,),
        "final_predictor.0.weight": (512, hidden), "final_predictor.0.bias": (512,),
        "final_predictor.2.weight": (1, 512), "final_predictor.2.bias": (1,),
        "q_former.query_proj.weight": (embed, hidden), "q_former.query_proj.bias": (embed,),
        "q_former.key_proj.weight": (embed, hidden), "q_former.key_proj.bias": (embed,),
    }
    for i in range(4):
        shapes[f"siglip_adaptors.{i}.weight"], shapes[f"siglip_adaptors.{i}.bias"] = (embed, hidden), (embed,)
        shapes[f"prompt_adaptors.{i}.weight"], shapes[f"prompt_adaptors.{i}.bias"] = (embed, 2 * embed), (embed,)
    return shapes


@pytest.mark.parametrize("prefix", ["", "anomaly_encoder.", "model.anomaly_encoder.", "module.anomaly_encoder."])
def test_release_expert_pth_at_full_size_loads_strictly(tmp_path, prefix):
    """The release saves its expert as the bare AnomalyOV state dict (pretrained_expert_{05b,7b}.pth; loaded with
    torch.load + load_state_dict); inside its whole LLaVA model the expert sits at ``anomaly_encoder`` of the causal
    LM (``model.anomaly_encoder`` in a wrapped one, ``module.`` under DDP) next to every other weight."""
    gen = torch.Generator().manual_seed(0)
    release = {k: torch.randn(shape, generator=gen).to(torch.bfloat16) for k, shape in release_shapes().items()}
    state = {prefix + k: v for k, v in release.items()}
    if prefix:  # a whole-model state dict: other weights beside the expert
        state |= {"model.embed_tokens.weight": torch.zeros(4, 8), "lm_head.weight": torch.zeros(4, 8),
                  "model.mm_projector.0.weight": torch.zeros(8, 8)}
    path = tmp_path / "pretrained_expert_05b.pth"
    torch.save(state, path)
    expert = AnomalyExpert()  # the pretrained presets' expert: SigLIP so400m (1152) -> 512, 27 x 27 grid
    report = load_expert_weights(expert, path, strict=True)
    assert set(report["matched"]) == set(release) == RELEASE_KEYS and not report["missing"]
    assert not report["unexpected"]
    for key, value in release.items():
        assert torch.equal(expert.state_dict()[key], value.float()), key
    assert 7.0e6 < sum(v.numel() for v in release.values()) < 7.2e6


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


@pytest.mark.parametrize("image_score", ["predictor", "map_max", "fusion"])
def test_image_score_reads_the_predictor_or_the_base_view_map(image_score):
    """``image_score`` changes what ``scores`` is, nothing else: the predictor's logits (stage 1's BCE trains them),
    the maps and the tokens stay the release's numbers, and the map is read from each image's base view only."""
    torch.manual_seed(0)
    counts = [3, 1, 2]
    release = AnomalyExpert(hidden_size=24, embed_dim=16, grid_size=5, temperature=10.0).double()
    expert = AnomalyExpert(hidden_size=24, embed_dim=16, grid_size=5, temperature=10.0, image_score=image_score)
    expert = expert.double()
    expert.load_state_dict(release.state_dict())
    v, levels = _inputs(counts, 5, 24, seed=2)
    v, levels = v.double(), [f.double() for f in levels]
    with torch.no_grad():
        ref, out = release(v, levels, counts), expert(v, levels, counts)
    torch.testing.assert_close(out.score_logits, ref.score_logits, atol=0, rtol=0)
    torch.testing.assert_close(out.global_tokens, ref.global_tokens, atol=0, rtol=0)
    peak = torch.stack([ref.maps[i].max() for i in (0, 3, 4)]).reshape(3, 1)  # base views: rows 0, 3, 4
    expected = {"predictor": ref.scores, "map_max": peak, "fusion": (ref.scores + peak) / 2}[image_score]
    torch.testing.assert_close(out.scores, expected, atol=1e-12, rtol=0)
    assert expert.config_dict()["image_score"] == image_score


def test_image_score_settings_resolve_per_preset_and_refuse_unknown_names():
    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import TINY_EXPERT, expert_config

    assert expert_config(Params(model={"preset": "llava-onevision-7b"}))["image_score"] == "predictor"  # the release
    assert expert_config(Params())["image_score"] == TINY_EXPERT["image_score"]
    assert expert_config(Params(model={"expert": {"image_score": "map_max"}}))["image_score"] == "map_max"
    with pytest.raises(ValueError, match="image_score must be one of"):
        AnomalyExpert(hidden_size=8, embed_dim=4, grid_size=3, image_score="top_k")
    # params.yaml accepts exactly the expert's settings (the Literal repeats IMAGE_SCORES for the type checker)
    import typing

    from anomaly_ov.config import ExpertParams
    from anomaly_ov.model.expert import IMAGE_SCORES

    literal = next(a for a in typing.get_args(ExpertParams.model_fields["image_score"].annotation) if a is not None)
    assert typing.get_args(literal) == IMAGE_SCORES
    with pytest.raises(ValueError, match="'map_max' needs the base views' maps"):
        AnomalyExpert(hidden_size=8, embed_dim=4, grid_size=3, image_score="map_max").image_scores(torch.zeros(2, 1))


def test_detached_selector_gives_the_same_outputs_and_keeps_the_score_loss_off_the_maps():
    torch.manual_seed(0)
    expert = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4, temperature=10.0, eps=1e-6)
    counts = [2, 1]
    v, levels = _inputs(counts, 4, 16)
    v.requires_grad_(True)
    attached = expert(v, levels, counts)
    detached = expert(v, levels, counts, detach_selector=True)
    for name in ("maps", "crop_tokens", "global_tokens", "scores", "significance"):
        assert torch.equal(getattr(attached, name), getattr(detached, name)), name

    def grads(out) -> dict[str, torch.Tensor | None]:
        expert.zero_grad(set_to_none=True)
        v.grad = None
        out.score_logits.sum().backward()
        return {**{n: p.grad for n, p in expert.named_parameters()}, "features": v.grad}

    with_maps = grads(expert(v, levels, counts))
    without = grads(expert(v, levels, counts, detach_selector=True))
    map_side = ("siglip_adaptors.0.weight", "prompt_adaptors.0.weight", "class_predictor.0.weight",
                "negative_embedding", "features")
    assert all(with_maps[n] is not None and with_maps[n].abs().sum() > 0 for n in map_side)
    assert all(without[n] is None for n in map_side), "the image-score loss reached the maps or the tower"
    for name in ("q_former.query_proj.weight", "final_predictor.0.weight"):
        assert without[name] is not None and without[name].abs().sum() > 0, name


def test_self_similarity_scores_a_patch_without_a_twin_and_not_a_repeated_part():
    from anomaly_ov.model.expert import self_similarity

    grid, channels = 6, 4
    plain = torch.zeros(grid * grid, channels)
    plain[:, 0] = 1.0  # every patch alike
    repeated = plain.clone()
    repeated[0] = repeated[35] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # one part in two far corners: each has a twin
    defect = plain.clone()
    defect[14] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # one patch unlike every other
    near_twin = plain.clone()
    near_twin[14] = near_twin[15] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # its only twin is a neighbour: not compared
    scores = self_similarity(torch.stack([plain, repeated, defect, near_twin]), grid, radius=1, top_fraction=0.02)
    assert scores.tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0], abs=1e-6)


def test_self_similarity_term_adds_a_trained_multiple_to_the_predictor_logit_and_no_release_key():
    from anomaly_ov.model.expert import SELF_SIMILARITY_GAIN, self_similarity

    torch.manual_seed(0)
    plain = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4, temperature=10.0, eps=1e-6)
    with_term = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4, temperature=10.0, eps=1e-6,
                              self_similarity=True)
    assert set(with_term.state_dict()) - set(plain.state_dict()) == {"self_similarity_scale", "self_similarity_shift"}
    assert AnomalyExpert(**plain.config_dict()).state_dict().keys() == plain.state_dict().keys()
    assert AnomalyExpert(**with_term.config_dict()).self_similarity
    with_term.load_state_dict(plain.state_dict(), strict=False)
    counts = [2, 1]
    v, levels = _inputs(counts, 4, 16)
    assert torch.equal(with_term(v, levels, counts).score_logits, plain(v, levels, counts).score_logits)  # scale 0
    with torch.no_grad():
        with_term.self_similarity_scale.fill_(0.5)
    out = with_term(v, levels, counts, detach_selector=True)
    base = v.index_select(0, out.base_index)
    expected = plain(v, levels, counts).score_logits + SELF_SIMILARITY_GAIN * 0.5 * (
        self_similarity(base, 4)[:, None] - 0.3)
    assert torch.allclose(out.score_logits, expected, atol=1e-6)
    out.score_logits.sum().backward()
    assert with_term.self_similarity_scale.grad is not None and with_term.self_similarity_shift.grad is not None


def test_self_similarity_setting_resolves_per_preset():
    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import expert_config

    assert expert_config(Params(model={"preset": "llava-onevision-7b"}))["self_similarity"] is False  # the release
    assert expert_config(Params())["self_similarity"] is True  # the tiny preset
    assert expert_config(Params(model={"expert": {"self_similarity": False}}))["self_similarity"] is False


def _float32_softmax_like_cuda_autocast(monkeypatch):
    """CUDA autocast runs softmax in float32 whatever its input; CPU autocast (bf16 matmuls) does not: patch it in."""
    softmax = torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, *a, **k: softmax(self.float(), *a, **k))


def test_bf16_expert_accepts_float32_maps_as_under_cuda_autocast(monkeypatch):
    # a frozen bf16 expert (stage 2 on a GPU) whose maps come out of autocast's float32 softmax: the global token's
    # sums mix bf16 tokens with float32 weights; they once failed with "index_add_(): self (BFloat16) and source
    # (Float) must have the same scalar type" on the first step of the pretrained stage 2 on an H200
    torch.manual_seed(0)
    counts = [3, 1]
    expert = AnomalyExpert(hidden_size=32, embed_dim=16, grid_size=4)
    v, levels = _inputs(counts, 4, 32)
    with torch.no_grad():
        reference = expert(v, levels, counts)
    expert = expert.to(torch.bfloat16)
    _float32_softmax_like_cuda_autocast(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = expert(v.to(torch.bfloat16), [f.to(torch.bfloat16) for f in levels], counts)
    assert out.maps.dtype == torch.float32
    assert out.global_tokens.shape == (2, 1, 32)
    torch.testing.assert_close(out.global_tokens.float(), reference.global_tokens, atol=0.05, rtol=0.05)
    torch.testing.assert_close(out.scores.float(), reference.scores, atol=0.02, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_expert_under_cuda_autocast_matches_float32():
    torch.manual_seed(0)
    counts = [3, 1, 2]
    expert = AnomalyExpert(hidden_size=32, embed_dim=16, grid_size=4).cuda()
    v, levels = _inputs(counts, 4, 32)
    v, levels = v.cuda(), [f.cuda() for f in levels]
    with torch.no_grad():
        reference = expert(v, levels, counts)
        half = expert.to(torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = half(v.to(torch.bfloat16), [f.to(torch.bfloat16) for f in levels], counts)
    torch.testing.assert_close(out.global_tokens.float(), reference.global_tokens, atol=0.05, rtol=0.05)
    torch.testing.assert_close(out.scores.float(), reference.scores, atol=0.02, rtol=0)


def test_calibrated_fusion_scores_the_predictor_until_calibrated_then_the_calibrated_sum():
    """``calibrated_fusion`` adds one buffer, scores what the predictor does until a calibration is set, then
    ``sigmoid(slope * z + bias)`` of the standardised sum ``z``; it changes nothing but ``scores``."""
    from anomaly_ov.model.expert import ScoreCalibration, self_similarity

    torch.manual_seed(0)
    plain = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4, temperature=10.0, eps=1e-6, self_similarity=True)
    fused = AnomalyExpert(**{**plain.config_dict(), "image_score": "calibrated_fusion"})
    assert set(fused.state_dict()) - set(plain.state_dict()) == {"score_calibration"}
    fused.load_state_dict(plain.state_dict(), strict=False)
    counts = [2, 1, 3]
    v, levels = _inputs(counts, 4, 16, seed=3)
    with torch.no_grad():
        ref, out = plain(v, levels, counts), fused(v, levels, counts)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-7, rtol=0)  # identity: the predictor's probability
    torch.testing.assert_close(out.score_logits, ref.score_logits, atol=0, rtol=0)
    similarity = self_similarity(v.index_select(0, out.base_index), 4)[:, None]
    torch.testing.assert_close(out.similarity, similarity)
    assert plain(v, levels, counts).similarity is not None  # the trained term reads it too
    calibration = ScoreCalibration(logit_mean=0.2, logit_std=0.5, similarity_mean=0.3, similarity_std=0.1,
                                   slope=1.7, bias=-0.4)
    fused.set_score_calibration(calibration)
    with torch.no_grad():
        out = fused(v, levels, counts)
    expected = torch.sigmoid(1.7 * calibration.fused(ref.score_logits, similarity) - 0.4)
    torch.testing.assert_close(out.scores, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.score_logits, ref.score_logits, atol=0, rtol=0)
    rebuilt = AnomalyExpert(**fused.config_dict())  # what load_expert_stage does: the calibration is in the weights
    rebuilt.load_state_dict(fused.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(v, levels, counts).scores, out.scores, atol=0, rtol=0)
    with pytest.raises(ValueError, match="needs image_score='calibrated_fusion'"):
        plain.set_score_calibration(calibration)
    with pytest.raises(ValueError, match="slope must be > 0"):
        ScoreCalibration(0.0, 1.0, 0.0, 1.0, slope=-0.1, bias=0.0)
    assert AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4)(v, levels, counts).similarity is None


def test_release_checkpoint_loads_strictly_into_a_calibrated_fusion_expert(tmp_path):
    """A release file has no ``score_calibration`` (stage 1 fits it after loading): the strict load takes it as the
    identity, so the official expert scores as released until calibrated; any other missing key still fails."""
    release = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4)
    path = tmp_path / "pretrained_expert_05b.pth"
    torch.save(release.state_dict(), path)
    expert = AnomalyExpert(hidden_size=16, embed_dim=8, grid_size=4, image_score="calibrated_fusion")
    report = load_expert_weights(expert, path, strict=True)
    assert report["missing"] == ["score_calibration"] and set(report["matched"]) == RELEASE_KEYS
    assert expert.score_calibration.tolist() == [1.0, 0.0, 0.0]
    state = dict(release.state_dict())
    state.pop("final_predictor.2.bias")
    with pytest.raises(ExpertWeightsError, match=r"missing keys \['final_predictor.2.bias'\]"):
        load_expert_weights(expert, state, strict=True)
    # the other way round: a calibrated expert's file into an expert built without the option says which to build
    with pytest.raises(ExpertWeightsError, match=r"unexpected keys \['score_calibration'\].*image_score"):
        load_expert_weights(release, expert.state_dict(), strict=True)
