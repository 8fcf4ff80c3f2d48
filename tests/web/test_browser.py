"""The web page in a real browser (Debian's chromium + chromium-driver through Selenium, installed
by .ci/run; the test skips with a message where they are missing): signing in with a token, what
a clinician sees, what the role refuses, signing out. The first end-to-end browser test of the
review page (issue 16 builds on it); screenshots are checked for content."""

from __future__ import annotations

import pytest
from helpers.browser import SKIP_REASON, chrome, have_chromium, not_blank, sign_in, wait
from helpers.http import add_user, http

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not have_chromium(), reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def test_sign_in_see_jobs_and_machines_then_sign_out(serve_app, browser, small_study_zip):
    from selenium.webdriver.common.by import By

    with open(small_study_zip, "rb") as fh:
        pid = http.post(f"{serve_app}/patients", files=[("files", ("s.zip", fh, "application/zip"))], timeout=120)
    job = http.post(f"{serve_app}/jobs", json={"patient_id": pid.json()["id"]}).json()
    token = add_user(serve_app, "browser-clinician", "clinician")

    browser.get(f"{serve_app}/ui")
    field = wait(browser, "form.signin input[name=token]")  # no session yet: the page asks for a token
    field.send_keys("rrt_not-a-token")
    browser.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    wait(browser, "main", "Sign-in failed")
    field = browser.find_element(By.CSS_SELECTOR, "form.signin input[name=token]")
    field.clear()
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    wait(browser, "main h1", "Jobs")
    wait(browser, "#user", "browser-clinician (clinician)")
    wait(browser, "main", job["id"])  # the job list, read with the session cookie
    assert not any(c["name"] == "rayrt_session" and not c.get("httpOnly") for c in browser.get_cookies())
    assert browser.execute_script("return document.cookie").find("rayrt_session") < 0, "no script reads the token"
    assert not_blank(browser.get_screenshot_as_png()) > 0.02

    browser.get(f"{serve_app}/ui#/machines")
    wait(browser, "main h1", "Treatment machines")
    wait(browser, "main", "truebeam_m120")
    browser.get(f"{serve_app}/ui#/cluster")  # the cluster's nodes need an admin: refused, said so
    wait(browser, "main", "needs the admin role")

    browser.find_element(By.CSS_SELECTOR, "#user button").click()  # sign out
    wait(browser, "form.signin input[name=token]")
    browser.get(f"{serve_app}/ui")
    wait(browser, "form.signin input[name=token]")  # the session is gone


def _click_in_row(browser, machine: str, label: str) -> None:
    from selenium.webdriver.common.by import By

    xpath = f"//tr[td[normalize-space()='{machine}']]//button[normalize-space()='{label}']"
    wait(browser, "main h1", "Treatment machines")
    browser.find_element(By.XPATH, xpath).click()


def _status(url: str, machine: str) -> dict:
    return {m["name"]: m["status"] for m in http.get(f"{url}/machines").json()["machines"]}[machine]


def test_a_physicist_marks_a_machine_down_a_clinician_may_not(serve_app, browser):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    machines = http.get(f"{serve_app}/machines").json()["machines"]
    name = next(m["name"] for m in machines if m["bookings"] == 0 and m["status"]["state"] == "available")
    tokens = {role: add_user(serve_app, f"browser-{role}-2", role) for role in ("clinician", "physicist")}

    sign_in(browser, serve_app, tokens["clinician"], "browser-clinician-2", "#/machines")
    wait(browser, "main", name)
    _click_in_row(browser, name, "Mark down")
    WebDriverWait(browser, 10).until(ec.alert_is_present()).accept()  # "Mark ... down? Its bookings move ..."
    wait(browser, "main", "needs the physicist role")
    assert _status(serve_app, name)["state"] == "available", "refused: nothing changed"

    sign_in(browser, serve_app, tokens["physicist"], "browser-physicist-2", "#/machines")
    _click_in_row(browser, name, "Mark down")
    WebDriverWait(browser, 10).until(ec.alert_is_present()).accept()
    wait(browser, "main", f"{name} is now down (malfunction)")
    status = _status(serve_app, name)
    assert status["state"] == "down" and status["changed_by"] == "browser-physicist-2"
    assert not_blank(browser.get_screenshot_as_png()) > 0.02
    _click_in_row(browser, name, "Mark available")
    wait(browser, "main", f"{name} is now available")


def _new_patients(url: str, known: set[str], timeout_s: float = 120.0) -> set[str]:
    """The patients stored besides ``known``, once there is one (an upload's import takes a moment)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        new = set(http.get(f"{url}/patients").json()["patients"]) - known
        if new or time.monotonic() > deadline:
            return new
        time.sleep(0.2)


def test_a_clinician_uploads_a_patient_from_the_page(serve_app, browser, small_study_zip, small_study_dir, tmp_path):
    """The upload view: a zip chosen in the page's file field, sent as multipart (with its length),
    imported, and what was found shown; the same patient as a folder; a file that is no DICOM is
    refused with the reason."""
    from selenium.webdriver.common.by import By

    token = add_user(serve_app, "browser-uploader", "clinician")
    before = set(http.get(f"{serve_app}/patients").json()["patients"])
    sign_in(browser, serve_app, token, "browser-uploader", "#/machines")
    browser.get(f"{serve_app}/ui#/upload")
    wait(browser, "main h1", "Upload a patient")
    browser.find_element(By.CSS_SELECTOR, "form.upload input[type=file]").send_keys(str(small_study_zip))
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    wait(browser, ".upload-result", "stored", timeout=120)
    result = browser.find_element(By.CSS_SELECTOR, ".upload-result").text
    new = set(http.get(f"{serve_app}/patients").json()["patients"]) - before
    assert len(new) == 1 and next(iter(new)) in result
    assert "PTV" in result and "Core" in result and "3 structures" in result
    assert not_blank(browser.get_screenshot_as_png()) > 0.02

    # the same patient as a folder (CT/ series, RS.dcm, RD_1.dcm below it): every file in it uploaded
    browser.find_element(By.CSS_SELECTOR, "form.upload input[name=files]").clear()
    browser.find_element(By.CSS_SELECTOR, "form.upload input[name=folder]").send_keys(str(small_study_dir))
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    (newer,) = _new_patients(serve_app, before | new)
    wait(browser, ".upload-result", f"Patient {newer} stored", timeout=60)
    assert "3 structures" in browser.find_element(By.CSS_SELECTOR, ".upload-result").text
    browser.find_element(By.CSS_SELECTOR, "form.upload input[name=folder]").clear()

    bad = tmp_path / "notes.txt"
    bad.write_text("not a scan")
    browser.find_element(By.CSS_SELECTOR, "form.upload input[type=file]").clear()
    browser.find_element(By.CSS_SELECTOR, "form.upload input[type=file]").send_keys(str(bad))
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    wait(browser, ".upload-result", "Upload refused", timeout=60)
    assert "DICOM" in browser.find_element(By.CSS_SELECTOR, ".upload-result").text
