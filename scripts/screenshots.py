"""Screenshots of an audit's HTML report at desktop and phone widths, for the README.

    PYTHONPATH=. .venv/bin/python scripts/screenshots.py audit-out/report.html docs/screenshots/lenet

writes docs/screenshots/lenet-desktop.png (the top 1400 px at 1280 px wide) and lenet-phone.png (the top
two screens of a 390 x 844 phone: the verdicts and the first figure), with the headless Chromium driver of
the tests. Their colours are reduced to a 256-colour palette, which keeps each file a few hundred KB.
"""

import base64
import io
import sys
from pathlib import Path

from PIL import Image

from tests.browser import chromium_page

# name: (width, height shown, mobile emulation)
VIEWPORTS = {"desktop": (1280, 1400, False), "phone": (390, 2 * 844, True)}


def main() -> None:
    page_path, prefix = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    for name, (width, height, mobile) in VIEWPORTS.items():
        with chromium_page(width=width, height=height, mobile=mobile) as page:
            page.load(page_path.as_uri())
            shot = page.call("Page.captureScreenshot", format="png")
        target = prefix.with_name(f"{prefix.name}-{name}.png")
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
        image.quantize(256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)
        print(target, f"{target.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
