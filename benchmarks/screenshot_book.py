"""Screenshots of the built HTML book, taken with headless Chromium, to look at as a reader would.

    python benchmarks/screenshot_book.py _build/html --out /tmp/screens
    python benchmarks/screenshot_book.py _build/html --pages book/02_data book/10_explorer --full

For each chapter page (default: every notebook chapter of ``_toc.yml``) it writes
``<out>/<page>.png`` (the first screen, ``--window-size``) and, with ``--full``,
the whole page cut into ``<out>/<page>-partNN.png`` tiles that an image viewer
shows at a readable scale. Next to each it prints what ``bookcheck``
found in the HTML (figures, tables, errors, stderr outputs, long unfolded outputs)
and the browser checklist of ``bookbrowser`` (math rendered, figures loaded,
no horizontal overflow, title first, nothing fetched from outside), the same
checklist ``tests/test_book.py`` asserts on every chapter.

Chromium runs with the network off (no host name resolves, a dead proxy): the
book must render everything, MathJax included, from the site itself.
Chromium comes from Debian (``apt-get install -y chromium``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bookbrowser import checklist, find_chromium, probe_page, screenshot
from bookcheck import BookError, ChapterPage, chapter_pages, check_page


def trim_and_tile(png: Path, tile_height: int, footer: int = 160) -> list[Path]:
    """Cut the blank bottom off a tall screenshot and split it into tiles of ``tile_height`` pixels.

    The theme stretches the sidebar and pins the footer to the window's bottom,
    so the end of the chapter is found in the content column alone (the middle
    of the page, above the footer).
    """
    from PIL import Image, ImageChops

    image = Image.open(png).convert("RGB")
    w, h = image.size
    band = image.crop((int(0.22 * w), 0, int(0.78 * w), max(1, h - footer)))
    background = Image.new("RGB", band.size, band.getpixel((band.width // 2, band.height - 1)))
    box = ImageChops.difference(band, background).getbbox()
    bottom = min(h, box[3] + 60) if box else h
    image = image.crop((0, 0, w, bottom))
    tiles = []
    for k, top in enumerate(range(0, bottom, tile_height)):
        tile = png.with_name(f"{png.stem}-part{k + 1:02d}.png")
        image.crop((0, top, w, min(bottom, top + tile_height))).save(tile)
        tiles.append(tile)
    png.unlink()
    return tiles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html_dir", nargs="?", default="_build/html", help="a built book (default _build/html)")
    parser.add_argument("--toc", default="_toc.yml", help="table of contents that lists the chapters")
    parser.add_argument("--book-root", default=None, help="folder the toc's paths are relative to (default: the toc's)")
    parser.add_argument("--pages", nargs="*", help="docnames such as book/02_data (default: every notebook chapter)")
    parser.add_argument("--out", default="/tmp/screens", help="folder for the PNGs")
    parser.add_argument("--window-size", default="1280,2400", help="WIDTH,HEIGHT of the first-screen shot")
    parser.add_argument("--full", action="store_true", help="also shoot the whole page, cut into tiles")
    parser.add_argument("--full-height", type=int, default=16000, help="window height for the whole-page shot")
    parser.add_argument("--tile-height", type=int, default=2000)
    parser.add_argument("--wait-ms", type=int, default=8000, help="virtual time for the page's JavaScript")
    parser.add_argument("--chromium", default=None, help="path of the browser binary (default: $CHROMIUM, else PATH)")
    args = parser.parse_args(argv)

    html_dir, out = Path(args.html_dir), Path(args.out)
    if not (html_dir / "index.html").is_file():
        raise SystemExit(f"no built book at {html_dir} (no index.html); build it with `make book`")
    width, height = (int(v) for v in args.window_size.split(","))
    chromium = find_chromium(args.chromium)
    if chromium is None:
        raise SystemExit("Chromium not found: apt-get update && apt-get install -y chromium (or pass --chromium PATH)")
    try:
        pages = chapter_pages(args.toc, html_dir, args.book_root)
    except BookError as exc:
        raise SystemExit(str(exc))
    if args.pages:
        wanted = [p.removesuffix(".ipynb").removesuffix(".html") for p in args.pages]
        known = {p.docname: p for p in pages}
        pages = [known.get(name) or ChapterPage(name, None, html_dir / (name + ".html")) for name in wanted]

    failures = 0
    for page in pages:
        report = check_page(page)
        print(report.summary())
        for problem in report.problems:
            print("   PROBLEM", problem)
        for text in report.stderr:
            print("   stderr:", text[:240].replace("\n", " | "))
        if not report.exists:
            failures += 1
            continue
        stem = page.docname.replace("/", "__")
        try:
            seen = probe_page(chromium, page.html, width=width, wait_ms=args.wait_ms)
            print(f"   browser: {seen['math_rendered']}/{seen['math']} equations rendered, "
                  f"{seen['images'] - len(seen['broken_images'])}/{seen['images']} images loaded, "
                  f"overflow {seen['page_overflow']} px, opens with {seen['first_element']}")
            for problem in checklist(seen):
                print("   BROWSER PROBLEM", problem)
                failures += 1
            seconds = screenshot(chromium, page.html, out / f"{stem}.png", width=width, height=height,
                                 wait_ms=args.wait_ms)
            print(f"   -> {out / f'{stem}.png'} ({seconds:.1f} s)")
            if args.full:
                full = out / f"{stem}-full.png"
                screenshot(chromium, page.html, full, width=width, height=args.full_height,
                           wait_ms=args.wait_ms, timeout=300)
                for tile in trim_and_tile(full, args.tile_height):
                    print(f"   -> {tile}")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"   screenshot failed: {exc}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
