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
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The page re-renders after each change: an element read mid-render is retried, not an error.
    wait = WebDriverWait(browser, 60, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))

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

        ready("/")                                  # two photos of one sighting, answered together
        pair = []
        for k in (1, 2):
            pair.append(tmp_path / f"sighting-{k}.jpg")
            pair[-1].write_bytes(photo_bytes(COLOURS["momo"], seed=780 + k, size=(320, 240)))
        browser.find_element(By.ID, "together").click()
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in pair))
        notes = wait.until(lambda d: len(found := d.find_elements(By.CSS_SELECTOR, ".card .sighting-answer")) == 2
                           and found)
        assert all(n.text == "One answer for the 2 photos of this sighting, from all of them." for n in notes)
        names = [e.get_attribute("textContent") for e in browser.find_elements(By.CSS_SELECTOR, ".card .answer-name")]
        assert names == ["momo", "momo"]

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


# -- a club's flows, in Chromium, over a re-identification gallery ------------------------------------------
# The server runs in this process (uvicorn in a thread) over a real in-memory gallery whose embedder is the
# mean-colour stand-in for the network (serve_support.colour_identifier): which animal a photo shows is known.
# NABI_SCREENSHOTS=docs/screenshots refreshes the documentation's screenshots (desktop and phone).
SCREENSHOTS = Path(__import__("os").environ.get("NABI_SCREENSHOTS", ARTIFACTS / "screenshots"))


@pytest.fixture
def club(tmp_path):
    from nabi.serve.app import Settings, create_app
    from nabi.serve.service import Service
    from nabi.serve.storage import Store
    from serve_support import ThreadServer, colour_identifier

    def start(settings=None):
        store = Store(tmp_path / f"data{len(stores)}")
        stores.append(store)
        service = Service(store, colour_identifier(), max_bytes=2**20, max_pixels=10**7)
        server = ThreadServer(create_app(service, settings or Settings())).__enter__()
        servers.append(server)
        return server
    stores, servers = [], []
    try:
        yield start
    finally:
        for s in servers:
            s.__exit__()
        for s in stores:
            s.close()


def _photo(tmp_path, name, colour, **kw):
    from serve_support import OTHER_COLOURS
    p = tmp_path / f"{name}.jpg"
    p.write_bytes(photo_bytes({**COLOURS, **OTHER_COLOURS}[colour], seed=abs(hash(name)) % 10**6, size=(320, 240), **kw))
    return p


def test_a_club_renames_merges_undoes_and_moves_while_cards_wait(browser, club, tmp_path):
    """The issue's sequences in the browser: three cards wait on the identify page while, in another window,
    "11" is renamed, "32" merged into "149" and "149" renamed to "11"; every Confirm files the photo under the
    animal its card proposed. Then undo and move from the card, undo from the change log, a new individual,
    and every page at 390 px (a phone) without sideways scrolling."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from serve_support import client, exif_with, upload

    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    server = club()
    wait = WebDriverWait(browser, 30, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    with client(server) as api:                       # the gallery the club starts with: 11, 32 and 149
        ids = {}
        for name, colour in (("11", "nabi"), ("32", "momo"), ("149", "yellow")):
            pid = upload(api, (f"{name}.jpg", _photo(tmp_path, "enrol-" + name, colour).read_bytes())).json()
            d = api.post("/api/decisions", json={"photo_id": pid["results"][0]["photo"]["id"], "action": "new",
                                                 "name": name}).json()
            ids[name] = d["photo"]["decision"]["individual"]["id"]

    def ready(path):
        browser.get(server.url + path)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
                   and d.find_element(By.TAG_NAME, "body").get_attribute("data-page") != "")

    def cards():
        return {c.get_attribute("data-photo-id"): c for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")}

    def decided(card):
        return wait.until(lambda d: card.find_element(By.CSS_SELECTOR, ".decided-text")).text

    ready("/")
    paths = [_photo(tmp_path, n, c, exif=exif_with("2024:05:0%d 10:00:00" % (i + 1), (37.589 + i / 1000, 127.03)))
             for i, (n, c) in enumerate((("a", "nabi"), ("b", "momo"), ("c", "nabi")))]
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    wait.until(lambda d: len(cards()) == 3)
    a, b, c = (cards()[k] for k in sorted(cards(), key=int))
    pa, pb, pc = (x.get_attribute("data-photo-id") for x in (a, b, c))
    assert [x.find_element(By.CSS_SELECTOR, ".answer-words").text for x in (a, b, c)] == \
        ["very likely 11", "very likely 32", "very likely 11"]
    main = browser.current_window_handle
    browser.switch_to.new_window("window")
    other = browser.current_window_handle

    def rename(individual, name):
        browser.switch_to.window(other)
        ready(f"/individuals/{individual}")
        browser.find_element(By.ID, "rename-input").send_keys(name)
        browser.find_element(By.CSS_SELECTOR, "#rename-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "individual-name").text == name)
        browser.switch_to.window(main)

    rename(ids["11"], "Eleven")
    a.find_element(By.CSS_SELECTOR, "button.confirm").click()
    assert decided(a) == "Confirmed: Eleven"
    browser.switch_to.window(other)
    ready("/individuals")
    Select(browser.find_element(By.ID, "merge-source")).select_by_value(str(ids["32"]))
    Select(browser.find_element(By.ID, "merge-target")).select_by_value(str(ids["149"]))
    browser.find_element(By.CSS_SELECTOR, "#merge-form button").click()
    browser.switch_to.alert.accept()
    wait.until(lambda d: d.find_element(By.ID, "flash").text == "Merged into 149.")
    browser.switch_to.window(main)
    b.find_element(By.CSS_SELECTOR, "button.confirm").click()
    assert decided(b) == "Confirmed: 149"
    rename(ids["149"], "11")                           # another animal now takes the name "11"
    c.find_element(By.CSS_SELECTOR, "button.confirm").click()
    assert decided(c) == "Confirmed: Eleven"
    assert c.find_element(By.CSS_SELECTOR, ".answer-words").text == "very likely Eleven"   # today's name

    # undo on the card: it waits again; move another to another individual
    a.find_element(By.CSS_SELECTOR, "button.undo").click()
    wait.until(lambda d: a.find_element(By.CSS_SELECTOR, "button.confirm").is_displayed())
    b.find_element(By.CSS_SELECTOR, "button.move").click()
    wait.until(lambda d: Select(b.find_element(By.CSS_SELECTOR, ".other-select")).select_by_value(str(ids["11"]))
               or True)                                                  # once the list has arrived
    b.find_element(By.CSS_SELECTOR, ".other-go").click()
    assert wait.until(lambda d: decided(b) == "Identified: Eleven")
    ready(f"/individuals/{ids['11']}")
    timeline = {f.get_attribute("data-photo-id") for f in browser.find_elements(By.CSS_SELECTOR, "#photos figure")}
    assert {pb, pc} <= timeline and pa not in timeline and len(timeline) == 3       # and its first photo
    # the change log reads as sentences; the move is undone from there
    ready("/changes")
    entries = browser.find_elements(By.CSS_SELECTOR, "#audit li")
    texts = [e.find_element(By.CSS_SELECTOR, ".what").text for e in entries]
    assert texts[0] == f"Moved photo #{pb} from 11 (#{ids['149']}) to Eleven (#{ids['11']})"     # ids tell them apart
    assert any(t.startswith("Renamed #") and t.endswith("from 149 to 11") for t in texts)
    entries[0].find_element(By.CSS_SELECTOR, "button.undo").click()
    wait.until(lambda d: d.find_element(By.ID, "flash").text == "Undone.")
    ready("/review")
    assert {pa, pb} <= {q.get_attribute("data-photo-id") for q in browser.find_elements(By.CSS_SELECTOR, "#queue .card")}
    # an animal not seen before becomes a new individual
    ready("/")
    browser.find_element(By.ID, "files").send_keys(str(_photo(tmp_path, "p", "purple")))
    card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .card"))
    assert card.find_element(By.CSS_SELECTOR, ".answer-words").text == "probably an animal not seen before"
    card.find_element(By.CSS_SELECTOR, "button.new").click()
    card.find_element(By.CSS_SELECTOR, ".new-name").send_keys("뾰또")
    card.find_element(By.CSS_SELECTOR, "button.new-go").click()
    assert decided(card) == "New individual: 뾰또"
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []                                # no script error, no failed request, no policy violation

    # every page on a phone (390 px wide, Chromium's device emulation): nothing wider than the screen
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = {"identify": "/", "review": "/review", "individuals": "/individuals",
             "individual": f"/individuals/{ids['11']}", "photo": f"/photos/{pc}",
             "sightings": "/sightings", "map": "/map", "population": "/population", "changes": "/changes"}
    if "NABI_SCREENSHOTS" in __import__("os").environ:     # desktop screenshots for the docs, on request
        for name, path in pages.items():
            ready(path)
            assert browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        for name, path in pages.items():
            ready(path)
            width = browser.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
            wide = browser.execute_script("return [...document.querySelectorAll('body *')].filter(e => "
                                          "e.getBoundingClientRect().right > 390.5).map(e => e.tagName + '#' + e.id + "
                                          "'.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"
                                          ".slice(0, 8)")
            assert width[0] == 390 and width[1] <= 390, (name, width, wide)
            assert browser.save_screenshot(str(SCREENSHOTS / f"phone_{name}.png"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#audit li")) > 5
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    ready("/map")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map circle.sighting")) == 1     # c: a and b were undone


def test_reads_need_the_token_off_loopback(browser, club, tmp_path):
    """A server that needs its token (as on the network): pages send the browser to sign in, a photo or the CSV
    asked for without it is refused, and after signing in everything works."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from nabi.serve.app import Settings
    from serve_support import client, upload

    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    token = "club-token-0123456789"
    server = club(Settings(require_token=True, token=token))
    with client(server, token) as api:
        photo = upload(api, ("n.jpg", _photo(tmp_path, "n", "nabi").read_bytes())).json()["results"][0]["photo"]
    wait = WebDriverWait(browser, 30, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    browser.get(server.url + "/individuals")
    wait.until(lambda d: d.current_url.endswith("/signin?next=/individuals"))
    browser.get(server.url + photo["url"])                                 # a photo without the token
    assert "needs its token" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(server.url + "/api/sightings.csv")
    assert "needs its token" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(server.url + "/signin?next=/review")
    browser.find_element(By.ID, "token").send_keys("not-the-token-000")
    browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait.until(lambda d: "wrong token" in d.find_element(By.ID, "flash").text)
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-page") == "review"
               and d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    img = browser.find_element(By.CSS_SELECTOR, "#queue .card .query-img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0)
    assert browser.find_element(By.ID, "signout").is_displayed()
    browser.find_element(By.ID, "signout").click()
    wait.until(lambda d: "/signin" in d.current_url)
    browser.get(server.url + photo["url"])
    assert "needs its token" in browser.find_element(By.TAG_NAME, "body").text
