"""Text-to-image spatial judging (protocol ``t2i-spatial``): the prompt, the
relation vocabulary, GenEval's position rule, the answer parser, the check of
the model's verdicts against its own boxes, and the reward.

The model is shown one generated image and ``templates/prompts/t2i_spatial.txt``
with the text-to-image prompt filled in. It answers one JSON object::

    {"objects": [{"label": "red ball", "bbox_2d": [x1, y1, x2, y2]}, ...],   # or "bbox_2d": null
     "relations": [{"subject": "red ball", "relation": "left of",
                    "object": "blue box", "holds": true}, ...],
     "reasoning": "...",
     "score": [spatial_correctness, object_presence]}                         # each 0..25

Boxes are Qwen3-VL's grounding format: ``bbox_2d`` = [x1, y1, x2, y2], top-left
and bottom-right corners on a 0..1000 grid of the image (0 = left/top, 1000 =
right/bottom), whatever the image's size.

Relation vocabulary (``canonical_relation``)
  Text is lower-cased, ``-``/``_`` read as spaces, punctuation dropped, one
  leading verb (is, are, be, being, placed, located, positioned, situated) and
  a trailing article dropped, then looked up in
  ``SYNONYMS``. Four canonical relations are decided by boxes
  (``RELATIONS_2D``), from the viewer's point of view:

  - ``left of``: left of, left, to the left of, on the left of, at the left of,
    on/to the left side of;
  - ``right of``: the same with right;
  - ``above``: above, over, on top of, atop. ``on top of`` is read as
    ``above`` (decided by boxes): whatever rests on top of a thing is drawn
    higher than it in the picture; contact is not checked;
  - ``below``: below, under, underneath, beneath.

  Relations that boxes cannot decide (depth, proximity, containment, support)
  have canonical names in ``MODEL_RELATIONS`` and are left to the model's
  verdict alone (``decided_by: "model"``): ``in front of`` (before), ``behind``
  (in back of), ``next to`` (beside, alongside), ``near`` (close to, nearby),
  ``inside`` (in, within, into), ``on`` (on, upon, resting/sitting/standing/
  lying on; plain ``on`` may mean on a wall as well as on a table, so it is
  not ``above``).
  Any other wording keeps its normalised text as its canonical name and is
  also the model's alone.

GenEval's position rule (``relative_position``)
  From GenEval (github.com/djghosh13/geneval, read at commit 16f16811),
  ``evaluation/evaluate_images.py``,
  function ``relative_position(obj_a, obj_b)`` with ``POSITION_THRESHOLD =
  float(args.options.get('position_threshold', 0.1))`` (option
  ``position_threshold``, default 0.1). Boxes are [x1, y1, x2, y2] in image
  pixels (y grows downwards). Per box: centre = mean of the two corners,
  dimensions = |x2 - x1|, |y2 - y1|. ``offset = centre_a - centre_b``; per axis
  ``revised = max(|offset| - THRESHOLD * (dim_a + dim_b), 0) * sign(offset)``
  (the offset shrunk by a tenth of the two objects' summed extent on that
  axis). If every ``|revised| < 1e-3`` the set is empty (no relation).
  Otherwise ``(dx, dy) = revised / ||offset||`` (divided by the length of the
  *unrevised* offset) and A is ``left of`` B if dx < -0.5, ``right of`` if
  dx > 0.5, ``above`` if dy < -0.5, ``below`` if dy > 0.5: strict
  comparisons; a diagonal offset may give two relations, or none (both
  components at most half the length). GenEval requires the expected relation
  to be in that set for every detected A against every detected B.

  The rule is not invariant under unequal scaling of the two axes (the length
  of the offset mixes them), and 0..1000 boxes scale x by 1000/width and y by
  1000/height. ``verify(..., image_size=(w, h))`` therefore takes boxes back to
  the image's pixel scale first, which reproduces GenEval on that image
  exactly; without ``image_size`` the rule is applied on the 0..1000 grid
  (the same for square images).

The parser (``parse_t2i``): lenient but honest, as ``parse.parse_sc``
  Where the answer is taken from is ``parse.py``'s rule (thinking blocks, code
  fences, the last JSON object carrying ``score``, scores read by pattern when
  no complete JSON object holds them; then objects and relations are dropped,
  noted). Scores as in ``parse.py``: a list of two numbers (numeric strings
  noted) in 0..25; anything else raises ``ParseError``, never a midpoint.
  Inside the answer:

  - ``objects`` / ``relations`` missing or not a list: none, noted.
  - an object: ``label`` not a string: ``""``, noted; ``bbox_2d`` null: the
    object is absent (no note, that is the contract); ``bbox_2d`` missing or
    not four numbers: no box, noted; numeric strings converted, noted.
  - pixels: when ``image_size=(w, h)`` is given, some coordinate of the
    answer's boxes is above 1000 + ``CLIP_TOLERANCE`` (a box no 0..1000 reading
    could keep) and every x fits 0..w and every y 0..h, all the answer's boxes
    are read as pixels of that image and scaled to 0..1000 (x * 1000 / w,
    y * 1000 / h, one decimal), noted. (Pass the size of the image whose pixels
    the model counted.) The decision is per answer, not per box: a model
    writing pixels writes them for every box. Coordinates only slightly above
    1000 (up to 1050) are clipped as usual, never taken for pixels.
  - then, as ``parse.py`` does for regions: coordinates at most
    ``CLIP_TOLERANCE`` outside 0..1000 are clipped, further out the box is
    dropped (the object kept, without a box); inverted corners swapped; all
    noted.
  - a relation: not an object, or ``subject``/``relation``/``object`` not a
    string: dropped, noted. ``holds`` missing or not a JSON boolean (``"true"``,
    ``1``, null) is ``None`` ("unknown"), noted: never read as true.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

from .constants import BBOX_RANGE, SCORE_RANGE
from .errors import ConfigError
from .numbers import is_number
from .parse import CLIP_TOLERANCE, _extract, _reasoning, _scores, box_numbers
from .resources import read_template

T2I_VERSION = 1
T2I_PROTOCOL = "t2i-spatial"
T2I_TEMPLATE = "prompts/t2i_spatial.txt"
PROMPT_SLOT = "{prompt}"
PROMPT_MARKER = "Text-to-image prompt: "  # what precedes the slot in the template

POSITION_THRESHOLD = 0.1  # GenEval's default ``position_threshold``
_GENEVAL_EPS = 1e-3  # GenEval: every |revised offset| below this -> no relation

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------- prompt

@lru_cache(maxsize=None)
def t2i_template() -> str:
    text = read_template(T2I_TEMPLATE)
    if text.count(PROMPT_SLOT) != 1:
        raise RuntimeError(f"templates/{T2I_TEMPLATE} must hold exactly one {PROMPT_SLOT} slot")
    if PROMPT_MARKER + PROMPT_SLOT not in text:
        raise RuntimeError(f"templates/{T2I_TEMPLATE}: {PROMPT_MARKER!r} must precede the slot")
    return text


def render_t2i(prompt: str) -> str:
    """The t2i-spatial prompt with the text-to-image ``prompt`` filled in
    verbatim (only the slot is replaced: braces in the prompt stay as they are)."""
    head, tail = t2i_template().split(PROMPT_SLOT)
    return head + prompt + tail


def prompt_of(rendered: str) -> str:
    """The text-to-image prompt inside a rendered t2i-spatial prompt (the
    inverse of ``render_t2i``, for scripted backends)."""
    head, tail = t2i_template().split(PROMPT_SLOT)
    if rendered.startswith(head) and rendered.endswith(tail):
        return rendered[len(head):len(rendered) - len(tail)]
    return rendered.rsplit(PROMPT_MARKER, 1)[-1].removesuffix("\n")


def t2i_fingerprint() -> str:
    """sha256 over what the protocol asks (template and version): for the judge hash."""
    digest = hashlib.sha256(t2i_template().encode("utf-8"))
    digest.update(f"\0{T2I_PROTOCOL}\0{T2I_VERSION}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------ relation words

RELATIONS_2D = ("left of", "right of", "above", "below")
MODEL_RELATIONS = ("in front of", "behind", "next to", "near", "inside", "on")

SYNONYMS: dict[str, str] = {}
for _side in ("left", "right"):
    for _phrase in ("{s}", "{s} of", "to the {s}", "to the {s} of", "on the {s}", "on the {s} of",
                    "at the {s} of", "on the {s} side of", "to the {s} side of", "on the {s} hand side of",
                    "to the {s} hand side of", "{s} side of"):
        SYNONYMS[_phrase.format(s=_side)] = f"{_side} of"
SYNONYMS.update({
    "above": "above", "over": "above", "on top of": "above", "atop": "above",
    "below": "below", "under": "below", "underneath": "below", "beneath": "below",
    "in front of": "in front of", "before": "in front of",
    "behind": "behind", "in back of": "behind", "at the back of": "behind",
    "next to": "next to", "beside": "next to", "alongside": "next to",
    "by the side of": "next to",
    "near": "near", "close to": "near", "nearby": "near", "near to": "near",
    "inside": "inside", "in": "inside", "within": "inside", "into": "inside", "inside of": "inside",
    "on": "on", "upon": "on", "resting on": "on", "sitting on": "on", "standing on": "on", "lying on": "on",
})
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
           "in front of": "behind", "behind": "in front of"}

_PUNCT = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")


def _normal(text: str) -> str:
    text = _SPACES.sub(" ", _PUNCT.sub(" ", text.lower().replace("-", " ").replace("_", " "))).strip()
    text = re.sub(r"^(?:is|are|be|being|placed|located|positioned|situated) ", "", text)
    return re.sub(r" (?:the|a|an)$", "", text)


def canonical_relation(text: str) -> str:
    """The canonical name of a relation's wording (see the module docstring);
    an unknown wording keeps its normalised text."""
    normal = _normal(text)
    return SYNONYMS.get(normal, normal)


def is_2d(relation: str) -> bool:
    """Whether boxes decide ``relation`` (any wording)."""
    return canonical_relation(relation) in RELATIONS_2D


# ------------------------------------------------------------------ geometry

def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      threshold: float = POSITION_THRESHOLD) -> set[str]:
    """GenEval's position of A relative to B (``evaluation/evaluate_images.py``,
    ``relative_position``; see the module docstring), on [x1, y1, x2, y2] boxes
    in any one coordinate scale with y growing downwards: a subset of
    {"left of", "right of", "above", "below"}."""
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    offset = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2, (ay1 + ay2) / 2 - (by1 + by2) / 2)
    dims = (abs(ax2 - ax1) + abs(bx2 - bx1), abs(ay2 - ay1) + abs(by2 - by1))
    revised = [max(abs(o) - threshold * d, 0.0) * math.copysign(1.0, o) if o else 0.0
               for o, d in zip(offset, dims)]
    if all(abs(r) < _GENEVAL_EPS for r in revised):
        return set()
    length = math.hypot(*offset)
    dx, dy = revised[0] / length, revised[1] / length
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def geometry_holds(relation: str, box_a: Sequence[float] | None, box_b: Sequence[float] | None,
                   threshold: float = POSITION_THRESHOLD) -> bool | None:
    """Whether ``relation`` (any wording) holds of A and B by GenEval's rule;
    ``None`` when boxes cannot decide it (not a 2D relation, or a box missing)."""
    canonical = canonical_relation(relation)
    if canonical not in RELATIONS_2D or box_a is None or box_b is None:
        return None
    return canonical in relative_position(box_a, box_b, threshold)


# -------------------------------------------------------------------- labels

_ARTICLE = re.compile(r"^(?:a|an|the|one|some) ")


def _singular_forms(word: str) -> set[str]:
    forms = {word}
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        forms.add(word[:-1])
    return forms


def _label_forms(label: str) -> set[str]:
    text = _ARTICLE.sub("", _SPACES.sub(" ", _PUNCT.sub(" ", label.lower())).strip())
    head, _, last = text.rpartition(" ")
    return {(head + " " + form).strip() for form in _singular_forms(last)} if text else set()


def same_label(a: str, b: str) -> bool:
    """Labels name the same thing: case, spacing, punctuation, a leading article
    and the plural of the last word (``-s``, ``-es``, ``-ies``) aside."""
    return bool(_label_forms(a) & _label_forms(b))


# -------------------------------------------------------------------- parser

class T2IObject(NamedTuple):
    label: str
    bbox_2d: Box | None  # None: absent, or no readable box (noted)


class T2IRelation(NamedTuple):
    subject: str
    relation: str
    object: str
    holds: bool | None  # None: unknown (missing or not a boolean; noted)


@dataclass(frozen=True)
class T2IAnswer:
    objects: tuple[T2IObject, ...]
    relations: tuple[T2IRelation, ...]
    reasoning: str
    spatial: float  # spatial correctness, 0..25
    presence: float  # object presence, 0..25
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "objects": [{"label": o.label, "bbox_2d": None if o.bbox_2d is None else list(o.bbox_2d)}
                        for o in self.objects],
            "relations": [{"subject": r.subject, "relation": r.relation, "object": r.object, "holds": r.holds}
                          for r in self.relations],
            "reasoning": self.reasoning,
            "spatial": self.spatial,
            "presence": self.presence,
            "notes": list(self.notes),
        }

    def boxes(self, label: str) -> list[Box]:
        """The boxes of every object whose label is ``label`` (``same_label``)."""
        return [o.bbox_2d for o in self.objects if o.bbox_2d is not None and same_label(o.label, label)]


def _raw_box(item: dict, name: str, notes: list[str]) -> list[float] | None:
    if "bbox_2d" not in item:
        notes.append(f"{name}.bbox_2d missing: no box")
        return None
    box = item["bbox_2d"]
    if box is None:
        return None
    values = box_numbers(box, name, notes)
    if values is None:
        notes.append(f"{name}.bbox_2d is not four numbers: no box")
    return values


def _pixels_scale(raw: list[list[float] | None], image_size, notes: list[str]) -> list[list[float] | None]:
    boxes = [b for b in raw if b is not None]
    if image_size is None or not boxes or not any(v > BBOX_RANGE + CLIP_TOLERANCE for b in boxes for v in b):
        return raw
    width, height = image_size
    fits = all(0 <= b[0] <= width and 0 <= b[2] <= width and 0 <= b[1] <= height and 0 <= b[3] <= height
               for b in boxes)
    if not fits:
        return raw
    notes.append(f"bbox_2d read as pixels of a {width}x{height} image: scaled to 0..{BBOX_RANGE}")

    def scale(b):
        x1, y1, x2, y2 = (round(v * BBOX_RANGE / s, 1) for v, s in zip(b, (width, height, width, height)))
        return [int(v) if v == int(v) else v for v in (x1, y1, x2, y2)]

    return [None if b is None else scale(b) for b in raw]


def _fit_box(values: list[float], name: str, notes: list[str]) -> Box | None:
    if not all(-CLIP_TOLERANCE <= v <= BBOX_RANGE + CLIP_TOLERANCE for v in values):
        notes.append(f"{name}.bbox_2d {json.dumps(values)[:60]} is far outside 0..{BBOX_RANGE}: no box")
        return None
    if not all(0 <= v <= BBOX_RANGE for v in values):
        values = [min(max(v, 0), BBOX_RANGE) for v in values]
        notes.append(f"{name}.bbox_2d clipped to 0..{BBOX_RANGE}")
    x1, y1, x2, y2 = values
    if x1 > x2 or y1 > y2:
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        notes.append(f"{name}.bbox_2d corners reordered")
    return (x1, y1, x2, y2)


def _list_field(obj: dict, key: str, notes: list[str]) -> list:
    """The answer's list under ``key``; a missing one or not a list: none, with a note."""
    if key not in obj:
        notes.append(f"{key} missing: none")
        return []
    if not isinstance(obj[key], list):
        notes.append(f"{key} is not a list: none")
        return []
    return obj[key]


def _objects(obj: dict, notes: list[str], image_size) -> tuple[T2IObject, ...]:
    items = _list_field(obj, "objects", notes)
    labels, raw = [], []
    for index, item in enumerate(items):
        name = f"objects[{index}]"
        if not isinstance(item, dict):
            notes.append(f"{name} dropped: not an object")
            continue
        label = item.get("label")
        if not isinstance(label, str):
            notes.append(f"{name}.label {'missing' if label is None else 'is not a string'}: empty")
            label = ""
        labels.append((name, label))
        raw.append(_raw_box(item, name, notes))
    raw = _pixels_scale(raw, image_size, notes)
    return tuple(T2IObject(label, None if box is None else _fit_box(box, name, notes))
                 for (name, label), box in zip(labels, raw))


def _relations(obj: dict, notes: list[str]) -> tuple[T2IRelation, ...]:
    items = _list_field(obj, "relations", notes)
    found = []
    for index, item in enumerate(items):
        name = f"relations[{index}]"
        if not isinstance(item, dict):
            notes.append(f"{name} dropped: not an object")
            continue
        bad = [key for key in ("subject", "relation", "object") if not isinstance(item.get(key), str)]
        if bad:
            notes.append(f"{name} dropped: {', '.join(bad)} missing or not a string")
            continue
        holds = item.get("holds")
        if not isinstance(holds, bool):
            notes.append(f"{name}.holds {'missing' if 'holds' not in item else 'is not a boolean'}: unknown")
            holds = None
        found.append(T2IRelation(item["subject"], item["relation"], item["object"], holds))
    return tuple(found)


def parse_t2i(text: str, image_size: tuple[int, int] | None = None) -> T2IAnswer:
    """Parse a t2i-spatial answer (see the module docstring for what is
    tolerated). ``image_size`` = (width, height) of the image the model saw:
    lets boxes written in its pixels be read. Raises ``ParseError``."""
    obj, notes, by_pattern = _extract(text)
    if by_pattern:  # parse.py counts dropped SC regions; here they are object boxes
        notes = [n for n in notes if not n.startswith("edit_region")]
        notes.append("objects and relations dropped (no complete JSON)")
    spatial, presence = _scores(obj, notes)
    objects = () if by_pattern else _objects(obj, notes, image_size)
    relations = () if by_pattern else _relations(obj, notes)
    reasoning = _reasoning(obj, notes)
    return T2IAnswer(objects=objects, relations=relations, reasoning=reasoning, spatial=spatial,
                     presence=presence, notes=tuple(notes))


# -------------------------------------------------------------------- verify

def _to_pixels(box: Box, image_size) -> Box:
    if image_size is None:
        return box
    width, height = image_size
    return (box[0] * width / BBOX_RANGE, box[1] * height / BBOX_RANGE,
            box[2] * width / BBOX_RANGE, box[3] * height / BBOX_RANGE)


def _geometry(answer: T2IAnswer, canonical: str, subject: str, obj: str, image_size,
              threshold: float) -> bool | None:
    """GenEval's check: the relation holds for every box of the subject against
    every box of the object; None when not 2D or either has no box."""
    if canonical not in RELATIONS_2D:
        return None
    subjects, objects = answer.boxes(subject), answer.boxes(obj)
    if not subjects or not objects:
        return None
    return all(canonical in relative_position(_to_pixels(a, image_size), _to_pixels(b, image_size), threshold)
               for a in subjects for b in objects)


def _model_verdict(answer: T2IAnswer, subject: str, canonical: str, obj: str) -> bool | None:
    """The model's ``holds`` for this relation, stated directly or as its
    inverse (B right of A for A left of B); the first one that is a boolean."""
    for rel in answer.relations:
        if rel.holds is None:
            continue
        stated = canonical_relation(rel.relation)
        if stated == canonical and same_label(rel.subject, subject) and same_label(rel.object, obj):
            return rel.holds
        if INVERSE.get(stated) == canonical and same_label(rel.subject, obj) and same_label(rel.object, subject):
            return rel.holds
    return None


def verify(answer: T2IAnswer, relations: Sequence[Sequence[str]] | None = None, *,
           image_size: tuple[int, int] | None = None, threshold: float = POSITION_THRESHOLD) -> list[dict]:
    """Each relation's verdicts: the model's and, where boxes decide it, the
    geometry of the model's own boxes (GenEval's rule).

    ``relations``: the manifest's ``[[subject, relation, object], ...]``; each
    is matched to the model's objects and stated relations by label
    (``same_label``: case and plural tolerant; an inverse statement counts:
    "B right of A" answers "A left of B"). ``None``: the model's own relations.
    ``image_size``: apply the rule in that image's pixels (GenEval's scale);
    without it, on the 0..1000 grid.

    One dict per relation: ``subject``, ``relation``, ``object`` (as worded),
    ``canonical``, ``model`` (bool or None), ``geometry`` (bool or None: not a
    2D relation, or a box missing), ``agree`` (None unless both are known),
    ``decided_by``: "geometry" when boxes decide, else "model" when the model
    gave a verdict, else "none"."""
    if relations is None:
        wanted = [(r.subject, r.relation, r.object, r.holds) for r in answer.relations]
    else:
        wanted = []
        for item in relations:
            if (not isinstance(item, (list, tuple)) or len(item) != 3
                    or not all(isinstance(part, str) for part in item)):
                raise ValueError(f"a relation is [subject, relation, object], got {item!r}")
            subject, relation, obj = item
            wanted.append((subject, relation, obj, _model_verdict(answer, subject, canonical_relation(relation), obj)))
    verdicts = []
    for subject, relation, obj, model in wanted:
        canonical = canonical_relation(relation)
        geometry = _geometry(answer, canonical, subject, obj, image_size, threshold)
        verdicts.append({
            "subject": subject, "relation": relation, "object": obj, "canonical": canonical,
            "model": model, "geometry": geometry,
            "agree": None if model is None or geometry is None else model == geometry,
            "decided_by": "geometry" if geometry is not None else "model" if model is not None else "none",
        })
    return verdicts


# -------------------------------------------------------------------- reward

@dataclass(frozen=True)
class T2IWeights:
    """The reward formula's settings (see ``t2i_reward``).

    ``model`` / ``geometry``: the weights of the model's scores and of the
    geometric check (non-negative, not both 0; only their ratio matters).
    ``spatial_exponent`` a in 0..1: the model part is (spatial/25)^a *
    (presence/25)^(1-a), a weighted geometric mean, so a missing object (low
    presence) cannot be outweighed by a high spatial score. ``missing_box_fails``:
    count a 2D relation whose subject or object has no box as decided and not
    holding (default: not decidable, left to the model's scores, which already
    judge presence).
    """

    model: float = 0.5
    geometry: float = 0.5
    spatial_exponent: float = 0.75
    missing_box_fails: bool = False

    def __post_init__(self):
        for name in ("model", "geometry", "spatial_exponent"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise ConfigError(f"t2i weight {name}={value!r}: must be a number >= 0")
        if self.model + self.geometry <= 0:
            raise ConfigError("t2i weights: model and geometry cannot both be 0")
        if self.spatial_exponent > 1:
            raise ConfigError(f"t2i spatial_exponent={self.spatial_exponent!r}: must be in 0..1")


def t2i_reward_parts(answer: T2IAnswer, verdicts: Sequence[dict], weights: T2IWeights = T2IWeights()) -> dict:
    """The reward and its parts: ``model_part`` M, ``decidable`` (how many
    relations the boxes decide), ``holding`` (how many of those hold),
    ``verified_fraction`` V (holding / decidable, None when nothing is
    decidable) and ``reward``.

    M = (spatial/25)^a * (presence/25)^(1-a)
    reward = (w_model * M + w_geometry * V) / (w_model + w_geometry)   if decidable > 0
           = M                                                          otherwise
    Both M and V lie in 0..1, so the reward does. A 2D relation counts as
    decidable when the geometry gave a verdict (and, with
    ``missing_box_fails``, when a box is missing: then it does not hold).
    Raises ``ValueError`` when the answer's scores are not numbers in 0..25:
    an answer without scores is an error, never a midpoint."""
    for name in ("spatial", "presence"):
        value = getattr(answer, name, None)
        if not is_number(value) or not 0 <= value <= SCORE_RANGE:
            raise ValueError(f"t2i answer has no valid {name} score ({value!r}): no reward")
    a = weights.spatial_exponent
    model_part = (answer.spatial / SCORE_RANGE) ** a * (answer.presence / SCORE_RANGE) ** (1 - a)
    decidable = holding = 0
    for verdict in verdicts:
        geometry = verdict.get("geometry")
        if geometry is None and weights.missing_box_fails and verdict.get("canonical") in RELATIONS_2D:
            geometry = False
        if geometry is None:
            continue
        decidable += 1
        holding += bool(geometry)
    verified = holding / decidable if decidable else None
    if verified is None:
        reward = model_part
    else:
        reward = (weights.model * model_part + weights.geometry * verified) / (weights.model + weights.geometry)
    return {"model_part": model_part, "decidable": decidable, "holding": holding,
            "verified_fraction": verified, "reward": min(max(reward, 0.0), 1.0)}


def t2i_reward(answer: T2IAnswer, verdicts: Sequence[dict], weights: T2IWeights = T2IWeights()) -> float:
    """The reward in 0..1 (``t2i_reward_parts``' ``reward``)."""
    return t2i_reward_parts(answer, verdicts, weights)["reward"]
