"""Screenshots of an audit's HTML report at desktop and phone widths, for the README.

    PYTHONPATH=. .venv/bin/python scripts/screenshots.py audit-out/report.html docs/screenshots/lenet

writes docs/screenshots/lenet-desktop.png (1280 x 1400) and lenet-phone.png (390 x 844), with the
headless Chromium driver of the tests.
"""

import base64
import sys
from pathlib import Path

from tests.browser import chromium_page

VIEWPORTS = {"desktop": (1280, 1400, False), "phone": (390, 844, True)}


def main() -> None:
    page_path, prefix = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    for name, (width, height, mobile) in VIEWPORTS.items():
        with chromium_page(width=width, height=height, mobile=mobile) as page:
            page.load(page_path.as_uri())
            shot = page.call("Page.captureScreenshot", format="png")
        target = prefix.with_name(f"{prefix.name}-{name}.png")
        target.write_bytes(base64.b64decode(shot["data"]))
        print(target)


if __name__ == "__main__":
    main()
