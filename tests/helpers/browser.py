"""Driving the web page in Debian's chromium (headless, through its chromedriver and Selenium): the
same set-up as tests/web/test_browser.py, shared by the browser tests and scripts/bench/viewer.py.

* :func:`have_chromium` / :data:`SKIP_REASON`: whether the system browser and driver are installed;
* :func:`chrome` — a headless driver (the caller quits it);
* :func:`wait` — an element visible (or holding a text);
* :func:`not_blank` — the fraction of a screenshot's pixels that are not one flat colour;
* :func:`sign_in` — a fresh session for a token, at a given page of the UI.
"""

from __future__ import annotations

import io
import shutil
from typing import Any

import numpy as np

__all__ = [
    "SKIP_REASON",
    "beside",
    "canvas_pixels",
    "canvas_xy",
    "chrome",
    "click_picture",
    "have_chromium",
    "not_blank",
    "pane_label",
    "render_count",
    "sign_in",
    "wait",
    "wait_render",
]

SKIP_REASON = "chromium / chromedriver not installed (apt-get install -y chromium chromium-driver; .ci/run does)"


def have_chromium() -> bool:
    return shutil.which("chromium") is not None and shutil.which("chromedriver") is not None


def chrome(width: int = 1280, height: int = 900, downloads: str | None = None) -> Any:
    """A headless chromium driven through Debian's chromedriver (never a downloaded browser);
    ``downloads``: the folder a clicked download is saved to, without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    if downloads:
        opts.add_experimental_option(
            "prefs", {"download.default_directory": downloads, "download.prompt_for_download": False}
        )
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    if downloads:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    return driver


def wait(driver: Any, css: str, text: str | None = None, timeout: float = 30.0) -> Any:
    """The element matching ``css`` once visible (with ``text``: once it holds that text)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    w = WebDriverWait(driver, timeout)
    if text is None:
        return w.until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))
    w.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    return driver.find_element(By.CSS_SELECTOR, css)


def not_blank(png: bytes) -> float:
    """The fraction of the screenshot's pixels that are neither white nor one flat colour."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    flat = np.all(np.abs(img - img.reshape(-1, 3).mean(axis=0)) < 0.02, axis=-1)
    return float(1.0 - flat.mean())


def sign_in(driver: Any, url: str, token: str, name: str, page: str = "#/jobs") -> None:
    """Sign in with ``token`` (a fresh session) and stay at ``page`` of the UI."""
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get("about:blank")  # a fresh page load: only the hash changing would keep the old page
    driver.get(f"{url}/ui{page}")
    wait(driver, "form.signin input[name=token]").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    wait(driver, "#user", name)


# ---------------------------------------------------------------------------- the image viewer
def render_count(browser: Any) -> int:
    return int(browser.execute_script("return document.querySelector('.viewer').dataset.renderCount || '0'"))


def wait_render(browser, above: int, timeout: float = 30.0) -> int:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(lambda d: render_count(d) > above)
    return render_count(browser)


def canvas_pixels(browser, plane: str) -> np.ndarray:
    """The canvas of ``plane`` as an (h, w, 4) uint8 array (getImageData)."""
    flat = browser.execute_script(
        "const c = document.querySelector('canvas.v-canvas[data-plane=' + arguments[0] + ']');"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
        plane,
    )
    w, h, data = flat
    return np.asarray(data, dtype=np.uint8).reshape(h, w, 4)


def canvas_xy(browser, plane: str, row: float, col: float) -> tuple[float, float]:
    """Canvas pixel (x, y) of the centre of picture pixel (row, col), from the canvas' view transform."""
    d = browser.execute_script(
        "return Object.assign({}, document.querySelector('canvas.v-canvas[data-plane=' + arguments[0] + ']').dataset);",
        plane,
    )
    return float(d["ox"]) + (col + 0.5) * float(d["sx"]), float(d["oy"]) + (row + 0.5) * float(d["sy"])


def click_picture(browser, plane: str, row: int, col: int) -> None:
    """Click picture pixel (row, col) of ``plane`` and wait for the readout of that click."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    canvas = browser.find_element(By.CSS_SELECTOR, f"canvas.v-canvas[data-plane={plane}]")
    readout = browser.find_element(By.ID, "viewer-readout")
    reads = int(readout.get_attribute("data-reads") or 0)
    x, y = canvas_xy(browser, plane, row, col)
    w, h = canvas.size["width"], canvas.size["height"]
    dx, dy = int(round(x - w / 2)), int(round(y - h / 2))
    ActionChains(browser).move_to_element_with_offset(canvas, dx, dy).click().perform()
    WebDriverWait(browser, 10).until(lambda d: int(readout.get_attribute("data-reads") or 0) > reads)


def beside(browser, plane: str, row: int, col: int) -> tuple[int, int]:
    """Canvas (x, y) inside picture pixel (row, col) but off its centre (where the crosshair runs)."""
    d = browser.execute_script(
        "return Object.assign({}, document.querySelector('canvas.v-canvas[data-plane=' + arguments[0] + ']').dataset);",
        plane,
    )
    x = float(d["ox"]) + (col + 0.2) * float(d["sx"])
    y = float(d["oy"]) + (row + 0.2) * float(d["sy"])
    return int(x), int(y)


def pane_label(browser, plane: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f"figure.v-pane[data-plane={plane}] .v-label").text
