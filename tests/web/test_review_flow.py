"""Issue 16's review flow end to end in a real browser (Debian's chromium + chromedriver through
Selenium), against the running local service, as a physicist would do it: upload the TG-119
phantom, write the order from the template (a missing value and a dose level above the
prescription are refused next to their fields), start the job, watch it finish, open the viewer,
move through slices, toggle a structure, read a dose value, compare the plans' DVHs, download the
RTPLAN, approve the plan, book it and mark its machine down. Screenshots are checked for content."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from helpers.browser import (
    SKIP_REASON,
    chrome,
    click_picture,
    have_chromium,
    not_blank,
    pane_label,
    render_count,
    sign_in,
    wait,
    wait_render,
)
from helpers.http import add_user, http

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not have_chromium(), reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    driver = chrome(1400, 1000, downloads=str(downloads))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def tg119_zip(tmp_path_factory) -> Path:
    from rayrt.imaging.phantoms import write_tg119

    d = write_tg119(tmp_path_factory.mktemp("tg119-web"), 6.0)
    out = tmp_path_factory.mktemp("tg119-web-zip") / "tg119.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(d.rglob("*.dcm")):
            zf.write(f, f.relative_to(d).as_posix())
    return out


def _downloaded(folder: Path, pattern: str, timeout_s: float = 60.0) -> Path:
    """The one file matching ``pattern`` the browser saved to ``folder`` (waits for it)."""
    deadline = time.monotonic() + timeout_s
    while not list(folder.glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.2)
    (found,) = list(folder.glob(pattern))
    return found


def _click(browser, el) -> None:
    """Scroll ``el`` to the middle of the window (clear of the page's fixed header), then click it."""
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()


def _click_when_there(browser, xpath: str, timeout_s: float = 60.0) -> None:
    """Click the element at ``xpath`` once it is there (the machines board redraws itself every few
    seconds: an element found just before a redraw is gone, so look again)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            browser.find_element(By.XPATH, xpath).click()
            return
        except (NoSuchElementException, StaleElementReferenceException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _select(el, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(el).select_by_value(value)


def _goal_row(browser, structure: str, metric: str):
    from selenium.webdriver.common.by import By

    for row in browser.find_elements(By.CSS_SELECTOR, "form.order fieldset.goals tr[data-goal]"):
        sel = row.find_element(By.CSS_SELECTOR, "select")
        met = row.find_element(By.CSS_SELECTOR, "input[type=text]")
        if sel.get_attribute("value") == structure and met.get_attribute("value") == metric:
            return row
    raise AssertionError(f"no goal row {structure} {metric}")


def test_upload_order_plan_review_book(serve_app, browser, tg119_zip, downloads):
    import pydicom
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    token = add_user(serve_app, "flow-physicist", "physicist")
    sign_in(browser, serve_app, token, "flow-physicist", "#/upload")

    # upload the phantom, then write its order
    wait(browser, "main h1", "Upload a patient")
    browser.find_element(By.CSS_SELECTOR, "form.upload input[type=file]").send_keys(str(tg119_zip))
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    wait(browser, ".upload-result", "stored", timeout=120)
    pid = browser.find_element(By.CSS_SELECTOR, ".upload-result p.ok").text.split()[1]
    assert http.get(f"{serve_app}/patients/{pid}").status_code == 200
    browser.find_element(By.LINK_TEXT, "Write the order →").click()
    wait(browser, "main h1", "Order for patient")
    form = wait(browser, "form.order")
    _select(form.find_element(By.CSS_SELECTOR, "fieldset.rx select"), "PTV")
    for name, value in (("total_dose_gy", "50"), ("fractions", "25")):
        el = form.find_element(By.CSS_SELECTOR, f"input[name={name}]")
        el.clear()
        el.send_keys(value)
    browser.find_element(By.XPATH, "//button[normalize-space()='Fill from template']").click()
    jobs_before = {j["id"] for j in http.get(f"{serve_app}/jobs").json()["jobs"]}

    # a goal left without its value is refused next to it, before anything is sent
    browser.find_element(By.CSS_SELECTOR, "input[name=machine][value=standard_twin]").click()
    browser.find_element(By.XPATH, "//button[normalize-space()='Fast preview (coarse)']").click()
    browser.find_element(By.CSS_SELECTOR, "form.order button[type=submit]").click()
    core = _goal_row(browser, "Core", "max")
    assert "give the goal's value" in core.find_element(By.CSS_SELECTOR, ".field-err").text
    core.find_element(By.CSS_SELECTOR, "input[aria-label$=value]").send_keys("25")

    # a dose level above the prescription: the service refuses it, the message stands at the levels
    browser.find_element(By.XPATH, "//button[normalize-space()='Add a dose level']").click()
    level = wait(browser, "form.order fieldset.levels .row")
    _select(level.find_element(By.CSS_SELECTOR, "select"), "Core")
    level.find_element(By.CSS_SELECTOR, "input[type=number]").send_keys("60")
    browser.find_element(By.CSS_SELECTOR, "form.order button[type=submit]").click()
    wait(browser, "form.order fieldset.levels", "above the prescription")
    assert {j["id"] for j in http.get(f"{serve_app}/jobs").json()["jobs"]} == jobs_before, "nothing stored"
    assert not_blank(browser.get_screenshot_as_png()) > 0.02
    browser.find_element(By.CSS_SELECTOR, "form.order fieldset.levels .row button.link").click()  # remove it

    # start: the page follows the job to its end
    browser.find_element(By.CSS_SELECTOR, "form.order button[type=submit]").click()
    WebDriverWait(browser, 30).until(ec.url_contains("#/jobs/"))
    jid = browser.current_url.rsplit("/", 1)[1]
    job = http.get(f"{serve_app}/jobs/{jid}").json()
    assert job["patient_id"] == pid and job["machines"] == ["standard_twin"]
    assert {g["structure"] for g in job["order"]["goals"]} == {"PTV", "Core", "BODY"}
    wait(browser, ".jobhead", "succeeded", timeout=600)
    wait(browser, "main", "Plans per machine", timeout=60)

    # DVHs of both plans overlaid; hiding a plan removes its curves
    curves = lambda: len(browser.find_elements(By.CSS_SELECTOR, "svg.dvh g.curve"))  # noqa: E731
    both = curves()
    assert both >= 4, both
    browser.find_element(
        By.XPATH, "//div[@class='legend'][span[.='plans']]//label[contains(., 'standard_twin')]/input"
    ).click()
    assert 0 < curves() < both
    browser.find_element(
        By.XPATH, "//div[@class='legend'][span[.='plans']]//label[contains(., 'standard_twin')]/input"
    ).click()
    assert curves() == both

    # the RTPLAN and the PDF report download in the browser
    card = browser.find_element(By.XPATH, "//article[contains(@class,'plan')][.//h3[.='standard_twin']]")
    _click(browser, card.find_element(By.LINK_TEXT, "RTPLAN"))
    rtplan = _downloaded(downloads, "*.dcm")
    assert pydicom.dcmread(rtplan).Modality == "RTPLAN"
    _click(browser, browser.find_element(By.LINK_TEXT, "Report (PDF)"))
    assert _downloaded(downloads, "*.pdf").read_bytes().startswith(b"%PDF-")

    # the viewer: CT, outlines and dose; move through slices, hide a structure, read the dose at the target
    _click(browser, browser.find_element(By.LINK_TEXT, "Open viewer"))
    wait(browser, "canvas.v-canvas[data-plane=axial]", timeout=60)
    seen = wait_render(browser, 0, timeout=60)
    first = pane_label(browser, "axial")
    canvas = browser.find_element(By.CSS_SELECTOR, "canvas.v-canvas[data-plane=axial]")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 120).perform()
    seen = wait_render(browser, seen)
    assert pane_label(browser, "axial") != first
    assert not_blank(canvas.screenshot_as_png) > 0.1
    info = http.get(f"{serve_app}/jobs/{jid}/viewer").json()
    ptv = next(x for x in info["structures"] if x["name"] == "PTV")
    toggle = browser.find_element(By.CSS_SELECTOR, "input[data-structure=PTV]")
    toggle.click()
    assert not toggle.is_selected()
    toggle.click()
    _, _, j0, j1, i0, i1 = ptv["box"]
    before = render_count(browser)
    click_picture(browser, "axial", (j0 + j1 - 1) // 2, (i0 + i1 - 1) // 2)
    readout = browser.find_element(By.ID, "viewer-readout")
    assert "dose" in readout.text and float(readout.get_attribute("data-dose")) > 0.5 * 50.0, readout.text
    assert render_count(browser) >= before
    assert not_blank(browser.get_screenshot_as_png()) > 0.05
    browser.back()
    wait(browser, "main", "Plans per machine", timeout=60)

    # approve it (recorded with the physicist's name), then book it
    wait(browser, ".review[data-machine=standard_twin] input", timeout=60)
    card = browser.find_element(By.XPATH, "//article[contains(@class,'plan')][.//h3[.='standard_twin']]")
    card.find_element(By.CSS_SELECTOR, ".review input").send_keys("DVHs and QA reviewed")
    card.find_element(By.CSS_SELECTOR, ".review button.approve").click()
    wait(browser, ".review[data-machine=standard_twin]", "approved by flow-physicist")
    (rev,) = http.get(f"{serve_app}/jobs/{jid}/reviews").json()["reviews"]
    assert rev["decision"] == "approved" and rev["by"] == "flow-physicist"
    card = browser.find_element(By.XPATH, "//article[contains(@class,'plan')][.//h3[.='standard_twin']]")
    card.find_element(By.XPATH, ".//button[starts-with(normalize-space(), 'Book on')]").click()
    WebDriverWait(browser, 120).until(lambda d: "Booked" in card.find_element(By.CSS_SELECTOR, ".book").text)
    assert not_blank(browser.get_screenshot_as_png()) > 0.02

    # the machines board: mark the booked machine down; its patient moves and is re-planned
    browser.get(f"{serve_app}/ui#/machines")
    wait(browser, "main h1", "Treatment machines")
    row = "//tr[td[normalize-space()='standard_twin']]"
    wait(browser, "main", "standard_twin")
    _click_when_there(browser, f"{row}//button[normalize-space()='Mark down']")
    WebDriverWait(browser, 10).until(ec.alert_is_present()).accept()
    wait(browser, "main .msg", "standard_twin is now down", timeout=120)
    wait(browser, "main .msg", f"moved: job {jid}")
    _click_when_there(browser, f"{row}//button[normalize-space()='Mark available']")  # once the board refreshed
    wait(browser, "main .msg", "standard_twin is now available", timeout=120)
