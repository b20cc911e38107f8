"""The review page (``/review``) in a real browser: Playwright for Python driving Debian's Chromium against the
real API, worker, Redis and fake endpoint. The page asks for an API key (again after a 401) and keeps it for the
browser session; math renders through KaTeX, an answer is edited in place with a live preview, the LLM helps,
one item is accepted and one rejected from the keyboard, and the API shows both with the versions under the
key's name and team; a question carrying ``<script>`` and ``onerror`` stays inert text.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``[browser]`` extra (``pip install
playwright``; never ``playwright install``). ``SKILLMIX_DOCS_SCREENSHOT=1`` also copies the screenshot to
docs/review.png for the README."""

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from tests import keyed
from tests.conftest import Processes
from tests.service.test_review import _item, _list, _math_job, _stack, _url
from tests.service.test_teams import skillmix

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - depends on the machine
    sync_api = None  # type: ignore[assignment]
MISSING = (
    "the review page test needs the [browser] extra (pip install playwright)"
    if sync_api is None
    else "the review page test needs Debian's Chromium (apt-get install chromium)"
    if not CHROMIUM.exists()
    else ""
)
if MISSING and os.environ.get("SKILLMIX_REQUIRE_BROWSER"):  # .ci/run sets it: CI must not skip this test
    raise RuntimeError(MISSING)
pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING or "-")

SETUP, CAROL = "tests admin (team tests)", "carol (team tests)"  # the keys' names and team, as the history says
MATH_PROBLEM = r"Let $x = \frac{3}{4}$ and \(y = \sqrt{2}\). Find $$x^2 + y^2.$$"
EVIL_PROBLEM = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> '
    '<a href="javascript:window.__pwned=3">click</a> What is $1 + 1$?'
)
EVIL_SOLUTION = r"<img src=x onerror=window.__pwned=4> $\href{javascript:window.__pwned=5}{two}$ is 2."

# visible text of an element outside KaTeX's output (KaTeX keeps the TeX source in its MathML annotation)
TEXT_OUTSIDE_KATEX = """(node) => {
  const out = [];
  const walk = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) if (!walk.currentNode.parentElement.closest('.katex')) out.push(walk.currentNode.data);
  return out.join('');
}"""


def test_review_page_renders_math_edits_accepts_and_rejects_from_the_keyboard(
    processes: Processes, redis: ArqRedis, fake_llm: Any, tmp_path: Path
) -> None:
    _, api = _stack(processes, fake_llm)
    job_id = _math_job(api, 3, seed=7)
    first, second, third = _list(api, job=job_id)["data"]
    plants = ((first, {"problem": MATH_PROBLEM}), (second, {"problem": EVIL_PROBLEM, "solution": EVIL_SOLUTION}))
    for item, edit in plants:
        response = keyed.patch(_url(api, item), json={"expected_version": 1, **edit}, key=keyed.ADMIN)
        assert response.status_code == 200, response.text
    made = skillmix("keys", "create", "--team", keyed.TEAM, "--name", "carol")  # the operator gives carol a key
    assert made.returncode == 0, made.stdout + made.stderr
    carol_key = made.stdout.splitlines()[-1]

    page_response = keyed.get(f"{api}/review")
    assert page_response.status_code == 200 and "text/html" in page_response.headers["content-type"]
    csp = page_response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert keyed.get(f"{api}/static/vendor/katex/katex.min.js").status_code == 200

    errors: list[str] = []
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(15_000)
            sync_api.expect.set_options(timeout=15_000)
            page.goto(f"{api}/review?job={job_id}")

            # the page asks for a key; a refused one (401) is asked for again, and none is kept
            expect(page.locator("#key-form")).to_be_visible()
            assert page.locator("#queue li").count() == 0
            page.fill("#api-key", "smx_not-a-key")
            page.keyboard.press("Enter")
            expect(page.locator("#key-why")).to_contain_text("refused")
            expect(page.locator("#key-form")).to_be_visible()
            assert page.evaluate("sessionStorage.getItem('skillmix.key')") is None
            page.fill("#api-key", carol_key)
            page.click("#key-form button[type=submit]")
            expect(page.locator("#key-form")).to_be_hidden()
            expect(page.locator("#key-shown")).to_have_text(f"key {carol_key[:12]}…")
            page.evaluate("document.activeElement && document.activeElement.blur()")  # no shortcuts while typing

            # the queue opens on the first item, its math rendered by KaTeX, not left as $...$
            page.wait_for_selector("#problem .katex")
            assert page.locator("#queue li").count() == 3
            assert page.locator("#problem .katex").count() == 3  # $...$, \(...\) and $$...$$
            assert page.locator("#problem .katex-display").count() == 1
            outside = page.locator("#problem").evaluate(TEXT_OUTSIDE_KATEX)
            assert "$" not in outside and "\\frac" not in outside and "\\(" not in outside, outside
            assert page.locator("#answer .katex").count() == 1

            # the MATH^2 stage history is folded until asked for
            assert page.locator("#stages-body").is_hidden()
            page.click("#stages summary")
            expect(page.locator("#stages-body")).to_contain_text("Validation 1")
            expect(page.locator("#stages-body")).to_contain_text("Solve 3")
            expect(page.locator("#stages-body")).to_contain_text("Vote")
            page.click("#stages summary")

            # edit the answer in place: the preview renders live, Ctrl+Enter saves through the API
            page.keyboard.press("e")
            page.fill("#e-answer", r"\frac{7}{8}")
            page.wait_for_selector("#p-answer .katex")
            assert "7" in page.locator("#p-answer .katex-html").inner_text()
            page.keyboard.press("Control+Enter")
            expect(page.locator("#item-version")).to_have_text("3")
            assert page.locator("#edit").is_hidden() and page.locator("#answer .katex").count() == 1

            # ask the LLM to re-solve: its suggestion comes back on the item, changing nothing
            page.keyboard.press("h")
            page.select_option("#help-kind", "resolve")
            page.click("#help-form button[type=submit]")
            page.wait_for_selector("#suggestions .suggestion", timeout=60_000)
            expect(page.locator("#item-version")).to_have_text("4")

            # accept with the keyboard; the page moves on to the next item (the one carrying HTML)
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.keyboard.press("a")
            expect(page.locator("#item-id")).to_have_text(f"{job_id} #{second['index']}")
            expect(page.locator("#status")).to_have_text(re.compile("^accepted"))

            # the planted HTML is shown as text: no element from it, nothing ran
            problem = page.locator("#problem")
            assert "<script>window.__pwned = 1</script>" in problem.inner_text()
            assert problem.locator("script, img, a").count() == 0
            assert page.locator("#solution img, #solution a").count() == 0
            assert page.locator("#problem .katex").count() == 1  # its $1 + 1$ is still math
            assert page.locator("#queue img, #queue script").count() == 0

            # reject it with a reason, from the keyboard
            page.keyboard.press("r")
            page.fill("#reject-reason", "the question is markup, not mathematics")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_have_text(re.compile("^rejected"))

            # back to the accepted one for the screenshot, with its version log folded open
            expect(page.locator("#item-id")).to_have_text(f"{job_id} #{third['index']}")
            page.keyboard.press("k")
            expect(page.locator("#item-id")).to_have_text(f"{job_id} #{second['index']}")
            expect(page.locator("#item-state")).to_have_text("rejected")
            expect(page.locator("#item-reason")).to_have_text("Rejected: the question is markup, not mathematics")
            page.keyboard.press("k")
            expect(page.locator("#item-id")).to_have_text(f"{job_id} #{first['index']}")
            page.click("#versions summary")
            assert page.evaluate("typeof window.__pwned") == "undefined"
            # the key is kept for this browser session only (sessionStorage), never in localStorage
            assert page.evaluate("sessionStorage.getItem('skillmix.key')") == carol_key
            assert page.evaluate("localStorage.length") == 0
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            page.reload()  # same session: no second question, the queue loads with the kept key
            page.wait_for_selector("#queue li")
            assert page.locator("#key-form").is_hidden() and page.locator("#queue li").count() == 1
        finally:
            browser.close()
    assert errors == [], errors
    if os.environ.get("SKILLMIX_DOCS_SCREENSHOT"):
        shutil.copy(tmp_path / "review.png", Path(__file__).resolve().parents[2] / "docs" / "review.png")

    # both decisions are in the API, with the reviewer's versions
    accepted = _item(api, job_id, first["id"])
    assert accepted["item"]["state"] == "accepted" and accepted["item"]["answer"] == r"\frac{7}{8}"
    assert [(v["version"], v["by"], v["action"]) for v in accepted["history"]] == [
        (1, "system", "created"),
        (2, SETUP, "edit"),
        (3, CAROL, "edit"),
        (4, "llm", "suggestion"),
        (5, CAROL, "accept"),
    ]
    assert accepted["history"][2]["changes"] == {"answer": {"old": first["answer"], "new": r"\frac{7}{8}"}}
    assert accepted["item"]["suggestions"][0]["requested_by"] == CAROL
    rejected = _item(api, job_id, second["id"])
    assert rejected["item"]["state"] == "rejected" and rejected["item"]["problem"] == EVIL_PROBLEM
    last = rejected["history"][-1]
    assert (last["version"], last["by"], last["action"], last["reason"]) == (
        3,
        CAROL,
        "reject",
        "the question is markup, not mathematics",
    )
    assert _list(api, job=job_id, state="needs_review")["data"] == [third]
