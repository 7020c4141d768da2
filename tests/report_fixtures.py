"""Crafted results files for the report tests (HTML, Markdown, browser)."""

from __future__ import annotations

from pathlib import Path

DIMS = ("success", "overediting", "naturalness", "artifacts")
XSS = "<script>alert(1)</script> | pipe & <img src=x onerror=alert(2)>"


def ok(rid, reward, source, edited, *, instruction="Edit it", category=None, regions=(), size=(600, 400),
       scores=(20, 15, 22, 18), reasoning=None, group=None, **extra):
    record = {
        "id": rid,
        "source": str(source),
        "edited": str(edited),
        "instruction": instruction,
        "meta": {"category": category} if category else {},
        "status": "ok",
        "error": None,
        "reward": reward,
        "overall": round(reward * 10, 6),
        "sc": round(reward * 9, 6),
        "pq": round(reward * 8, 6),
        "scores": dict(zip(DIMS, scores)),
        "regions": [{"id": i, "label": label, "bbox_2d": list(box)} for i, (label, box) in enumerate(regions)],
        "reasoning": reasoning or {"sc": "<|bbox_0|> The region changed. <|global|> Fine.", "pq": "<|global|> Looks natural."},
        "raw": {"sc": "{}", "pq": "{}"},
        "repaired": False,
        "edited_size": list(size) if size else None,
        "config_hash": "c" * 16,
        "judge_hash": "j" * 16,
    }
    if group:
        record.update(group=group[0], group_size=group[1], candidate=group[2], rank=group[3])
    record.update(extra)
    return record


def err(rid, stage, message, source=None, edited=None, *, instruction="Edit it", category=None, group=None):
    record = {
        "id": rid,
        "source": str(source) if source else None,
        "edited": str(edited) if edited else None,
        "instruction": instruction,
        "meta": {"category": category} if category else {},
        "status": "error",
        "error": {"stage": stage, "message": message, "origin": "edits.jsonl:7"},
        "reward": None, "overall": None, "sc": None, "pq": None, "scores": None,
        "regions": None, "reasoning": None, "raw": None, "repaired": False,
        "edited_size": None, "config_hash": "c" * 16,
    }
    if group:
        record.update(group=group[0], group_size=group[1], candidate=group[2], rank=None)
    return record


def crafted_records(photos: dict[str, Path], tmp: Path) -> list[dict]:
    """11 records: 5 singles (one portrait, one with a missing image, one with
    an XSS-ish instruction), a best-of-3 group, and one error per stage."""
    p = photos
    missing = tmp / "gone" / "missing_edit.png"
    return [
        ok("red", 0.72, p["coffee"], p["coffee_red_square"], instruction="Add a red square on the right",
           category="add", regions=[("red square", (633, 300, 867, 650))]),
        ok("mirror", 0.41, p["astronaut"], p["astronaut_mirror"], instruction="Mirror the photo", category="global",
           size=(300, 512), regions=[("whole image", (0, 0, 1000, 1000)), ("helmet", (200, 50, 800, 400))]),
        ok("xss", 0.55, p["coffee"], p["coffee_blur"], instruction=XSS, category="style",
           regions=[("</script><b>label</b>", (100, 100, 300, 300))],
           reasoning={"sc": "<|bbox_0|> </script><script>alert(3)</script> <|global|> ok", "pq": "fine | really"}),
        ok("gone", 0.30, p["coffee"], missing, instruction="Blur the cup", category="style",
           regions=[("cup", (300, 200, 700, 800))]),
        ok("noregion", 0.90, p["coffee"], p["coffee_gray"], instruction="Do nothing", category="global", regions=[]),
        ok("bw#0", 0.62, p["coffee"], p["coffee_gray"], instruction="Make it black and white", category="global",
           regions=[("everything", (0, 0, 1000, 1000))], group=("bw", 3, 0, 1)),
        ok("bw#1", 0.20, p["coffee"], p["coffee_blur"], instruction="Make it black and white", category="global",
           regions=[], group=("bw", 3, 1, 2)),
        err("bw#2", "parse", "'score' must be a list of two numbers", p["coffee"], p["coffee_red_square"],
            instruction="Make it black and white", category="global", group=("bw", 3, 2, None)),
        err("bad-input", "input", "edited image /x/y.png: file not found", p["coffee"], tmp / "y.png", category="add"),
        err("boom", "model", "CUDA out of memory", p["astronaut"], p["astronaut_mirror"], category="add"),
        err("garbled", "parse", "no JSON object in the answer", p["coffee"], p["coffee_red_square"]),
    ]


REGIONS_TOTAL = 1 + 2 + 1 + 1 + 0 + 1 + 0  # boxes over all ok records above
