"""The dashboard's beamtime tools in a real headless Chromium (issue #19).

Against a real pipeline on the simulator, with a context that declares an
ROI parameter (RectROI) and a line ROI (LineROI): the page opens with a
panel per view; wheel zoom and double-click; drawing and editing a
rectangle on the image sets the parameter, and the view cut by it changes
shape; log colour scale and colour ranges; the reset button of a histogram;
CSV export.  Waits are for conditions with deadlines (WebDriverWait or
wait_until), never fixed sleeps.

With ``METROPC_DOC_SCREENSHOTS=1`` the tests also save the screenshots
used by docs/dashboard.md into docs/img/ (small, palette PNGs).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from test_dashboard import CHROME_FLAGS, _chromium, wait_until

REPO = Path(__file__).resolve().parent.parent
DOC_IMG = REPO / "docs" / "img"
SCREENSHOTS = bool(os.environ.get("METROPC_DOC_SCREENSHOTS"))

ROI_CONTEXT = '''"""An image with a rectangle ROI and a line ROI (tests/test_dashboard_tools.py)."""
import numpy as np
import xarray as xr

DETECTOR = 'karabo#SIM_DET/CAM/DET1:output[data.image.pixels]'
XGM_PULSES = 'karabo#SIM_XGM/XGM/XGM1:output[data.intensityTD]'
SHUTTER = 'karabo#SIM_SHUTTER/SHUTTER/S1.isOpen'

parameters(roi=RectROI(x=200, y=200, width=64, height=32),
           cut=LineROI(x0=20, y0=266, x1=490, y1=266))


@View.Compute
def xray_on(is_open: SHUTTER):
    return bool(is_open)


@View.Image
def detector(image: DETECTOR):
    """The detector, in counts."""
    return xr.DataArray(image, dims=['y', 'x'],
                        attrs={'units': 'counts', 'long_name': 'intensity'})


@View.Image
def roi_image(image: DETECTOR):
    """The detector inside the ROI."""
    return image[roi.slice]


@View.Scalar
def roi_mean(image: DETECTOR):
    """Mean counts inside the ROI."""
    return float(image[roi.slice].mean())


@View.Vector
def cut_profile(image: DETECTOR):
    """The detector along the line ROI."""
    rows, cols = cut.points()
    r = np.clip(np.rint(rows).astype(int), 0, image.shape[0] - 1)
    c = np.clip(np.rint(cols).astype(int), 0, image.shape[1] - 1)
    distance = np.linspace(0, cut.length, r.size)
    return xr.DataArray(image[r, c], dims=['distance'],
                        coords={'distance': ('distance', distance, {'units': 'px'})},
                        attrs={'units': 'counts'})


@View.Vector_Histogram(bin_min=0, bin_max=3000, bin_count=60)
def pulse_energies(pulses: XGM_PULSES):
    """XGM pulse energies of every train so far."""
    return pulses


@View.Scalar(hidden=True)
def secret(pulses: XGM_PULSES):
    return 1.0
'''

#: The panels the page opens with: images first, then by name; not the
#: hidden view, not the COMPUTE view.
DEFAULT_VIEWS = ["detector", "roi_image", "cut_profile", "pulse_energies", "roi_mean"]


@pytest.fixture(scope="module")
def context_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "roi_ctx.py"
    path.write_text(ROI_CONTEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pipe(context_file):
    from metropc.pipeline import Pipeline

    p = Pipeline(str(context_file), source="sim", rate=20)
    yield p
    p.close()


@pytest.fixture(scope="module")
def dash(pipe):
    pytest.importorskip("tornado")
    from metropc.dashboard import Dashboard

    d = Dashboard(pipe.output_addr, "127.0.0.1", 0, control=pipe, title="tools").start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def downloads():
    path = tempfile.mkdtemp(prefix="metropc-dash-dl-")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(downloads):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary, driver = _chromium(), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="metropc-dash-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_script_timeout(20)
    drv.execute_cdp_cmd("Page.setDownloadBehavior",
                        {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, dash, pipe):
    """The page with no saved layout (so it opens with its default one)."""
    from metropc.roi import LineROI, RectROI

    pipe.set_parameters(roi=RectROI(200, 200, 64, 32), cut=LineROI(20, 266, 490, 266))
    browser.get(dash.url)
    browser.execute_script("localStorage.clear()")
    browser.get(dash.url)
    wait_panels(browser, DEFAULT_VIEWS)
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and "favicon" not in e["message"]]
    assert not errors, errors


def panels(drv):
    return drv.execute_script(
        "return [...document.querySelectorAll('.panel')].map(p => Object.assign("
        "{}, p.dataset, {frames: +p.dataset.frames}))")


def panel_data(drv, view):
    return next(p for p in panels(drv) if p["view"] == view)


def wait_panels(drv, views, n=2, timeout=30):
    def ready():
        state = {p["view"]: p for p in panels(drv)}
        return all(v in state and state[v]["frames"] >= n for v in views) and state
    return wait_until(ready, timeout, what=f"{n} frames in {views}")


def panel_el(drv, view):
    return drv.find_element("css selector", f'.panel[data-view="{view}"]')


def wait_change(drv, view, key, old, timeout=15):
    return wait_until(lambda: panel_data(drv, view).get(key) not in (old, None, "")
                      and panel_data(drv, view)[key], timeout, what=f"{view} {key} changes")


def span(text):
    lo, hi = (float(v) for v in text.split(","))
    return hi - lo


def shot(element_or_driver, name, scale=0.6):
    """Save a small screenshot into docs/img/ when asked to (docs/dashboard.md)."""
    if not SCREENSHOTS:
        return
    Image = pytest.importorskip("PIL.Image")
    png = (element_or_driver.get_screenshot_as_png()
           if hasattr(element_or_driver, "get_screenshot_as_png")
           else element_or_driver.screenshot_as_png)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
    DOC_IMG.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=128).save(DOC_IMG / name, optimize=True)


def test_default_layout_has_a_panel_per_view_images_first(page, context_file):
    drv = page
    state = panels(drv)
    assert [p["view"] for p in state] == DEFAULT_VIEWS
    by_view = {p["view"]: p for p in state}
    # titles from the views' docstrings; labels from long_name / units
    assert by_view["detector"]["doc"] == "The detector, in counts."
    assert "The detector inside the ROI." in panel_el(drv, "roi_image").find_element(
        "css selector", ".head .label").text
    assert by_view["cut_profile"]["xlabel"] == "distance (px)"
    assert by_view["cut_profile"]["ylabel"] == "value (counts)"
    assert by_view["pulse_energies"]["xlabel"] == "pulses (data.intensityTD)"
    assert by_view["roi_mean"]["ylabel"] == "Mean counts inside the ROI."
    # the layout is saved under the context's path
    key = drv.execute_script("return document.body.dataset.layoutKey")
    assert key.endswith(str(context_file))
    assert drv.execute_script("return localStorage.getItem(arguments[0])", key)
    shot(drv, "dashboard-default.png", scale=0.5)
    # closing a panel is remembered for this context; "all views" fills again
    panel_el(drv, "roi_mean").find_element("css selector", ".btn-close").click()
    drv.refresh()
    wait_panels(drv, DEFAULT_VIEWS[:-1])
    assert [p["view"] for p in panels(drv)] == DEFAULT_VIEWS[:-1]
    drv.find_element("css selector", "#all-views").click()
    wait_panels(drv, DEFAULT_VIEWS)


def _wheel(drv, element, dy, dx_px=0, dy_px=0):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    ActionChains(drv).scroll_from_origin(
        ScrollOrigin.from_element(element, dx_px, dy_px), 0, dy).perform()


@pytest.mark.parametrize("view", ["cut_profile", "detector"])
def test_wheel_zoom_and_double_click_restores(page, view):
    from selenium.webdriver.common.action_chains import ActionChains

    drv = page
    canvas = panel_el(drv, view).find_element("css selector", "canvas.plot")
    full = wait_panels(drv, [view])[view]["xrange"]
    _wheel(drv, canvas, -400)
    zoomed = wait_change(drv, view, "xrange", full)
    assert span(zoomed) < 0.8 * span(full)
    assert panel_data(drv, view)["zoomed"] == "1"
    # the zoom stays while new results arrive
    frames = panel_data(drv, view)["frames"]
    wait_panels(drv, [view], frames + 3)
    assert span(panel_data(drv, view)["xrange"]) == pytest.approx(span(zoomed), rel=1e-3)
    # a drag pans: same width, another place
    ActionChains(drv).move_to_element(canvas).click_and_hold().move_by_offset(40, 0) \
        .move_by_offset(20, 0).release().perform()
    panned = wait_change(drv, view, "xrange", zoomed)
    assert span(panned) == pytest.approx(span(zoomed), rel=1e-3)
    ActionChains(drv).double_click(canvas).perform()
    wait_until(lambda: panel_data(drv, view)["zoomed"] == "" and
               span(panel_data(drv, view)["xrange"]) == pytest.approx(span(full), rel=1e-3),
               what="double-click restores the full range")


def test_drawing_a_rectangle_sets_the_roi_and_the_view_follows(page, pipe):
    from selenium.webdriver.common.action_chains import ActionChains

    from metropc.roi import RectROI

    drv = page
    wait_until(lambda: panel_data(drv, "roi_image")["shape"] == "32x64",
               what="roi_image with the declared ROI")
    panel = panel_el(drv, "detector")
    button = wait_until(lambda: [b for b in panel.find_elements("css selector", ".btn-roi")
                                 if b.is_displayed() and b.is_enabled()], what="ROI tool")[0]
    assert "roi" in button.text
    button.click()
    canvas = panel.find_element("css selector", "canvas.plot")
    ActionChains(drv).move_to_element_with_offset(canvas, -40, -30).click_and_hold() \
        .move_by_offset(40, 30).move_by_offset(40, 30).release().perform()
    roi = wait_until(lambda: pipe.ctx.parameters["roi"] != RectROI(200, 200, 64, 32)
                     and pipe.ctx.parameters["roi"], what="the ROI parameter set")
    assert isinstance(roi, RectROI)
    # 80 x 60 screen pixels of a 512 x 512 image shown in about 250 px
    assert 100 <= roi.width <= 220 and 70 <= roi.height <= 170, roi
    assert roi.width / roi.height == pytest.approx(80 / 60, rel=0.15)
    # every stage has it: the view cut by the ROI changes shape
    wait_until(lambda: panel_data(drv, "roi_image")["shape"] == f"{roi.height}x{roi.width}",
               what="roi_image following the new ROI")
    # the sidebar shows the new value, as the literal the text box accepts
    box = drv.find_element("css selector", 'input[data-param="roi"]')
    wait_until(lambda: f"'width': {roi.width}" in box.get_attribute("data-current"),
               what="parameter box updated")
    shot(panel, "dashboard-roi.png", scale=0.8)
    # editing: dragging inside the ROI moves it, same size
    ActionChains(drv).move_to_element(canvas).click_and_hold().move_by_offset(15, 0) \
        .move_by_offset(15, 0).release().perform()
    moved = wait_until(lambda: pipe.ctx.parameters["roi"] != roi and pipe.ctx.parameters["roi"],
                       what="the ROI moved")
    assert (moved.width, moved.height, moved.y) == (roi.width, roi.height, roi.y)
    assert moved.x > roi.x + 20


def test_typed_roi_and_line_roi_reach_the_views(page, pipe):
    from selenium.webdriver.common.keys import Keys

    from metropc.roi import LineROI

    drv = page
    box = drv.find_element("css selector", 'input[data-param="cut"]')
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("{'x0': 0, 'y0': 10, 'x1': 99, 'y1': 10}", Keys.ENTER)
    wait_until(lambda: pipe.ctx.parameters["cut"] == LineROI(0, 10, 99, 10),
               what="line ROI set")
    wait_until(lambda: (r := panel_data(drv, "cut_profile")["xrange"]) and span(r) < 110,
               what="profile along the shorter line")


def mean_grey(element):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    rgb = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"))
    h, w, _ = rgb.shape
    core = rgb[h // 4:3 * h // 4, w // 3:2 * w // 3].astype(float)  # inside the image
    return core.mean()


def test_log_colour_scale_and_colour_ranges(page):
    from selenium.webdriver.support.ui import Select

    drv = page
    panel = panel_el(drv, "detector")
    panel.find_element("css selector", ".btn-settings").click()
    Select(panel.find_element("css selector", 'select[data-opt="cmap"]')).select_by_value("gray")
    Select(panel.find_element("css selector", 'select[data-opt="levels"]')).select_by_value("manual")
    for key, value in (("zmin", "0"), ("zmax", "100")):
        box = panel.find_element("css selector", f'input[data-opt="{key}"]')
        box.clear()
        box.send_keys(value + "\n")
    wait_until(lambda: panel_data(drv, "detector")["levels"] == "0.00000,100.000",
               what="fixed range applied")
    # frames drawn with that range (under load, the canvas may still show an older one)
    wait_panels(drv, ["detector"], panel_data(drv, "detector")["frames"] + 2)
    canvas = panel.find_element("css selector", "canvas.plot")
    linear = mean_grey(canvas)
    panel.find_element("css selector", 'input[data-opt="log"]').click()
    wait_until(lambda: panel_data(drv, "detector")["clog"] == "1", what="log colour applied")
    frames = panel_data(drv, "detector")["frames"]
    wait_panels(drv, ["detector"], frames + 2)
    # counts of ~10-30 in 0..100: dark on a linear scale, bright on a log one
    assert mean_grey(canvas) > linear + 40
    # percentile range (1-99 %): inside the frame's extremes (the auto range)
    # (levels and extremes are read together: frames differ, a range is per frame)
    levels = Select(panel.find_element("css selector", 'select[data-opt="levels"]'))
    levels.select_by_value("percentile")
    wait_change(drv, "detector", "levels", "0.00000,100.000")
    wait_panels(drv, ["detector"], panel_data(drv, "detector")["frames"] + 1)
    state = panel_data(drv, "detector")
    lo, hi = (float(v) for v in state["levels"].split(","))
    emin, emax = (float(v) for v in state["extremes"].split(","))
    assert emin <= lo < hi < emax
    levels.select_by_value("auto")
    wait_until(lambda: panel_data(drv, "detector")["levels"] != state["levels"],
               what="auto range applied")
    wait_panels(drv, ["detector"], panel_data(drv, "detector")["frames"] + 1)
    state = panel_data(drv, "detector")
    assert state["levels"] == state["extremes"]  # auto: the frame's min and max
    # log y on a line plot
    line = panel_el(drv, "cut_profile")
    line.find_element("css selector", ".btn-settings").click()
    line.find_element("css selector", 'input[data-opt="ylog"]').click()
    wait_until(lambda: (r := [float(v) for v in panel_data(drv, "cut_profile")["yrange"]
                              .split(",")]) and r[0] > 0 and r[1] / r[0] > 2,
               what="log y range")


def test_reset_button_clears_a_histogram(page, pipe):
    drv = page
    before = float(wait_until(lambda: (t := panel_data(drv, "pulse_energies")["total"])
                              and float(t) >= 64 * 40 and t, what="a filled histogram"))
    button = panel_el(drv, "pulse_energies").find_element("css selector", ".btn-clear")
    assert "accumulating" in button.get_attribute("class")
    button.click()
    wait_until(lambda: float(panel_data(drv, "pulse_energies")["total"] or before) < before / 2,
               what="the histogram emptied by the reset")


def test_export_csv_of_what_is_shown(page, downloads):
    drv = page
    for old in downloads.glob("*"):
        old.unlink()
    panel = panel_el(drv, "cut_profile")
    panel.find_element("css selector", ".btn-export").click()
    panel.find_element("css selector", ".btn-csv").click()
    csv = wait_until(lambda: [p for p in downloads.glob("cut_profile-*.csv")
                              if p.stat().st_size > 0], what="the CSV download")[0]
    lines = csv.read_text().splitlines()
    assert lines[0] == '"distance (px)","y"'
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert rows.shape[1] == 2 and rows.shape[0] > 100
    assert np.all(np.diff(rows[:, 0]) > 0)
    panel.find_element("css selector", ".btn-export").click()
    panel.find_element("css selector", ".btn-png").click()
    png = wait_until(lambda: [p for p in downloads.glob("cut_profile-*.png")
                              if p.stat().st_size > 0], what="the PNG download")[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_bar_shows_the_pipeline_state_and_run(page, pipe):
    """Pausing from Python shows PAUSED in the page; a run shows its number."""
    drv = page
    state = lambda: drv.find_element("id", "run-state").text  # noqa: E731
    wait_until(lambda: state().startswith("running"), what="running")
    pipe.pause()
    try:
        wait_until(lambda: state().startswith("PAUSED"), what="PAUSED in the top bar")
    finally:
        pipe.resume()
    pipe.start_run(5)
    wait_until(lambda: state() == "running · run 5", what="the run number")
    pipe.end_run()
    wait_until(lambda: state() == "ready", what="ready after the run")
