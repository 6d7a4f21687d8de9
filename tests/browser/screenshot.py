"""Take the README's screenshot of the page: start `safespot serve` (API + embedded worker),
filter a real photo in headless Chromium, save a full-page PNG.

    # with the shipped default model (models/zoo/default.safetensors):
    nice -n 19 .venv/bin/python tests/browser/screenshot.py --out docs/img/page.png

    # with another model, preset or budget:
    .venv/bin/python tests/browser/screenshot.py --model tests/fixtures/tiny.safetensors --eps 16/255

Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)
and selenium (pip install -e '.[dev]').  No Redis needed.  Exits non-zero, with the page's
error or the service's log, when the page does not end with a result.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.browser.harness` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.browser.harness import (
    FIXTURES,
    REPO,
    chromium,
    filter_on_page,
    full_page_screenshot,
    running_service,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "page.png")
    parser.add_argument("--photo", type=Path, default=FIXTURES / "photos" / "chelsea.jpg")
    parser.add_argument("--model", default=None,
                        help="shipped name or .safetensors path (default: $SAFESPOT_DEFAULT_MODEL, "
                             "else the shipped default model)")
    parser.add_argument("--preset", default="standard", choices=["fast", "standard", "paper"])
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--eps", default=None, help="default: the page's, the budget the model was trained for")
    parser.add_argument("--width", type=int, default=1280, help="browser width in CSS pixels")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    args = parser.parse_args(argv)

    import os

    model = args.model or os.environ.get("SAFESPOT_DEFAULT_MODEL")
    with tempfile.TemporaryDirectory(prefix="safespot-shot-") as tmp, \
            running_service(Path(tmp), model=model) as stack, \
            chromium(width=args.width) as driver:
        driver.get(stack.url)
        outcome = filter_on_page(driver, args.photo, preset=args.preset, norm=args.norm,
                                 eps=args.eps, timeout_s=args.timeout)
        if outcome != "done":
            error = driver.find_element("id", "error").text
            print(f"the page ended with an error:\n{error}\n{stack.log_tail()}", file=sys.stderr)
            return 1
        png = full_page_screenshot(driver, args.out, args.width)
    print(f"wrote {args.out} ({len(png)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
