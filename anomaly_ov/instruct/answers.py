"""Question and answer templates: region facts + defect knowledge -> short, varied, truthful sentences.

Every answer about a defect is built from :class:`~anomaly_ov.instruct.regions.MaskFacts` (location, size,
count, shape, appearance) and :class:`~anomaly_ov.instruct.knowledge.DefectInfo` (what, cause, impact,
prevention); normal images get answers that say no defect is visible and describe the normal object. Answers are
kept to 1-3 sentences for the tiny model. Randomness comes from the caller's ``random.Random`` only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from anomaly_ov.instruct.knowledge import CategoryInfo, DefectInfo
from anomaly_ov.instruct.regions import MaskFacts, Region, count_word, with_preposition
from anomaly_ov.model.tokenizer import DETECTION_PROMPT

DETECTION = "detection"
LOW_LEVEL = "low_level"
COMPLEX = "complex"
KINDS = (DETECTION, LOW_LEVEL, COMPLEX)

#: the detection phrasings; the VisA-D&R prompt is always one of them
DETECTION_QUESTIONS: tuple[str, ...] = (
    DETECTION_PROMPT,
    "Is there any anomaly in this image? Please reply with 'Yes' or 'No'.",
    "Does this {object} have a defect? Answer Yes or No.",
    "Is the {object} in the image defective? Reply with Yes or No.",
    "Can you see any flaw on this {object}? Answer with one word: Yes or No.",
    "Are there any anomalies in the image? Answer Yes or No.",
    "Is anything wrong with this {object}? Please answer Yes or No.",
    "Does the image show a damaged or faulty {object}? Yes or No?",
    "Inspect the {object}. Is there a defect? Answer only Yes or No.",
    "Would this {object} fail a visual quality inspection? Reply Yes or No.",
    "Is there an abnormal region in this image? Please reply with 'Yes' or 'No'.",
    "Check the image for defects. Is one present? Answer Yes or No.",
)

LOW_LEVEL_QUESTIONS: dict[str, tuple[str, ...]] = {
    "describe": (
        "Describe any defect you see on the {object}.",
        "Describe the condition of the {object} in the image.",
        "What does the image show? Mention any anomaly.",
        "Give a short inspection report for this {object}.",
        "Please describe the anomaly in the image, if there is one.",
    ),
    "what": (
        "What kind of defect is on the {object}?",
        "What is wrong with this {object}?",
        "What type of anomaly can you see?",
        "Which defect does the {object} have?",
    ),
    "where": (
        "Where is the defect located?",
        "Where in the image is the anomaly?",
        "In which part of the image is the defect?",
        "Point out where the {object} is damaged.",
    ),
    "size": (
        "How big is the defect?",
        "How large is the anomalous area?",
        "How much of the {object} is affected?",
    ),
    "explain": (
        "Is there anything unusual about this {object}? Explain briefly.",
        "Do you see a defect on the {object}? Answer and give a short reason.",
        "Is this {object} defective? If so, say what and where.",
    ),
    "count": (
        "How many defective regions are there?",
        "How many anomalies can you find in the image?",
        "Count the defects on the {object}.",
    ),
}

COMPLEX_QUESTIONS: dict[str, tuple[str, ...]] = {
    "cause": (
        "What could have caused this defect?",
        "What is the most likely cause of the anomaly?",
        "Why might the {object} look like this?",
        "Explain how this defect may have formed.",
    ),
    "impact": (
        "How could this affect the {object}?",
        "What is the impact of this anomaly?",
        "Why does this defect matter?",
        "Is the {object} still fit for use? Explain briefly.",
    ),
    "prevention": (
        "How can this kind of defect be prevented?",
        "What should be done to avoid this problem in the future?",
        "What would you recommend to prevent this anomaly?",
    ),
}

MEDICAL_COMPLEX_QUESTIONS: dict[str, tuple[str, ...]] = {
    "cause": ("What could this finding be caused by?", "What are the likely causes of this abnormality?"),
    "impact": ("What is the clinical significance of this finding?", "Why does this abnormality matter?"),
    "prevention": ("What follow-up would you recommend?", "What should be done next about this finding?"),
}

_APPEARANCE = {
    "darker": ("darker than its surroundings", "darker than the surrounding {material}"),
    "brighter": ("brighter than its surroundings", "lighter than the surrounding {material}"),
    "reddish": ("with a reddish tint", "reddish compared with the rest of the {object}"),
    "greenish": ("with a greenish tint", "greenish compared with the rest of the {object}"),
    "bluish": ("with a bluish tint", "bluish compared with the rest of the {object}"),
    "subtle": ("with only a subtle change in appearance", "only subtly different from its surroundings"),
}


@dataclass(frozen=True)
class Subject:
    """What the answers talk about: one image (or one multi-view object) with its facts and knowledge."""

    label: str
    category: CategoryInfo
    defect: DefectInfo | None
    facts: MaskFacts | None
    domain: str = "industrial"
    views: int = 1
    view_index: int | None = None  # 0-based view the facts come from (multi-view subjects)

    @property
    def anomalous(self) -> bool:
        return self.label == "anomaly"

    @property
    def localised(self) -> bool:
        return self.facts is not None and not self.facts.is_empty

    @property
    def marked_facts(self) -> MaskFacts:
        """The mask facts of a :attr:`localised` subject (raises for a subject without)."""
        if self.facts is None:
            raise ValueError("this subject has no mask facts (check `localised` first)")
        return self.facts


# ------------------------------------------------------------------------------------------------ helpers
def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


#: defect names used without an article ("there is excess material", not "an excess material").
MASS_NOUNS = frozenset({"excess material", "extra material", "contamination", "discolouration", "damage"})


def _a(name: str) -> str:
    """The defect name with its indefinite article ("a scratch", "an opacity", "excess material")."""
    return name if name in MASS_NOUNS else f"{_article(name)} {name}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _percent(fraction: float) -> str:
    pct = fraction * 100
    if pct < 1:
        return "less than 1%"
    return f"about {pct:.0f}%"


def _shape_phrase(region: Region) -> str:
    if region.shape in ("thin line", "elongated streak") and region.orientation:
        return f"{region.orientation} {region.shape}"
    return region.shape


def _appearance(rng: random.Random, region: Region, cat: CategoryInfo) -> str:
    return _pick(rng, _APPEARANCE.get(region.appearance, _APPEARANCE["subtle"])).format(
        material=cat.material, object=cat.noun
    )


def _view_note(subject: Subject) -> str:
    if subject.views > 1 and subject.view_index is not None:
        return f" (seen best in view {subject.view_index + 1})"
    return ""


def _where_list(facts: MaskFacts) -> str:
    parts = [f"one {with_preposition(r.location)}" for r in facts.regions]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


#: detection phrasings that only make sense for manufactured objects (left out for medical images).
_INDUSTRIAL_ONLY = ("quality inspection", "damaged or faulty")
_MEDICAL_WORDS = (
    (re.compile(r"\bdefects\b"), "abnormalities"),
    (re.compile(r"\bdefect\b"), "abnormality"),
    (re.compile(r"\bdefective\b"), "abnormal"),
    (re.compile(r"\bflaw\b"), "abnormality"),
    (re.compile(r"\bis damaged\b"), "looks abnormal"),
)


def medical_wording(text: str, subject: Subject) -> str:
    """Industrial words -> clinical ones for medical subjects ("defect" -> "abnormality", "on the scan" -> "in
    the scan"); the canonical VisA-D&R detection prompt is never changed."""
    if subject.domain != "medical" or DETECTION_PROMPT in text:
        return text
    for pattern, word in _MEDICAL_WORDS:
        text = pattern.sub(word, text)
    return text.replace(f" on the {subject.category.noun}", f" in the {subject.category.noun}")


#: share of training questions that name the object ("Is this hex nut defective?"); the others say "the object".
#: A question that names it lets the answer copy the name from the prompt; in zero-shot inspection nobody tells the
#: model what it looks at, so most questions do not, and the answers' object names must come from the image.
OBJECT_NAMED_SHARE = 0.2

#: what a question calls the subject when it does not name it (the canonical VisA-D&R prompt's word).
GENERIC_OBJECT = "object"


def fill(question: str, subject: Subject, *, named: bool = True) -> str:
    """``question`` with its ``{object}`` slot filled: the category's noun, or :data:`GENERIC_OBJECT` when not
    ``named``. Medical subjects are always named (a radiologist knows which scan they read)."""
    noun = subject.category.noun if named or subject.domain == "medical" else GENERIC_OBJECT
    return medical_wording(question.format(object=noun), subject)


def names_object(rng: random.Random) -> bool:
    """Whether a training question names its object (drawn with :data:`OBJECT_NAMED_SHARE`)."""
    return rng.random() < OBJECT_NAMED_SHARE


# ------------------------------------------------------------------------------------------------ questions
#: share of detection turns that use the canonical VisA-D&R prompt (the one evaluation asks).
CANONICAL_SHARE = 0.25


def detection_question(rng: random.Random, subject: Subject) -> str:
    """A detection question; the canonical VisA-D&R prompt a quarter of the time, else one of the phrasings."""
    if rng.random() < CANONICAL_SHARE:
        return DETECTION_PROMPT
    options = DETECTION_QUESTIONS
    if subject.domain == "medical":
        options = tuple(q for q in DETECTION_QUESTIONS if not any(word in q for word in _INDUSTRIAL_ONLY))
    return fill(_pick(rng, options), subject, named=names_object(rng))


def low_level_question(rng: random.Random, subject: Subject, sub: str) -> str:
    return fill(_pick(rng, LOW_LEVEL_QUESTIONS[sub]), subject, named=names_object(rng))


def complex_question(rng: random.Random, subject: Subject, sub: str) -> str:
    table = MEDICAL_COMPLEX_QUESTIONS if subject.domain == "medical" else COMPLEX_QUESTIONS
    return fill(_pick(rng, table[sub]), subject, named=names_object(rng))


# -------------------------------------------------------------------------------------------------- answers
def detection_answer(subject: Subject) -> str:
    """Exactly "Yes" or "No" (the one-word detection target)."""
    return "Yes" if subject.anomalous else "No"


def _normal_sentence(rng: random.Random, subject: Subject) -> str:
    desc = _pick(rng, subject.category.normal)
    return _pick(rng, (
        f"The image shows {desc}.",
        f"This is {desc}.",
        f"I see {desc}.",
    ))


#: the words a normal image's answers open with: their verdict comes first. No answer about an anomalous image opens
#: with one, so an answer's first word decides what it claims, and the tiny LLM learns that word from the expert's
#: phrase as it learns the one-word "No". When normal descriptions opened with "The image shows ..." and anomalous
#: ones with "The <object> has ..." or "There is ...", greedy decoding described every image as normal
#: (docs/model.md, 'Answers open with their verdict').
NORMAL_OPENERS = ("No", "Nothing", "None", "Nowhere", "Zero")


def opens_with_no_defect(answer: str) -> bool:
    """Whether ``answer`` opens with a :data:`NORMAL_OPENERS` word (punctuation after it ignored), as every answer
    about a normal image does and none about an anomalous one."""
    words = answer.split()
    return bool(words) and words[0].strip(".,:;!") in NORMAL_OPENERS


def normal_low_level(rng: random.Random, subject: Subject, sub: str) -> str:
    """Answer for a normal image: the verdict first (a :data:`NORMAL_OPENERS` word), then the normal object."""
    obj = subject.category.noun
    if sub == "where":
        return _pick(rng, ("Nowhere: the image shows no anomaly.", f"Nowhere: there is no defect on the {obj}.",
                           f"No part of the {obj} is damaged.")) + " " + _normal_sentence(rng, subject)
    if sub == "size":
        return _pick(rng, ("Nothing is affected: there is no defect.", f"None of the {obj} is affected.",
                           "No area is anomalous."))
    if sub == "explain":
        lead = _pick(rng, ("No.", "No, there is no defect.", "No, it looks normal."))
        return f"{lead} {_normal_sentence(rng, subject)}"
    if sub == "count":
        return _pick(rng, ("None: there are no defective regions.", "Zero: no defect is visible.",
                           f"No defects: I count none on the {obj}."))
    verdict = _pick(rng, (
        "No defect is visible.",
        f"No defect: the {obj} looks normal.",
        "No anomaly is visible.",
        f"Nothing is wrong with the {obj}.",
    ))
    return f"{verdict} {_normal_sentence(rng, subject)}"


def normal_complex(rng: random.Random, subject: Subject, sub: str) -> str:
    """Answer to a cause / impact / prevention question about a normal image: the verdict first, as above."""
    obj = subject.category.noun
    if sub == "cause":
        return _pick(rng, (f"No defect to explain: the {obj} looks normal.",
                           f"Nothing needs explaining; the {obj} shows no anomaly."))
    if sub == "impact":
        return _pick(rng, (f"None: the {obj} appears normal and fit for use.",
                           f"No impact: the {obj} shows no defect."))
    return _pick(rng, ("No action is needed; keep the current process and routine inspection.",
                       f"Nothing needs fixing: the {obj} is normal."))


def _name(subject: Subject) -> str:
    return subject.defect.name if subject.defect else "defect"


def anomaly_what(rng: random.Random, subject: Subject) -> str:
    name, obj = _name(subject), subject.category.noun
    what = _pick(rng, subject.defect.what) if subject.defect else "an area that looks abnormal"
    first = _pick(rng, (
        f"The {obj} has {_a(name)}: {what}.",
        f"There is {_a(name)} on the {obj}, {what}.",
        f"It is {_a(name)}, {what}.",
    ))
    if not subject.localised:
        return first
    region = subject.marked_facts.regions[0]
    shape = _shape_phrase(region)
    second = _pick(rng, (
        f"It looks like {_article(shape)} {shape}, {_appearance(rng, region, subject.category)}.",
        f"It appears as {_article(region.size)} {region.size} {_shape_phrase(region)}{_view_note(subject)}.",
    ))
    return f"{first} {second}"


def anomaly_where(rng: random.Random, subject: Subject) -> str:
    name = _name(subject)
    if not subject.localised:
        return f"The image shows {_a(name)}, but its exact location is not marked."
    facts = subject.marked_facts
    note = _view_note(subject)
    if facts.count == 1:
        loc = with_preposition(facts.regions[0].location)
        return _pick(rng, (
            f"The {name} is {loc} of the image{note}.",
            f"It is located {loc} of the image{note}.",
            f"You can find the {name} {loc}{note}.",
        ))
    return _pick(rng, (
        f"There are {count_word(facts.count)} defective regions{note}: {_where_list(facts)}.",
        f"The {name} appears in {count_word(facts.count)} places{note}: {_where_list(facts)}.",
    ))


def anomaly_size(rng: random.Random, subject: Subject) -> str:
    name, obj = _name(subject), subject.category.noun
    if not subject.localised:
        return f"The extent of the {name} is not marked in the image."
    facts = subject.marked_facts
    img = _percent(facts.image_fraction)
    extra = ""
    if not subject.category.texture and facts.image_fraction * 2 <= facts.object_fraction <= 0.5:
        extra = f" ({_percent(facts.object_fraction)} of the {obj})"
    size = facts.size
    return _pick(rng, (
        f"The {name} is {size}, covering {img} of the image{extra}.",
        f"It is {_article(size)} {size} defect that covers {img} of the image{extra}.",
        f"The affected area is {size}: {img} of the image{extra}.",
    ))


def anomaly_count(rng: random.Random, subject: Subject) -> str:
    name = _name(subject)
    if not subject.localised:
        return f"At least one {name} is present; the regions are not marked."
    n = subject.marked_facts.count
    if n == 1:
        return _pick(rng, ("There is one defective region.", f"I can see one region with {_a(name)}.",
                           f"One: a single defective region{_view_note(subject)}."))
    return _pick(rng, (f"There are {count_word(n)} defective regions.",
                       f"I can see {count_word(n)} separate defective regions.",
                       f"{_cap(count_word(n))} regions are affected{_view_note(subject)}."))


def anomaly_describe(rng: random.Random, subject: Subject) -> str:
    """The full low-level description (what + where + how big + how many) in 1-3 sentences."""
    name, obj = _name(subject), subject.category.noun
    if not subject.localised:
        return anomaly_what(rng, subject)
    facts = subject.marked_facts
    region = facts.regions[0]
    loc = with_preposition(region.location)
    shape = _shape_phrase(region)
    look = _appearance(rng, region, subject.category)
    if facts.count == 1:
        first = _pick(rng, (
            f"The {obj} has {_a(name)} {loc} of the image{_view_note(subject)}.",
            f"There is {_a(name)} on the {obj}, {loc} of the image{_view_note(subject)}.",
        ))
        second = _pick(rng, (
            f"It is {_article(region.size)} {region.size} {shape}, {look}, covering {_percent(facts.image_fraction)} "
            "of the image.",
            f"It looks like {_article(shape)} {shape}, {look}, and covers {_percent(facts.image_fraction)} of the "
            "image.",
        ))
        return f"{first} {second}"
    first = f"The {obj} shows {count_word(facts.count)} {name} regions{_view_note(subject)}: {_where_list(facts)}."
    second = _pick(rng, (
        f"The largest is {_article(region.size)} {region.size} {shape}, {look}.",
        f"Together they cover {_percent(facts.image_fraction)} of the image.",
    ))
    return f"{first} {second}"


def anomaly_explain(rng: random.Random, subject: Subject) -> str:
    """Detection with a short explanation: "Yes." + the description."""
    return f"{_pick(rng, ('Yes.', 'Yes, there is a defect.'))} {anomaly_describe(rng, subject)}"


def anomaly_low_level(rng: random.Random, subject: Subject, sub: str) -> str:
    return {
        "explain": anomaly_explain,
        "describe": anomaly_describe,
        "what": anomaly_what,
        "where": anomaly_where,
        "size": anomaly_size,
        "count": anomaly_count,
    }[sub](rng, subject)


def anomaly_complex(rng: random.Random, subject: Subject, sub: str) -> str:
    info = subject.defect
    name = _name(subject)
    if info is None:
        return "The cause and impact cannot be judged without knowing the defect."
    if sub == "cause":
        causes = list(info.causes)
        rng.shuffle(causes)
        if len(causes) > 1 and rng.random() < 0.5:
            return f"The {name} was most likely caused by {causes[0]}. Another possible cause is {causes[1]}."
        return _pick(rng, (f"The most likely cause is {causes[0]}.", f"{_cap(_a(name))} like this usually "
                           f"comes from {causes[0]}.", f"It was probably caused by {causes[0]}."))
    if sub == "impact":
        impact = _pick(rng, info.impact)
        if subject.localised and rng.random() < 0.4:
            return f"The {name} is {subject.marked_facts.size}; {impact}."
        return _pick(rng, (f"{_cap(impact)}.", f"This matters because {impact}."))
    prevention = list(info.prevention)
    rng.shuffle(prevention)
    if subject.domain == "medical":
        return _pick(rng, (f"Recommended next step: {prevention[0]}.", f"I would {prevention[0]}."))
    if len(prevention) > 1 and rng.random() < 0.5:
        return f"To prevent it, {prevention[0]}; also {prevention[1]}."
    return _pick(rng, (f"To prevent it, {prevention[0]}.", f"{_cap(prevention[0])} to avoid this defect."))


def low_level_answer(rng: random.Random, subject: Subject, sub: str) -> str:
    answer = anomaly_low_level(rng, subject, sub) if subject.anomalous else normal_low_level(rng, subject, sub)
    return medical_wording(answer, subject)


def complex_answer(rng: random.Random, subject: Subject, sub: str) -> str:
    answer = anomaly_complex(rng, subject, sub) if subject.anomalous else normal_complex(rng, subject, sub)
    return medical_wording(answer, subject)


def hint(subject: Subject) -> str:
    """The captioning hint of the Anomaly-Instruct recipe: "a [category] with [defect type]"."""
    noun = subject.category.noun
    return f"a {noun} with {_name(subject)}" if subject.anomalous else f"a normal {noun}"
