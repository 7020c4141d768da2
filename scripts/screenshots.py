#!/usr/bin/env python
"""Regenerate docs/report.png and docs/overlay.png, the README's pictures of
`spatialreward report` and `spatialreward check --overlay`.

End to end, offline, on a CPU, in a minute or two:

1. real photos from scikit-image, with edits made by code (a red square, a
   blur, black and white, a mirror, warmer colours), and a manifest of them
   (singles, a best-of-3 group, categories, one missing file);
2. a tiny random-weight Qwen3-VL (``spatialreward.testing.random_model``: the
   real architecture class and processor, random weights);
3. ``spatialreward judge manifest.jsonl -o scores.jsonl --model DIR
   --structured always --max-new-tokens 200 --device cpu`` (the installed
   command);
4. ``spatialreward report scores.jsonl -o report.html``;
5. a screenshot of the report in headless Chromium (Debian's chromium +
   chromedriver, via Selenium), saved as docs/report.png;
6. ``spatialreward check SOURCE EDITED INSTRUCTION --overlay docs/overlay.png``.

The model has random weights, so its scores, boxes and texts are random (the
grammar keeps them well-formed): the picture shows the page, not a judgment.

    python scripts/screenshots.py                         # -> docs/report.png
    python scripts/screenshots.py --out /tmp/report.png --workdir /tmp/shots --keep
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_photos(folder: Path) -> None:
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)

    def photo(name):
        return Image.fromarray(getattr(data, name)()).convert("RGB")

    coffee = photo("coffee")  # 600x400
    astronaut = photo("astronaut").crop((100, 0, 400, 512))  # a portrait
    chelsea = photo("chelsea")  # 451x300
    rocket = photo("rocket")  # 640x427
    coffee.save(folder / "coffee.jpg", quality=92)
    astronaut.save(folder / "astronaut.png")
    chelsea.save(folder / "chelsea.jpg", quality=92)
    rocket.save(folder / "rocket.jpg", quality=92)
    red = coffee.copy()
    ImageDraw.Draw(red).rectangle([380, 120, 520, 260], fill=(220, 20, 20))
    red.save(folder / "coffee_red_square.jpg", quality=92)
    coffee.filter(ImageFilter.GaussianBlur(6)).save(folder / "coffee_blur.jpg", quality=92)
    ImageOps.grayscale(coffee).convert("RGB").save(folder / "coffee_gray.jpg", quality=92)
    ImageEnhance.Color(coffee).enhance(0.2).save(folder / "coffee_faded.jpg", quality=92)
    ImageOps.mirror(astronaut).save(folder / "astronaut_mirror.png")
    warm = Image.merge("RGB", [band.point(lambda v, k=k: min(255, int(v * k))) for band, k in
                               zip(chelsea.split(), (1.15, 1.0, 0.8))])
    warm.save(folder / "chelsea_warm.jpg", quality=92)
    sky = rocket.copy()
    ImageDraw.Draw(sky).ellipse([470, 40, 560, 130], fill=(250, 240, 200))
    sky.save(folder / "rocket_moon.jpg", quality=92)


MANIFEST = [
    {"id": "coffee-red", "source": "coffee.jpg", "edited": "coffee_red_square.jpg",
     "instruction": "Add a red square on the right side of the saucer", "category": "add"},
    {"id": "astronaut-mirror", "source": "astronaut.png", "edited": "astronaut_mirror.png",
     "instruction": "Mirror the portrait horizontally", "category": "global"},
    {"id": "cat-warm", "source": "chelsea.jpg", "edited": "chelsea_warm.jpg",
     "instruction": "Make the light warmer, like a late afternoon", "category": "style"},
    {"id": "rocket-moon", "source": "rocket.jpg", "edited": "rocket_moon.jpg",
     "instruction": "Add a full moon in the upper right sky", "category": "add"},
    {"id": "coffee-bw", "source": "coffee.jpg",
     "edited": ["coffee_gray.jpg", "coffee_faded.jpg", "coffee_blur.jpg"],
     "instruction": "Make the photo black and white", "category": "style"},
    {"id": "coffee-blur", "source": "coffee.jpg", "edited": "coffee_blur.jpg",
     "instruction": "Blur the background but keep the cup sharp", "category": "style"},
    {"id": "cat-hat", "source": "chelsea.jpg", "edited": "chelsea_hat.jpg",
     "instruction": "Put a small party hat on the cat", "category": "add"},
]


def command(*args: str) -> list[str]:
    exe = shutil.which("spatialreward", path=str(Path(sys.executable).parent)) or shutil.which("spatialreward")
    if not exe:
        raise SystemExit("the spatialreward command is not installed (pip install .)")
    return [exe, *args]


def run(*args: str, cwd: Path | None = None) -> None:
    print("$ spatialreward " + " ".join(args), flush=True)
    subprocess.run(command(*args), check=True, cwd=cwd)


def screenshot(html: Path, out: Path, width: int, height: int) -> None:
    from spatialreward.testing.browser import HeadlessChromium, wait_until_ready

    with HeadlessChromium(width=width, height=height, log_console=False) as driver:
        driver.get(html.as_uri())
        wait_until_ready(driver)
        driver.execute_script("return document.fonts ? document.fonts.ready : null")
        # show the picture at a device pixel ratio of 1, the whole requested height
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        driver.execute_script("return new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--overlay-out", type=Path, default=REPO / "docs" / "overlay.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2500)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (scores, report.html)")
    args = parser.parse_args()

    from spatialreward.testing.random_model import build

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sr-screenshots-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        make_photos(work / "photos")
        manifest = work / "photos" / "manifest.jsonl"
        manifest.write_text("".join(json.dumps(line) + "\n" for line in MANIFEST), encoding="utf-8")
        print("building a tiny random-weight Qwen3-VL ...", flush=True)
        model = build(work / "model")
        scores = work / "scores.jsonl"
        run("judge", str(manifest), "-o", str(scores), "--overwrite", "--model", str(model),
            "--structured", "always", "--max-new-tokens", "200", "--device", "cpu", "-q")
        report = work / "report.html"
        run("report", scores.name, "-o", report.name, "--markdown", "summary.md",
            "--title", "SpatialReward report: nightly edit eval", cwd=work)
        screenshot(report, args.out, args.width, args.height)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
        photos = work / "photos"
        check = command("check", str(photos / "coffee.jpg"), str(photos / "coffee_red_square.jpg"),
                        "Add a red square on the right side of the saucer", "--overlay", str(args.overlay_out),
                        "--model", str(model), "--structured", "always", "--max-new-tokens", "200", "--device", "cpu")
        print("$ spatialreward " + " ".join(check[1:]), flush=True)
        if subprocess.run(check).returncode not in (0, 1):  # 0 pass, 1 fail: both give a picture
            raise SystemExit("spatialreward check failed")
        print(f"wrote {args.overlay_out}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
