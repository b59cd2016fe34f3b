"""Dashboard benchmark: frame rates measured inside a headless Chromium.

Run with ``python benchmarks/dashboard.py`` (about a minute; needs the
``dashboard`` extra, selenium, Chromium and chromedriver).

Two scenarios, each with a real pipeline on the simulator and a dashboard
with control, opened in headless Chromium (1500 x 1100):

1. one 1-Mpix image panel (the simulated 512 x 512 detector blown up to
   1024 x 1024 by a POOL view) at a 20 Hz source: how often the panel
   redraws;
2. 20 panels (5 images of 512 x 512, 5 lines, 5 traces, 5 histograms) at a
   10 Hz source: how often each redraws, and whether the page stays
   responsive.

Rates are measured in the page: each panel counts the frames it drew, and
a requestAnimationFrame loop counts animation frames and the longest gap
between two of them (a page that is busy drawing shows fewer animation
frames and long gaps; 60/s and gaps near 17 ms mean it is idle enough to
react at once).  Numbers depend on the machine and its load (+-30 %).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

MEASURE_S = 6.0

IMAGE_CONTEXT = '''
import numpy as np
import xarray as xr
DETECTOR = 'karabo#SIM_DET/CAM/DET1:output[data.image.pixels]'

@View.Image
def big(image: DETECTOR):
    """The detector at 1024 x 1024 (1 Mpix)."""
    return xr.DataArray(np.kron(image, np.ones((2, 2), np.float32)), dims=['y', 'x'])
'''

MANY_CONTEXT = '''
import numpy as np
import xarray as xr
DETECTOR = 'karabo#SIM_DET/CAM/DET1:output[data.image.pixels]'
PULSES = 'karabo#SIM_XGM/XGM/XGM1:output[data.intensityTD]'
SPECTRUM = 'karabo#SIM_SPEC/SPEC/SPEC1:output[data.spectrum]'

def _make(i):
    @View.Image(name=f'image{i}')
    def image(img: DETECTOR):
        return img * (1 + i)

    @View.Vector(name=f'line{i}')
    def line(spec: SPECTRUM):
        return spec + i

    @View.Scalar(name=f'trace{i}')
    def trace(pulses: PULSES):
        return float(np.mean(pulses)) + i

    @View.Vector_Histogram(name=f'hist{i}', bin_min=0, bin_max=3000, bin_count=100)
    def hist(pulses: PULSES):
        return pulses

for _i in range(5):
    _make(_i)
'''

MEASURE_JS = """
const done = arguments[arguments.length - 1];
const seconds = arguments[0];
const panels = [...document.querySelectorAll('.panel')];
const before = panels.map(p => +p.dataset.frames);
let rafs = 0, maxGap = 0, last = performance.now();
const t0 = last;
function tick(now) {
  rafs++; maxGap = Math.max(maxGap, now - last); last = now;
  if (now - t0 < seconds * 1000) requestAnimationFrame(tick);
  else {
    const dt = (performance.now() - t0) / 1000;
    done(JSON.stringify({dt, rafs: rafs / dt, maxGap,
      panels: panels.map((p, i) => ({view: p.dataset.view, fps: (+p.dataset.frames - before[i]) / dt}))}));
  }
}
requestAnimationFrame(tick);
"""


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                   if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        sys.exit("needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="metropc-bench-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--window-size=1500,1100",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_script_timeout(MEASURE_S + 30)
    return drv, profile


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def scenario(drv, source, rate, n_panels, label):
    from metropc.dashboard import Dashboard
    from metropc.pipeline import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        ctx = os.path.join(tmp, "bench_ctx.py")
        with open(ctx, "w", encoding="utf-8") as f:
            f.write(source)
        with Pipeline(ctx, source="sim", rate=rate) as pipe, \
                Dashboard(pipe.output_addr, control=pipe, title=label).start() as dash:
            drv.get(dash.url)
            drv.execute_script("localStorage.clear()")
            drv.get(dash.url)   # no saved layout: a panel per view

            def ready():
                frames = drv.execute_script(
                    "return [...document.querySelectorAll('.panel')].map(p => +p.dataset.frames)")
                return len(frames) == n_panels and min(frames) >= 3
            _wait(ready, 60, f"{n_panels} panels drawing")
            received = {n: v["received"] for n, v in dash.hub.stats()["views"].items()}
            t0 = time.monotonic()
            result = json.loads(drv.execute_async_script(MEASURE_JS, MEASURE_S))
            dt = time.monotonic() - t0
            # What the dashboard received from the pipeline meanwhile: the
            # most the page could have drawn.
            arrived = {n: (v["received"] - received.get(n, 0)) / dt
                       for n, v in dash.hub.stats()["views"].items()}
    fps = sorted(p["fps"] for p in result["panels"])
    for p in result["panels"]:
        p["arrived"] = arrived.get(p["view"], 0.0)
    print(f"{label}: source {rate} Hz, {n_panels} panel(s), {result['dt']:.1f} s")
    print(f"  panel redraws/s: min {fps[0]:.1f}  median {fps[len(fps) // 2]:.1f}  "
          f"max {fps[-1]:.1f}")
    if n_panels > 1:
        by_kind = {}
        for p in result["panels"]:
            by_kind.setdefault(p["view"].rstrip("0123456789"), []).append(p)
        print("  drawn/s (results/s arriving) by kind: " + ", ".join(
            f"{k} {min(p['fps'] for p in v):.1f}-{max(p['fps'] for p in v):.1f} "
            f"({min(p['arrived'] for p in v):.1f}-{max(p['arrived'] for p in v):.1f})"
            for k, v in sorted(by_kind.items())))
    else:
        print(f"  results arriving: {result['panels'][0]['arrived']:.1f}/s")
    print(f"  page: {result['rafs']:.1f} animation frames/s, longest gap "
          f"{result['maxGap']:.0f} ms")
    return result


def main():
    drv, profile = _browser()
    try:
        one = scenario(drv, IMAGE_CONTEXT, 20, 1, "1-Mpix image")
        many = scenario(drv, MANY_CONTEXT, 10, 20, "20 panels")
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
    image_fps = one["panels"][0]["fps"]
    slowest = min(p["fps"] for p in many["panels"])
    print(f"summary: 1-Mpix image {image_fps:.1f} redraws/s (target >= 5); "
          f"20 panels at 10 Hz: slowest {slowest:.1f}/s, page {many['rafs']:.0f} frames/s, "
          f"longest gap {many['maxGap']:.0f} ms")


if __name__ == "__main__":
    main()
