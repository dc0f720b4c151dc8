"""The per-run gallery page (parsed, and opened in headless Chromium) and the inline notebook display."""
import base64
import csv
import os
import shutil
import sys
import types
import urllib.parse
from html.parser import HTMLParser

import pytest

from conftest import tag, tiny_config

class Page(HTMLParser):
    """The parts of index.html the tests look at: image and audio sources, row headers, all text."""

    def __init__(self, path):
        super().__init__()
        self.imgs, self.audios, self.links, self.row_heads, self.text, self._in_th = [], [], [], [], [], False
        with open(path, encoding="utf-8") as f:
            self.feed(f.read())

    def handle_starttag(self, name, attrs):
        a = dict(attrs)
        {"img": self.imgs, "audio": self.audios, "a": self.links}.get(name, []).append(a.get("src") or a.get("href"))
        self._in_th = name == "th" or (self._in_th and name == "a")

    def handle_endtag(self, name):
        self._in_th = self._in_th and name != "th"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_th and data.startswith("Epoch "):
            self.row_heads.append(data)


def local(out, src):
    return os.path.join(out, *urllib.parse.unquote(src).split("/"))


def test_gallery_links_every_output_newest_epoch_first(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = tag.train(tiny_config(tiny_dataset, out, epochs=2, epoch_steps=1))
    page = Page(out / "index.html")
    assert page.row_heads == ["Epoch 2", "Epoch 1"]
    assert len(page.audios) == 2 * 3 * 2  # epochs x classes x samples_per_class
    assert page.audios[0] == "gan_generated_audio/epoch_002/high_0.wav"
    assert len(page.imgs) == 2 * 3 * 2 + 2  # a spectrogram per sample, the loss plot, the real examples
    assert {"gan_loss_plot.png", "gan_spectrogram_plots/real_examples.png"} <= set(page.imgs)
    for src in page.imgs + page.audios + page.links:
        assert not src.startswith(("/", "http:", "https:", "file:")) and os.path.isfile(local(out, src)), src
    text = " ".join(page.text)
    for key, value in (("batch_size", "4"), ("vocoder", "griffinlim"), ("base_path", tiny_dataset)):
        assert key in text and value in text
    assert "Evaluation" not in text  # no eval_metrics.csv: no section
    assert not [p for p in out.rglob(f"*{tag.TMP_MARK}*")]

    with open(out / "eval_metrics.csv", "w", newline="") as f:  # as a later evaluation will write it: any columns
        csv.writer(f).writerows([["epoch", "fad", "class_acc"], [1, 12.5, 0.4], [2, 9.25, 0.61]])
    tag.write_gallery(result["config"], result["classes"])
    text = " ".join(Page(out / "index.html").text)
    assert "Evaluation" in text and all(v in text for v in ("fad", "class_acc", "9.25", "0.61"))


def test_gallery_escapes_class_names_and_config_values(tmp_path):
    classes = ["r&b #1", "<b>"]
    for c in classes:
        os.makedirs(tmp_path / "gan_generated_audio" / "epoch_001", exist_ok=True)
        (tmp_path / "gan_generated_audio" / "epoch_001" / f"{c}_0.wav").write_bytes(b"")
    tag.write_gallery(tag.Config(out_dir=str(tmp_path), base_path="<script>x</script>"), classes)
    raw = (tmp_path / "index.html").read_text()
    assert "<script" not in raw and "<b>" not in raw and "&lt;script&gt;" in raw
    page = Page(tmp_path / "index.html")
    assert [urllib.parse.unquote(s).split("/")[-1] for s in page.audios] == ["r&b #1_0.wav", "<b>_0.wav"]
    assert all(os.path.isfile(local(tmp_path, s)) for s in page.audios)


# ---------------------------------------------------------------- the page in a real browser

def chromium_driver():
    """Headless Chromium under Debian's chromedriver, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -r requirements-dev.txt)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if os.path.isfile(p)),
                                                  None)
    if not browser or not driver:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(driver))  # an explicit driver: Selenium Manager stays idle


def test_gallery_in_headless_chromium(tiny_dataset, tmp_path):
    driver = chromium_driver()  # first: a skip costs no training
    from selenium.webdriver.support.wait import WebDriverWait
    try:
        out = tmp_path / "run"
        tag.train(tiny_config(tiny_dataset, out, epochs=2, epoch_steps=1))
        driver.get((out / "index.html").as_uri())
        settled = ("return [...document.images].every(i => i.complete) && [...document.querySelectorAll('audio')]"
                   ".every(a => a.readyState >= 1 || a.error)")
        WebDriverWait(driver, 30, 0.2).until(lambda d: d.execute_script(settled))
        broken = driver.execute_script("return [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
        durations = driver.execute_script("return [...document.querySelectorAll('audio')].map(a => a.duration)")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        driver.save_screenshot(str(tmp_path / "gallery.png"))  # for a person to look at; never in the repository
    finally:
        driver.quit()
    assert broken == []
    assert len(durations) == 12 and all(d > 0 for d in durations), durations  # 16 frames x 256 / 22050 = 0.19 s
    assert errors == []


# ---------------------------------------------------------------- notebook display, with a fake IPython

def fake_ipython(monkeypatch, shell):
    """Put a recording IPython (get_ipython() -> shell; display, HTML, Image, Audio) into sys.modules."""
    calls = {"display": [], "updates": [], "audio": []}

    class Handle:
        def update(self, obj):
            calls["updates"].append(obj)

    class HTML:
        def __init__(self, data):
            self.data = data

    class Audio:
        def __init__(self, filename):
            calls["audio"].append(filename)
            self.filename = filename

        def _repr_html_(self):
            return f'<audio controls src="{self.filename}"></audio>'

    def display(*objs, display_id=None):
        calls["display"].append((objs, display_id))
        return Handle()

    ipython, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
    disp.display, disp.HTML, disp.Audio, disp.Image = display, HTML, Audio, HTML
    ipython.get_ipython, ipython.display = (lambda: shell), disp
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", disp)
    return calls


def test_notebook_shows_one_output_replaced_every_epoch(tiny_dataset, tmp_path, monkeypatch):
    calls = fake_ipython(monkeypatch, types.SimpleNamespace(kernel=object()))  # a kernel's shell has .kernel
    out = tmp_path / "run"
    tag.train(tiny_config(tiny_dataset, out, epochs=2, epoch_steps=1))
    assert len(calls["display"]) == 1 and calls["display"][0][1] is True  # one output, created once...
    assert len(calls["updates"]) == 1  # ...then replaced by epoch 2, not appended to
    assert "Epoch 1" in calls["display"][0][0][0].data
    last = calls["updates"][-1].data
    assert "Epoch 2" in last and all(c in last for c in ("high", "low", "noise"))
    png = (out / "gan_spectrogram_plots" / "epoch_002.png").read_bytes()
    assert base64.b64encode(png).decode() in last  # the epoch's spectrogram grid, inline
    assert calls["audio"][-3:] == [str(out / "gan_generated_audio" / "epoch_002" / f"{c}_0.wav")
                                   for c in ("high", "low", "noise")]  # one player per class


@pytest.mark.parametrize("where", ["plain python", "IPython loaded, no shell", "terminal IPython"])
def test_outside_a_notebook_nothing_is_shown(where, tmp_path, monkeypatch):
    png = tmp_path / "grid.png"
    png.write_bytes(b"\x89PNG")
    if where == "plain python":
        monkeypatch.delitem(sys.modules, "IPython", raising=False)
        monkeypatch.delitem(sys.modules, "IPython.display", raising=False)
        assert tag.show_in_notebook(None, str(png), [], "Epoch 1") is None
        assert "IPython" not in sys.modules  # looked for, never imported
    else:
        calls = fake_ipython(monkeypatch, None if where == "IPython loaded, no shell" else types.SimpleNamespace())
        assert tag.show_in_notebook(None, str(png), [("a", "a_0.wav")], "Epoch 1") is None
        assert calls == {"display": [], "updates": [], "audio": []}
