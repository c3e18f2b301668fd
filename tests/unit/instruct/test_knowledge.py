"""The defect knowledge base: aliases, category-aware wording, generic fallback, user extension files."""

from __future__ import annotations

import pytest

from anomaly_ov.instruct.knowledge import DOMAINS, KnowledgeError, load_knowledge

INDUSTRIAL = ["scratch", "crack", "hole", "stain", "missing", "bent", "color", "extra"]


def test_every_domain_and_entry_is_complete():
    kb = load_knowledge()
    assert set(kb.domains) == set(DOMAINS)
    for defect in INDUSTRIAL:
        info = kb.defect("industrial", defect, "tile")
        assert info.key == defect
        for field in ("names", "what", "causes", "impact", "prevention"):
            values = getattr(info, field)
            assert values and all(v.strip() and "{" not in v for v in values), (defect, field)
        assert len(info.what) >= 2 and len(info.causes) >= 2


def test_listings_name_each_domains_own_keys():
    kb = load_knowledge()
    assert set(INDUSTRIAL) <= set(kb.defect_types("industrial")) and "generic" not in kb.defect_types("industrial")
    assert {"cylinder", "box", "bowl", "sphere"} <= set(kb.categories("3d"))
    assert "ring" not in kb.categories("3d")  # an alias of torus, not a key
    for domain in kb.domains:
        assert all(kb.category(domain, name).key == name for name in kb.categories(domain)), domain
    with pytest.raises(KeyError, match="unknown knowledge domain"):
        kb.categories("audio")


@pytest.mark.parametrize(("domain", "name", "key"), [
    ("industrial", "scratch_head", "scratch"), ("industrial", "broken_large", "crack"),
    ("industrial", "metal_contamination", "stain"), ("industrial", "missing_wire", "missing"),
    ("industrial", "bent_lead", "bent"), ("industrial", "faulty_imprint", "color"), ("industrial", "Chip", "crack"),
    ("industrial", "something odd", "generic"), ("medical", "Ungood", "lesion"), ("medical", "tumor", "tumour"),
    ("medical", "hemorrhage", "haemorrhage"), ("3d", "bulge", "bump"), ("3d", "concavity", "dent"),
    ("3d", "missing_part", "missing"),
])
def test_aliases(domain, name, key):
    assert load_knowledge().defect_key(domain, name) == key


def test_category_aware_wording():
    kb = load_knowledge()
    tile, pill = kb.defect("industrial", "crack", "tiles"), kb.defect("industrial", "crack", "pill")
    assert tile.causes != pill.causes
    assert any("tablet" in c or "press" in c for c in pill.causes)
    assert any("ceramic" in c or "kiln" in c or "tile" in c for c in tile.causes + tile.prevention)
    assert kb.category("industrial", "macaroni2").noun == "macaroni"
    assert kb.category("industrial", "tiles").texture and not kb.category("industrial", "pill").texture
    unknown = kb.category("industrial", "gizmo_3")
    assert unknown.noun == "gizmo" and not unknown.texture
    assert kb.defect("industrial", "weird", "gizmo").is_generic


def test_user_extension_file(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        "domain: industrial\n"
        "categories:\n  gizmo: {noun: gizmo, material: alloy, texture: false, normal: ['a shiny gizmo']}\n"
        "defects:\n  wobble:\n    aliases: [wobbly]\n    names: [wobble]\n    what: ['a wobbly {material} part']\n"
        "    causes: [loose bolts]\n    impact: [it rattles]\n    prevention: [tighten the bolts]\n"
    )
    kb = load_knowledge(str(extra))
    info = kb.defect("industrial", "wobbly", "gizmo")
    assert info.key == "wobble" and info.what == ("a wobbly alloy part",)
    assert kb.defect("industrial", "scratch", "gizmo").key == "scratch"  # built-ins stay
    bad = tmp_path / "bad.yaml"
    bad.write_text("defects: {}\n")
    with pytest.raises(KnowledgeError, match="domain"):
        load_knowledge(str(bad))
    with pytest.raises(FileNotFoundError, match="knowledge_path"):
        load_knowledge(str(tmp_path / "missing.yaml"))
