"""The demo's report pages in a real browser (Debian's Chromium, driven by Selenium), opened
from ``file://`` as a user opens them: no console error, no failed load, every image drawn,
a screenshot that is not blank, and QC rating exported as a TSV with one click."""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

CHROMIUM = shutil.which('chromium')
CHROMEDRIVER = shutil.which('chromedriver')
webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason='Debian chromium and chromium-driver are not installed (.ci/browser.sh installs them)',
)

#: The flags that keep Chromium from reaching out to the network at start.
CHROMIUM_FLAGS = (
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--window-size=1400,1000',
)


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}')
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> list[dict]:
    """Load ``page`` from disk; returns the console's entries of that load."""
    driver.get_log('browser')  # drop what earlier pages left
    driver.get(page.as_uri())
    driver.execute_script('return document.readyState')
    return driver.get_log('browser')


def _assert_drawn(driver) -> None:
    broken = driver.execute_script(
        'return Array.from(document.images)'
        '.filter(i => !i.complete || i.naturalWidth === 0 || i.naturalHeight === 0)'
        '.map(i => i.src.slice(0, 80));'
    )
    assert broken == []
    png = matplotlib.image.imread(io.BytesIO(driver.get_screenshot_as_png()), format='png')
    assert png.shape[0] > 100 and float(np.std(png[..., :3])) > 0.05  # not blank


@pytest.mark.parametrize('name', ['sub-01.html', 'sub-02.html', 'sub-03.html', 'sub-04.html'])
def test_subject_page_loads_clean_from_disk(browser, demo_run, name):
    _, _, out = demo_run
    console = _open(browser, out / name)
    assert [entry for entry in console if entry['level'] in ('SEVERE', 'WARNING')] == []
    assert browser.execute_script('return document.images.length') >= 3
    _assert_drawn(browser)


def test_group_page_sorts_filters_and_exports_a_rating(browser, demo_run, tmp_path):
    from selenium.webdriver.common.by import By

    _, _, out = demo_run
    console = _open(browser, out / 'group.html')
    assert [entry for entry in console if entry['level'] in ('SEVERE', 'WARNING')] == []
    _assert_drawn(browser)
    table = browser.find_element(By.ID, 'subjects-table')

    def first_column():
        rows = table.find_elements(By.CSS_SELECTOR, 'tbody tr')
        return [r.find_element(By.TAG_NAME, 'td').text for r in rows if r.is_displayed()]

    header = table.find_element(By.CSS_SELECTOR, 'thead th')
    header.click()
    header.click()
    assert first_column() == ['sub-04', 'sub-03', 'sub-02', 'sub-01']
    browser.find_element(By.CSS_SELECTOR, 'input[data-table="subjects-table"]').send_keys('sub-02')
    assert first_column() == ['sub-02']

    browser.execute_cdp_cmd(
        'Browser.setDownloadBehavior', {'behavior': 'allow', 'downloadPath': str(tmp_path)}
    )
    row = browser.find_element(
        By.CSS_SELECTOR, 'tr.rating-row[data-participant="sub-03"][data-pipeline="ct-ingest"]'
    )
    row.find_element(By.CSS_SELECTOR, 'input[value="fail"]').click()
    row.find_element(By.CSS_SELECTOR, 'input.comment').send_keys('streaks in the posterior fossa')
    browser.find_element(By.ID, 'export-ratings').click()
    exported = tmp_path / 'group_qc_ratings.tsv'
    for _ in range(100):
        if exported.is_file():
            break
        time.sleep(0.1)
    with exported.open() as handle:
        rows = list(csv.DictReader(handle, delimiter='\t'))
    assert [(r['participant_id'], r['pipeline'], r['rating'], r['comment']) for r in rows] == [
        ('sub-03', 'ct-ingest', 'fail', 'streaks in the posterior fossa')
    ]
    assert rows[0]['session_id'] == 'n/a' and rows[0]['timestamp'].startswith('20')
    assert browser.get_log('browser') == []
