"""nabi serve in a real browser: headless Chromium driven by Selenium.

Uses the system's Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``), given by
path, so nothing is downloaded when the test runs (Selenium Manager never runs). A screenshot of each page
is saved in ``tmp/artifacts/`` (or ``$NABI_TEST_ARTIFACTS``).
"""
from pathlib import Path

import pytest

from serve_support import ARTIFACTS, COLOURS, Server, photo_bytes, shared_run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                                reason="headless browser test: needs /usr/bin/chromium and /usr/bin/chromedriver "
                                       "(Debian packages chromium and chromium-driver)")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def no_manager(*args, **kwargs):
        raise AssertionError("Selenium Manager ran: it would download a browser or a driver")
    monkeypatch.setattr(SeleniumManager, "binary_paths", no_manager)
    options = webdriver.ChromeOptions()
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_confirm_and_see_the_sighting(browser, tmp_path, tmp_path_factory):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(browser, 60)

    def ready(path):
        browser.get(server.url + path)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")

    def shot(name):
        assert browser.save_screenshot(str(ARTIFACTS / f"serve_{name}.png"))

    run = shared_run(tmp_path_factory)
    photo = tmp_path / "nabi in the library.jpg"
    photo.write_bytes(photo_bytes(COLOURS["nabi"], seed=777, size=(320, 240)))
    other = tmp_path / "momo.jpg"
    other.write_bytes(photo_bytes(COLOURS["momo"], seed=778, size=(320, 240)))
    with Server(run, tmp_path / "data") as server:
        ready("/")
        browser.find_element(By.ID, "place").send_keys("library lawn")
        browser.find_element(By.ID, "files").send_keys(str(photo))
        words = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".card .answer-words")))
        proposed = browser.find_element(By.CSS_SELECTOR, ".card .answer-name").get_attribute("textContent")
        assert proposed == "nabi" and "nabi" in words.text
        assert len(browser.find_elements(By.CSS_SELECTOR, ".card .candidate")) == 2
        for hidden in (".other-select", ".other-go"):      # shown only when asked for
            assert not browser.find_element(By.CSS_SELECTOR, f".card {hidden}").is_displayed()
        assert not browser.find_elements(By.CSS_SELECTOR, ".card button.new")   # a classifier learns no new one
        shot("identify")
        img = browser.find_element(By.CSS_SELECTOR, ".card .query-img")
        browser.find_element(By.CSS_SELECTOR, ".card .heat-toggle").click()
        wait.until(lambda d: img.get_attribute("src").endswith("/heatmap")
                   and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0)
        shot("identify_heatmap")
        browser.find_element(By.CSS_SELECTOR, ".card button.confirm").click()
        decided = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".card .decided-text")))
        assert decided.text == f"Confirmed: {proposed}"

        browser.find_element(By.ID, "files").send_keys(str(photo))       # the same photo again: refused
        refused = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".card.refused .error")))
        assert "was already uploaded" in refused.text
        browser.find_element(By.ID, "files").send_keys(str(other))       # left waiting for the review queue
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card:not(.refused)")) == 2)
        ready("/review")
        queued = browser.find_elements(By.CSS_SELECTOR, "#queue .card .answer-name")
        assert [q.get_attribute("textContent") for q in queued] == ["momo"]
        shot("review")

        ready("/sightings")
        rows = browser.find_elements(By.CSS_SELECTOR, "#sightings-table tbody tr")
        assert len(rows) == 1
        cells = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
        assert cells[1] == proposed and cells[3] == "library lawn" and cells[4] == photo.name
        shot("sightings")

        ready("/individuals")
        table = {r.find_elements(By.TAG_NAME, "td")[1].text: r.find_elements(By.TAG_NAME, "td")[2].text
                 for r in browser.find_elements(By.CSS_SELECTOR, "#individuals-table tbody tr")}
        assert table == {"momo": "0", "nabi": "1"}
        shot("individuals")
        browser.find_element(By.ID, "individuals-table").find_element(By.LINK_TEXT, proposed).click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-page") == "individual"
                   and d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert browser.find_element(By.ID, "individual-name").text == proposed
        assert len(browser.find_elements(By.CSS_SELECTOR, "#photos figure")) == 1
        browser.find_element(By.ID, "rename-input").send_keys("나비")
        browser.find_element(By.CSS_SELECTOR, "#rename-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "individual-name").text == "나비")
        shot("individual")
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        expected = [e for e in errors if "status of 409" in e and "/api/identify" in e]
        assert len(expected) == 1 and errors == expected     # only the refusal above: no script error,
                                                               # no other failed request, no policy violation

    # The server restarts (with a new CSRF token) under the open page: the next change fetches the new
    # token and goes through.
    with Server(run, tmp_path / "data", port=server.port):
        field = browser.find_element(By.ID, "rename-input")
        field.clear()
        field.send_keys("Nabi")
        browser.find_element(By.CSS_SELECTOR, "#rename-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "individual-name").text == "Nabi")
        assert browser.find_element(By.ID, "flash").text == "Renamed."
