"""Runs inside the sandbox: render page.html (html) or diagram.mmd (mermaid) in Debian's Chromium
through Playwright, and screenshot it to image.png.

    python -I browser_driver.py html|mermaid VENDOR_DIR   # cold: a browser start-up per task
    render(browser, kind, vendor)                         # warm: warm_server.py's kept browser

Exit codes: 0 rendered, 3 syntax error (a JS SyntaxError / a Mermaid parse error), 1 other page
errors, 4 the browser could not start (infrastructure). Details (served libraries, blocked URLs,
console errors) go to _vc2_browser.json.
HTML: the page is served as http://t<N>.vc2.local/index.html, a new origin for every page, so
fetch("data.csv") reads the work dir; script URLs of known chart libraries (any CDN) are answered
from VENDOR_DIR, picking the vendored major nearest to the URL's; every other request is aborted.
The JS clock (Date, timers, requestAnimationFrame, performance.now) is faked by CLOCK_JS and run 5 s
forward, so animations finish without sleeping.
Cold, the page gets a browser context of its own. Warm, pages take turns in one kept tab (HtmlTab):
navigating a tab costs ~0.7 CPU-s per page against ~1.9 for a new tab, whose new renderer process
is most of a page's cost. HtmlTab.forget() keeps the pages apart (see there).
"""
import json
import re
import sys
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

MAX_RENDER_PIXELS = 36_000_000  # = vc2.eval.images.MAX_RENDER_PIXELS (drivers do not import vc2; a test checks)

ARGS = ["--disable-features=BackForwardCache", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--hide-scrollbars", "--font-render-hinting=none",
        # Chromium's own sandbox needs a user namespace of its own; we already are in a sandbox
        "--no-sandbox"]
LIBS = [  # (pattern on the URL, vendored package); first match wins, so vega-embed before vega
    (r"vega-embed", "vega-embed"), (r"vega-lite", "vega-lite"), (r"(^|[/@])vega(@|/|\.min|\.js|$)", "vega"),
    (r"chart\.js|/chart(\.umd)?(\.min)?\.js|/Chart(\.bundle)?(\.min)?\.js", "chart.js"),
    (r"echarts", "echarts"), (r"plotly", "plotly.js-dist-min"), (r"apexcharts", "apexcharts"),
    (r"mermaid", "mermaid"), (r"(^|/)d3(@|/|\.v\d|\.min|\.js)", "d3"),
]


def vendored(url, vendor):
    """Path of the vendored file for a library URL, or None. ES-module URLs are not served (UMD only)."""
    path = url.split("?")[0]
    if "+esm" in path or path.endswith(".mjs") or path.endswith(".css"):
        return None
    for pattern, pkg in LIBS:
        if re.search(pattern, path, re.I):
            majors = sorted(int(p.name) for p in (vendor / pkg).iterdir() if p.name.isdigit())
            m = re.search(r"@\^?~?(\d+)|/(\d+)\.\d+[\d.]*/|\.v(\d+)|-(\d+)\.\d+", path)
            want = int(next(g for g in m.groups() if g)) if m else majors[-1]
            major = max([v for v in majors if v <= want], default=majors[0])
            return next(f for f in (vendor / pkg / str(major)).iterdir() if f.name.endswith(".js"))
    return None


# A fake clock per document, installed before the page's own scripts. Playwright's page.clock is per
# context and replays its whole history (install, run_for, resume) into every later document of the
# context, so it cannot serve a kept tab.
# Timers fire in time order; microtasks run between them (await), as with real timers; an exception
# in a callback is rethrown from a real timer, so it reaches the page's error events as usual.
CLOCK_JS = """(() => {
  const realSetTimeout = window.setTimeout, realSetInterval = window.setInterval, RealDate = window.Date;
  const realPerfNow = performance.now.bind(performance);
  const epoch = RealDate.now(), perfBase = realPerfNow();
  let now = epoch, nextId = 1;
  const timers = new Map();
  const add = (fn, delay, args, repeat) => {
    const d = Math.max(0, Number(delay) || 0), id = nextId++;
    timers.set(id, {fn, args, at: now + d, delay: d, repeat});
    return id;
  };
  const clear = id => { timers.delete(id); };
  window.setTimeout = (fn, delay, ...args) => add(fn, delay, args, false);
  window.setInterval = (fn, delay, ...args) => add(fn, delay, args, true);
  window.clearTimeout = window.clearInterval = window.cancelAnimationFrame = clear;
  window.requestAnimationFrame = cb => add(() => cb(performance.now()), 16 - ((now - epoch) % 16) || 16, [], false);
  performance.now = () => perfBase + (now - epoch);
  function FakeDate(...args) {
    if (!new.target) return new RealDate(now).toString();
    return args.length ? new RealDate(...args) : new RealDate(now);
  }
  FakeDate.prototype = RealDate.prototype;
  FakeDate.now = () => now;
  FakeDate.parse = RealDate.parse;
  FakeDate.UTC = RealDate.UTC;
  window.Date = FakeDate;
  let running = false;
  window.__vc2RunFor = async ms => {
    if (running) return;
    running = true;
    const end = now + ms;
    try {
      for (let n = 0; n < 100000; n++) {
        let id = null, t = null;
        for (const [i, x] of timers) if (x.at <= end && (t === null || x.at < t.at)) { id = i; t = x; }
        if (t === null) break;
        now = Math.max(now, t.at);
        if (t.repeat) t.at += Math.max(t.delay, 1); else timers.delete(id);
        try { typeof t.fn === "function" ? t.fn.apply(window, t.args) : (0, eval)(String(t.fn)); }
        catch (e) { realSetTimeout(() => { throw e; }); }
        await null;
      }
    } finally { now = Math.max(now, end); running = false; }
  };
  window.__vc2Resume = () => {  // from now on the fake clock also moves with real time
    let last = realPerfNow();
    realSetInterval(() => { const t = realPerfNow(); window.__vc2RunFor(t - last); last = t; }, 16);
  };
})();"""
RUN_FOR = "ms => typeof window.__vc2RunFor === 'function' && window.__vc2RunFor(ms)"
RESUME = "() => typeof window.__vc2Resume === 'function' && window.__vc2Resume()"

DRAWN_JS = """() => {
    const big = e => { const r = e.getBoundingClientRect(); return r.width >= 4 && r.height >= 4; };
    const inked = c => {  // an empty <canvas> is not a chart; WebGL or tainted canvases are assumed drawn
        let ctx; try { ctx = c.getContext("2d"); } catch (err) { return true; }
        if (!ctx) return true;
        try { const d = ctx.getImageData(0, 0, c.width, c.height).data;
              for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; } catch (err) { return true; }
    };
    for (const e of document.querySelectorAll("canvas")) if (big(e) && e.width && e.height && inked(e)) return "CANVAS";
    for (const e of document.querySelectorAll("img, video")) if (big(e) && (e.tagName !== "IMG" || e.naturalWidth)) return e.tagName;
    for (const e of document.querySelectorAll("svg")) if (big(e) && e.querySelector("path, rect, circle, line, polyline, polygon, ellipse, text")) return "SVG";
    const painted = s => !["rgba(0, 0, 0, 0)", "transparent", "rgb(255, 255, 255)"].includes(s.backgroundColor)
        || s.backgroundImage !== "none" || s.boxShadow !== "none"
        || parseFloat(s.borderTopWidth) + parseFloat(s.borderLeftWidth) > 0;
    for (const e of document.body.querySelectorAll("*")) {
        if (!big(e)) continue;
        if (painted(getComputedStyle(e))) return e.tagName;
        for (const pseudo of ["::before", "::after"]) {  // CSS-drawn dots and lines
            const s = getComputedStyle(e, pseudo);
            if (s.content !== "none" && painted(s)) return e.tagName + pseudo;
        }
    }
    return null;
}"""

MERMAID_JS = """async (src) => {
    mermaid.initialize({startOnLoad: false, securityLevel: "strict"});
    try { await mermaid.parse(src); } catch (e) { return {kind: "syntax", msg: String(e.message || e)}; }
    try {
        const {svg} = await mermaid.render("vc2", src);
        const out = document.getElementById("out");
        out.innerHTML = svg;
        const el = out.querySelector("svg"), vb = el.viewBox.baseVal;  // useMaxWidth shrinks it otherwise
        if (vb && vb.width) { el.style.maxWidth = "none"; el.setAttribute("width", vb.width); el.setAttribute("height", vb.height); }
        return {kind: "ok"};
    } catch (e) { return {kind: "runtime", msg: String(e.message || e)}; }
}"""


def render(browser, kind, vendor, mermaid_page=None, html_tab=None):
    """Render the task in the current directory with `browser`; returns the exit code (see above).
    Warm: mermaid_page, a kept page from new_mermaid_page(), and html_tab, a kept HtmlTab (scrubbed by
    forget() after the page). Cold: both None, and a page is made for this task and closed after."""
    if kind == "mermaid":
        page = mermaid_page or new_mermaid_page(browser, vendor)
        try:
            return render_mermaid(page)
        finally:
            if mermaid_page is None:
                page.context.close()
    tab = html_tab or HtmlTab(browser, vendor)
    try:
        return tab.render()
    finally:
        if html_tab is None:
            tab.context.close()
        else:
            tab.forget()


def empty_info():
    return {"served": [], "blocked": [], "console_errors": [], "page_errors": []}


class HtmlTab:
    """One browser tab in a context of its own that renders HTML pages one after another, each page
    from the current directory at an origin of its own (http://t<N>.vc2.local/), so localStorage,
    sessionStorage, IndexedDB and caches never cross pages. Service workers are blocked; the HTTP
    cache is off while requests are routed (Playwright). Pages of one tab share a renderer process
    (the same site), never a JavaScript heap or a document."""

    def __init__(self, browser, vendor):
        self.vendor, self.n = vendor, 0
        self.info, self.inflight = empty_info(), set()
        self.context = browser.new_context(viewport={"width": 800, "height": 600}, service_workers="block")
        self.context.add_init_script(CLOCK_JS)  # also in popups
        self.context.route("**/*", self.route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.info["page_errors"].append(f"{e.name}: {e.message}"))
        self.page.on("console", lambda m: m.type == "error" and self.info["console_errors"].append(m.text))
        self.page.on("request", lambda r: self.inflight.add(r))
        self.page.on("requestfinished", lambda r: self.inflight.discard(r))
        self.page.on("requestfailed", lambda r: self.inflight.discard(r))
        self.cdp = self.context.new_cdp_session(self.page)

    @property
    def origin(self):
        return f"http://t{self.n}.vc2.local/"

    def route(self, r):
        url = r.request.url
        if url.startswith(self.origin):
            name = url[len(self.origin):].split("?")[0] or "index.html"
            if name == "index.html":
                return r.fulfill(body=Path("page.html").read_bytes(), content_type="text/html; charset=utf-8")
            f = Path(name)
            if f.is_file() and f.resolve().parent == Path.cwd().resolve():
                return r.fulfill(path=str(f.resolve()))
            return r.fulfill(status=404, body="not found")
        if url.startswith("data:") or url.startswith("blob:"):
            return r.continue_()
        f = vendored(url, self.vendor)
        if f:
            self.info["served"].append(f"{url} -> {f.relative_to(self.vendor)}")
            return r.fulfill(path=str(f), content_type="application/javascript")
        self.info["blocked"].append(url)  # incl. an earlier page's origin
        return r.abort()

    def render(self):
        self.n += 1
        self.info, self.inflight = empty_info(), set()
        try:
            return render_html(self.page, self.origin, self.info, self.inflight)
        finally:
            Path("_vc2_browser.json").write_text(json.dumps(self.info, indent=1))

    def forget(self):
        """After a page: unload it and close its popups (none of their code runs any more), drop the tab's
        history (history.back() must not bring it back), reset window.name (kept across same-site
        navigations), clear its origin's storage and every cookie (a cookie set for the domain
        vc2.local would reach every origin)."""
        self.page.goto("about:blank", timeout=10_000)  # a page still hanging its renderer: the server goes
        for _ in range(100):  # a popup may open popups while we close them
            others = [p for p in self.context.pages if p != self.page]
            if not others:
                break
            for other in others:
                other.close()
        else:
            raise RuntimeError("the page's popups keep opening popups")
        self.page.evaluate("() => { window.name = ''; }")
        self.cdp.send("Page.resetNavigationHistory")
        self.cdp.send("Storage.clearDataForOrigin", {"origin": self.origin.rstrip("/"), "storageTypes": "all"})
        self.context.clear_cookies()
        self.info = empty_info()  # late events of the page go nowhere


def settle(page, inflight, quiet_ms=60, limit_ms=10_000):
    """Wait until no request has been in flight for quiet_ms. Playwright's "networkidle" waits a fixed
    500 ms; every request here is answered locally at once, so a short quiet spell says the same."""
    quiet = waited = 0
    while quiet < quiet_ms and waited < limit_ms:
        page.wait_for_timeout(20)
        waited += 20
        quiet = quiet + 20 if not inflight else 0


def capped_clip(page):
    """None (the whole page), or the top of a page too large to screenshot whole (MAX_RENDER_PIXELS)."""
    w, h = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    if w * h <= MAX_RENDER_PIXELS:
        return None
    w = min(w, 6000)
    return {"x": 0, "y": 0, "width": w, "height": max(1, MAX_RENDER_PIXELS // w)}


def render_html(page, origin, info, inflight):
    page.goto(origin + "index.html", wait_until="load")
    settle(page, inflight)                    # fetch("data.csv") and friends
    page.evaluate(RUN_FOR, 5000)              # animations, setTimeout-driven drawing
    # Work that real browser events start late (ResizeObserver -> Chart.js redraw on a faked
    # requestAnimationFrame) would wait forever on a paused clock, and comes later on a loaded
    # machine: let the clock tick in real time and fast-forward until two screenshots agree.
    page.evaluate(RESUME)
    shot = None
    for _ in range(12):
        page.wait_for_timeout(200)
        page.evaluate(RUN_FOR, 2000)
        prev, shot = shot, page.screenshot(full_page=True, clip=capped_clip(page))
        if shot == prev:
            break
    for err in info["page_errors"]:
        print(err, file=sys.stderr)
    if info["page_errors"]:
        return 3 if info["page_errors"][0].startswith("SyntaxError") else 1
    Path("image.png").write_bytes(shot)
    # A page of text is not a chart: a 135M model's JavaScript pasted into <body> renders as
    # readable text, which the blank check would call a picture. Require something drawn: a
    # canvas, an svg with content, a loaded image, or a box with a (non-white) colour, image or border.
    info["drawn"] = page.evaluate(DRAWN_JS)
    if not info["drawn"]:
        print("the page shows only text: no canvas, svg, image or coloured/bordered box was drawn", file=sys.stderr)
        return 5
    return 0


def new_mermaid_page(browser, vendor):
    """A blank page with the mermaid bundle loaded (parsing the 3 MB bundle is most of a diagram's cost)."""
    page = browser.new_context(viewport={"width": 800, "height": 600}).new_page()
    page.set_content('<html><body style="margin:0;background:white"></body></html>')
    page.add_script_tag(path=str(vendored("mermaid@11", vendor)))
    return page


def render_mermaid(page):
    """Mermaid source is data, not code (securityLevel strict: no scripts, no click callbacks), so a kept
    page is reset rather than replaced: a new body and a fresh mermaid.initialize for every diagram."""
    page.evaluate("""() => { document.body.innerHTML = '<div id="out" style="display:inline-block;padding:8px"></div>'; }""")
    res = page.evaluate(MERMAID_JS, Path("diagram.mmd").read_text(encoding="utf-8"))
    if res["kind"] != "ok":
        print(res["msg"], file=sys.stderr)
        return 3 if res["kind"] == "syntax" else 1
    box = page.locator("#out").bounding_box() or {"x": 0, "y": 0, "width": 1, "height": 1}
    if box["width"] * box["height"] > MAX_RENDER_PIXELS:  # a huge diagram: its top-left part, capped
        box["height"] = max(1, MAX_RENDER_PIXELS // max(int(box["width"]), 1))
        page.screenshot(path=str(Path("image.png").resolve()), clip=box, full_page=True)
    else:
        page.locator("#out").screenshot(path=str(Path("image.png").resolve()))
    return 0


def launch(pw):
    return pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)


def main():
    kind, vendor = sys.argv[1], Path(sys.argv[2])
    with sync_playwright() as pw:
        try:
            browser = launch(pw)
        except PlaywrightError as e:
            print(f"browser did not start: {e}", file=sys.stderr)
            return 4
        code = render(browser, kind, vendor)
        browser.close()
    return code


if __name__ == "__main__":
    sys.exit(main())

