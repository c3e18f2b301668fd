"""The answers' verdict comes first: every answer about a normal image opens with a negative word, no answer about an
anomalous image does (``anomaly_ov.instruct.answers.NORMAL_OPENERS``)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from anomaly_ov.instruct import answers as A
from anomaly_ov.instruct.knowledge import load_knowledge
from anomaly_ov.instruct.regions import region_facts


def _masks() -> list[np.ndarray]:
    one = np.zeros((64, 64), dtype=bool)
    one[10:20, 40:52] = True
    two = one.copy()
    two[45:60, 5:9] = True
    return [one, two]


def _subjects(domain: str) -> list[A.Subject]:
    kb = load_knowledge()
    subjects = []
    for name in kb.categories(domain):
        category = kb.category(domain, name)
        views = 4 if domain == "3d" else 1
        subjects.append(A.Subject("normal", category, None, None, domain=domain, views=views))
        for defect in [*kb.defect_types(domain), "something_unknown"]:
            info = kb.defect(domain, defect, name)
            subjects.append(A.Subject("anomaly", category, info, None, domain=domain, views=views))  # not localised
            for mask in _masks():
                subjects.append(A.Subject("anomaly", category, info, region_facts(mask), domain=domain, views=views,
                                          view_index=1 if views > 1 else None))
    return subjects


@pytest.mark.parametrize("domain", ["industrial", "medical", "3d"])
def test_a_normal_answer_opens_with_its_verdict_and_an_anomalous_one_never_does(domain: str) -> None:
    rng = random.Random(0)
    checked = {"normal": 0, "anomaly": 0}
    for subject in _subjects(domain):
        for _ in range(12):
            answers = [A.low_level_answer(rng, subject, sub) for sub in A.LOW_LEVEL_QUESTIONS]
            answers += [A.complex_answer(rng, subject, sub) for sub in A.COMPLEX_QUESTIONS]
            for answer in answers:
                assert A.opens_with_no_defect(answer) == (not subject.anomalous), (subject.label, answer)
                checked[subject.label] += 1
    assert checked["normal"] > 0 and checked["anomaly"] > 0
