"""The image viewer in a real browser (Debian's chromium through Selenium; skipped with a message
where it is missing): a clinician opens the viewer of a planned job, scrolls through slices,
toggles a structure, clicks on the target and reads the dose there (the RTDOSE's value), switches
to the converted plan and to the difference of two plans. The canvases' pixels and screenshots
are checked for content: not blank, the dose wash where the target is."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.browser import (
    SKIP_REASON,
    beside,
    canvas_pixels,
    canvas_xy,
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

from rayrt.imaging.dicom_io import read_rtdose_bytes
from rayrt.imaging.volume import Grid

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not have_chromium(), reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def _rtdose(url: str, jid: str, machine: str):
    return read_rtdose_bytes(http.get(f"{url}/jobs/{jid}/plans/{machine}/rtdose", timeout=30).content)


def _coloured(px: np.ndarray) -> np.ndarray:
    """Pixels that are not grey (the CT is drawn in grey levels: colour is dose, a line or a contour)."""
    rgb = px[..., :3].astype(int)
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40


def test_review_a_plan_in_the_viewer(serve_app, planned_job, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    jid = planned_job["id"]
    info = http.get(f"{serve_app}/jobs/{jid}/viewer", timeout=60).json()
    grid = Grid.model_validate(info["grid"])
    ptv = next(s for s in info["structures"] if s["name"] == "PTV")
    k0, k1, j0, j1, i0, i1 = ptv["box"]
    kc, jc, ic = (k0 + k1 - 1) // 2, (j0 + j1 - 1) // 2, (i0 + i1 - 1) // 2
    plans = [d for d in info["doses"] if d["kind"] == "plan"]
    token = add_user(serve_app, "viewer-clinician", "clinician")

    sign_in(browser, serve_app, token, "viewer-clinician", page=f"#/jobs/{jid}/viewer")
    wait(browser, "main h1", "Viewer")
    wait(browser, "canvas.v-canvas[data-plane=axial]")
    wait_render(browser, 2, timeout=60)  # the three planes drawn
    assert f"axial {kc + 1} / {grid.shape[0]}" in pane_label(browser, "axial"), "opens at the prescription target"
    png = browser.get_screenshot_as_png()
    (tmp_path / "viewer.png").write_bytes(png)
    assert not_blank(png) > 0.05

    # the dose wash is where the target is, not in the air outside the body
    px = canvas_pixels(browser, "axial")
    x, y = beside(browser, "axial", jc, ic)
    assert _coloured(px)[y, x], "the target's centre is washed in colour"
    x0, y0 = canvas_xy(browser, "axial", 0, 0)
    assert not _coloured(px)[int(y0), int(x0)], "no wash in the corner (air, no dose)"
    assert _coloured(px).mean() > 0.01 and (px[..., :3] > 10).any(axis=-1).mean() > 0.2

    # scroll: the axial slice index and the picture change
    canvas = browser.find_element(By.CSS_SELECTOR, "canvas.v-canvas[data-plane=axial]")
    for _ in range(4):
        before = render_count(browser)
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 120).perform()
        wait_render(browser, before)
    assert f"axial {kc + 5} / {grid.shape[0]}" in pane_label(browser, "axial")
    assert not np.array_equal(canvas_pixels(browser, "axial"), px), "another slice, another picture"
    for _ in range(4):  # back to the target's centre
        before = render_count(browser)
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -120).perform()
        wait_render(browser, before)
    assert f"axial {kc + 1} / {grid.shape[0]}" in pane_label(browser, "axial")

    # toggle a structure: with the dose hidden, its outline pixels disappear
    browser.find_element(By.CSS_SELECTOR, "input.v-wash").click()
    browser.find_element(By.CSS_SELECTOR, "input.v-lines").click()
    colour = np.array(ptv["colour"])

    def outline_pixels() -> int:  # pixels in (or near: the lines are antialiased) the PTV's colour
        return int((np.abs(canvas_pixels(browser, "axial")[..., :3].astype(int) - colour).sum(axis=-1) < 120).sum())

    with_ptv = outline_pixels()
    browser.find_element(By.CSS_SELECTOR, "input[data-structure=PTV]").click()
    without = outline_pixels()
    assert with_ptv > 0 and without < with_ptv - 50, (with_ptv, without)
    browser.find_element(By.CSS_SELECTOR, "input[data-structure=PTV]").click()
    browser.find_element(By.CSS_SELECTOR, "input.v-wash").click()
    browser.find_element(By.CSS_SELECTOR, "input.v-lines").click()

    # click on the target: the other views move there, the dose read is the RTDOSE's value
    centre = grid.index_to_world(np.array([kc, jc, ic], dtype=float))
    standard = _rtdose(serve_app, jid, "standard")
    click_picture(browser, "axial", jc, ic)
    assert f"coronal {jc + 1} /" in pane_label(browser, "coronal")
    assert f"sagittal {ic + 1} /" in pane_label(browser, "sagittal")
    readout = browser.find_element(By.ID, "viewer-readout")
    assert "HU" in readout.text and "PTV" in readout.text
    want = float(standard.sample(centre[None, :], order=1)[0])
    got = float(readout.get_attribute("data-dose"))
    assert got == pytest.approx(want, abs=1e-3 * float(standard.array.max())), (got, want)
    assert want > 0.8 * info["prescription_gy"]

    if len(plans) < 2:
        pytest.skip(f"only {len(plans)} plan released: no converted plan to switch to")
    # a converted plan for one of the job's treatment machines when one was released
    other = next((d for d in plans[1:] if d["machine"] in planned_job["machines"]), plans[1])
    before = render_count(browser)
    Select(browser.find_element(By.CSS_SELECTOR, "select.v-dose")).select_by_value(other["id"])
    wait_render(browser, before + 2)  # the three planes with the other dose
    click_picture(browser, "axial", jc, ic)
    converted = _rtdose(serve_app, jid, other["machine"])
    want_b = float(converted.sample(centre[None, :], order=1)[0])
    assert float(readout.get_attribute("data-dose")) == pytest.approx(want_b, abs=1e-3 * float(converted.array.max()))
    assert _coloured(canvas_pixels(browser, "axial"))[y, x]

    # the difference view: converted - standard, diverging colours; the readout gives A - B
    Select(browser.find_element(By.CSS_SELECTOR, "select.v-dose-b")).select_by_value("plan:standard")
    before = render_count(browser)
    browser.find_element(By.CSS_SELECTOR, "input.v-diff").click()
    wait_render(browser, before + 2)
    click_picture(browser, "axial", jc, ic)
    assert "−" in readout.text
    diff = float(readout.get_attribute("data-diff"))
    assert diff == pytest.approx(want_b - want, abs=2e-3 * float(standard.array.max()))
    png = browser.get_screenshot_as_png()
    (tmp_path / "viewer-difference.png").write_bytes(png)
    assert not_blank(png) > 0.05

    # zoom in: the picture's pixels get larger
    sx = float(browser.find_element(By.CSS_SELECTOR, "canvas.v-canvas[data-plane=axial]").get_attribute("data-sx"))
    browser.find_element(By.CSS_SELECTOR, "button.v-zoom-in").click()
    sx2 = float(browser.find_element(By.CSS_SELECTOR, "canvas.v-canvas[data-plane=axial]").get_attribute("data-sx"))
    assert sx2 == pytest.approx(1.25 * sx, rel=1e-3)


def test_the_job_page_links_to_the_viewer(serve_app, planned_job, browser):
    from selenium.webdriver.common.by import By

    token = add_user(serve_app, "viewer-clinician-2", "clinician")
    sign_in(browser, serve_app, token, "viewer-clinician-2", page=f"#/jobs/{planned_job['id']}")
    wait(browser, "main .actions a.button", "Open viewer")
    browser.find_element(By.LINK_TEXT, "Open viewer").click()
    wait(browser, "main h1", "Viewer")
    wait_render(browser, 2, timeout=60)
    assert browser.execute_script("return location.hash") == f"#/jobs/{planned_job['id']}/viewer"


def test_an_uploaded_patient_opens_in_the_viewer(serve_app, browser, small_study_zip, small_study):
    """From the upload view's result to the viewer of that patient: its CT, structures and uploaded
    dose; the keyboard moves through slices."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    token = add_user(serve_app, "viewer-uploader", "clinician")
    sign_in(browser, serve_app, token, "viewer-uploader", page="#/upload")
    wait(browser, "main h1", "Upload a patient")
    browser.find_element(By.CSS_SELECTOR, "form.upload input[type=file]").send_keys(str(small_study_zip))
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    wait(browser, ".upload-result", "stored", timeout=120)
    browser.find_element(By.CSS_SELECTOR, ".upload-result").find_element(By.LINK_TEXT, "Open viewer").click()
    wait(browser, "main h1", "Viewer")
    wait_render(browser, 2, timeout=60)
    assert "/viewer" in browser.execute_script("return location.hash")
    doses = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "select.v-dose option")]
    assert doses[0] == "no dose" and any("uploaded dose" in d for d in doses[1:])
    names = [e.get_attribute("data-structure") for e in browser.find_elements(By.CSS_SELECTOR, "input[data-structure]")]
    assert names == ["BODY", "PTV", "Core"]
    start = pane_label(browser, "sagittal")
    canvas = browser.find_element(By.CSS_SELECTOR, "canvas.v-canvas[data-plane=sagittal]")
    canvas.click()  # the readout, and the focus for the keyboard
    canvas.send_keys(Keys.ARROW_DOWN)
    WebDriverWait(browser, 30).until(lambda d: pane_label(d, "sagittal") != start)
    readout = browser.find_element(By.ID, "viewer-readout")
    assert "HU" in readout.text and "dose" in readout.text
    assert not_blank(browser.get_screenshot_as_png()) > 0.05
