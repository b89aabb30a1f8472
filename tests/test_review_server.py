"""The review page (`distill review NAME --serve`): its API, its files, and a real headless browser.

The run under review is made by the critique stage with the scripted teacher at the seam (no model,
no network). The API tests speak to the Starlette app in-process (TestClient) and, for the CLI, to
the real server over HTTP; the browser test drives Debian's chromium through selenium and
chromedriver, and is skipped only where no chromium is installed. With DISTILL_SCREENSHOTS=DIR set,
it saves screenshots of the page there.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from distill.evaluation.review import REVIEWED, export, import_decisions
from distill.evaluation.review_data import DECISIONS_FILE, word_diff
from distill.evaluation.review_server import TOKEN_HEADER, ReviewApp, ReviewServer
from distill.stages.round import RunConfig, critique_answers
from fakes import ScriptedTeacher, critique_reply, is_judge, judge_reply, quoted_answer

SCRIPT = "<script>document.title='pwned'</script>"
PROMPTS = {"p0": ("What is the capital of France?", "It is wrong, maybe Lyon."),
           "p1": ("Name a colour.", f"The wrong colour is {SCRIPT} blue."),
           "p2": ("Say hello.", "wrong hello"),
           "p3": ("Add 2 and 2.", "It is wrong: 5."),
           "p4": ("Name a fruit.", "A wrong apple."),
           "p5": ("Name a dog.", "A dog.")}  # the revision changes nothing: rejected as "unchanged"
SHOTS = os.environ.get("DISTILL_SCREENSHOTS")  # read at import: the suite's fixtures clear DISTILL_* variables


def script(request) -> str:
    if is_judge(request):
        return judge_reply("A" if "revised" in quoted_answer(request, "A") else "B")
    return critique_reply(quoted_answer(request).replace("wrong", "revised"), critique="The answer says wrong things.",
                          issues=("it is wrong", "too short"))


def make_run(runs_dir: Path, name: str = "r") -> Path:
    answers = [{"id": f"a-{pid}", "prompt_id": pid, "sample": 0, "answer": answer,
                "messages": [{"role": "user", "content": prompt}]} for pid, (prompt, answer) in PROMPTS.items()]
    config = RunConfig(name=name, runs_dir=runs_dir, stages=("facts",))
    critique_answers(config, answers, teacher=ScriptedTeacher(script))
    return config.run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "runs")


def sft_ids(run: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (run / "sft.jsonl").read_text().splitlines()]


@pytest.fixture
def client(run_dir: Path):
    from starlette.testclient import TestClient

    app = ReviewApp(run_dir, token="t0ken-for-tests")
    with TestClient(app.asgi()) as c:
        c.token = app.token
        yield c


def post(client, body: dict, token: str | None = "default"):
    headers = {TOKEN_HEADER: client.token if token == "default" else token} if token else {}
    return client.post("/api/decision", content=json.dumps(body), headers=headers)


def test_the_run_under_review_has_training_and_rejected_rows(run_dir: Path) -> None:
    assert len(sft_ids(run_dir)) == 5
    assert [json.loads(r)["filter"] for r in (run_dir / "rejected.jsonl").read_text().splitlines()] == ["unchanged"]


def test_every_request_needs_the_token_and_a_post_takes_it_only_from_the_header(client, run_dir: Path) -> None:
    for path in ("/", "/review.js", "/review.css", "/api/rows", "/report.html"):
        assert client.get(path).status_code == 403, path
        assert client.get(path, params={"token": "wrong"}).status_code == 403, path
    assert client.get("/", params={"token": client.token}).status_code == 200
    body = {"id": sft_ids(run_dir)[0], "decision": "accept"}
    assert post(client, body, token=None).status_code == 403
    assert post(client, body, token="wrong").status_code == 403
    in_url = client.post(f"/api/decision?token={client.token}", content=json.dumps(body))
    assert in_url.status_code == 403  # a cross-site form can put the token in a URL, never in a header
    assert not (run_dir / REVIEWED).exists() and not (run_dir / DECISIONS_FILE).exists()
    assert post(client, body).status_code == 200 and (run_dir / REVIEWED).exists()


def test_the_page_and_its_files_come_from_the_package_with_a_strict_policy(client) -> None:
    page = client.get("/", params={"token": client.token})
    assert f'src="review.js?token={client.token}"' in page.text and "http" not in page.text.split("<body>")[0]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    script_file = client.get("/review.js", params={"token": client.token})
    assert script_file.headers["content-type"].startswith("text/javascript") and "textContent" in script_file.text
    assert "innerHTML" not in script_file.text and "insertAdjacentHTML" not in script_file.text
    assert client.get("/review.css", params={"token": client.token}).headers["content-type"].startswith("text/css")


def test_rows_carry_the_critique_diff_checks_and_verdicts_and_a_script_answer_as_data(client) -> None:
    data = client.get("/api/rows", params={"token": client.token}).json()
    rows = {r["prompt"]: r for r in data["rows"]}
    colour = rows["Name a colour."]
    assert colour["original"] == PROMPTS["p1"][1] and SCRIPT in colour["revision"]  # the text itself, as data
    assert colour["critiques"] == [{"principle": "facts", "critique": "The answer says wrong things.",
                                    "issues": ["it is wrong", "too short"], "verdict": "needs_revision"}]
    assert colour["diff"][:3] == [["eq", "The "], ["del", "wrong"], ["ins", "revised"]]
    assert colour["judge"] == ["revision", "revision"] and colour["check"] == "none"
    [rejected] = data["rejected"]
    assert rejected["filter"] == "unchanged" and rejected["prompt"] == "Name a dog." and rejected["reason"]
    assert data["decisions"] == {} and data["rounds"] == [""]


def test_the_word_diff_gives_back_both_texts() -> None:
    original, revision = "The  cat sat\non the mat.", "The dog sat\non a mat, quietly."
    runs = word_diff(original, revision)
    assert "".join(t for op, t in runs if op != "ins") == original
    assert "".join(t for op, t in runs if op != "del") == revision
    assert ["del", "the"] in runs and ["ins", "a"] in runs  # word by word, not character by character
    assert ["del", "  cat"] in runs and ["ins", " dog"] in runs  # changed spacing shows with its word


def test_decisions_write_the_same_file_the_csv_import_writes(client, run_dir: Path, tmp_path: Path) -> None:
    ids = sft_ids(run_dir)
    decisions = [(ids[3], "reject", "", ""), (ids[0], "accept", "", ""),
                 (ids[2], "edit", "  An edited hello.  ", "greeting fixed"), (ids[1], "accept", "", "")]
    for row_id, decision, edited, note in decisions:
        assert post(client, {"id": row_id, "decision": decision, "edited": edited, "note": note}).status_code == 200
    by_page = (run_dir / REVIEWED).read_bytes()
    twin = make_run(tmp_path / "twin")  # the same run, reviewed by CSV instead
    sheet = tmp_path / "review.csv"
    export(twin, sheet)
    rows = list(csv.DictReader(sheet.open(encoding="utf-8", newline="")))
    for row_id, decision, edited, note in decisions:
        row = next(r for r in rows if r["id"] == row_id)
        row["decision"], row["edited"], row["note"] = decision, edited, note
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import_decisions(twin, sheet)
    assert by_page == (twin / REVIEWED).read_bytes()
    reviewed = [json.loads(line) for line in by_page.decode().splitlines()]
    assert [r["id"] for r in reviewed] == [ids[0], ids[1], ids[2]]  # sft order; the reject and undecided left out
    assert reviewed[2]["completion"][0]["content"] == "An edited hello."


def test_a_new_server_resumes_every_decision_rejects_included(client, run_dir: Path) -> None:
    ids = sft_ids(run_dir)
    post(client, {"id": ids[0], "decision": "reject"})
    post(client, {"id": ids[1], "decision": "edit", "edited": "new text", "note": "n"})
    post(client, {"id": ids[2], "decision": "accept"})
    post(client, {"id": ids[2], "decision": None})  # cleared again: undecided
    from starlette.testclient import TestClient

    again = ReviewApp(run_dir)
    with TestClient(again.asgi()) as c:
        decisions = c.get("/api/rows", params={"token": again.token}).json()["decisions"]
    assert decisions == {ids[0]: {"decision": "reject", "edited": "", "note": ""},
                         ids[1]: {"decision": "edit", "edited": "new text", "note": "n"}}


def test_a_bad_decision_is_refused_and_writes_nothing(client, run_dir: Path) -> None:
    ids = sft_ids(run_dir)
    for body in ({"id": ids[0], "decision": "maybe"}, {"id": ids[0], "decision": "edit", "edited": "  "},
                 {"id": "s-unknown", "decision": "accept"}, {"decision": "accept"}):
        answer = post(client, body)
        assert answer.status_code == 400, body
    assert "write accept, reject or edit" in post(client, {"id": ids[0], "decision": "maybe"}).text
    assert client.post("/api/decision", content=b"{not json", headers={TOKEN_HEADER: client.token}).status_code == 400
    assert not (run_dir / REVIEWED).exists() and not (run_dir / DECISIONS_FILE).exists()


def test_a_csv_imported_after_the_page_wins_and_the_page_keeps_its_rejects(client, run_dir: Path,
                                                                            tmp_path: Path) -> None:
    ids = sft_ids(run_dir)
    post(client, {"id": ids[0], "decision": "reject"})
    post(client, {"id": ids[1], "decision": "accept"})
    sheet = tmp_path / "r.csv"
    sheet.write_text(f"id,decision,edited\n{ids[2]},edit,from the sheet\n{ids[1]},reject,\n", encoding="utf-8")
    import_decisions(run_dir, sheet)
    from starlette.testclient import TestClient

    again = ReviewApp(run_dir)
    with TestClient(again.asgi()) as c:
        decisions = c.get("/api/rows", params={"token": again.token}).json()["decisions"]
    assert decisions == {ids[0]: {"decision": "reject", "edited": "", "note": ""},
                         ids[2]: {"decision": "edit", "edited": "from the sheet", "note": ""}}


def test_a_multi_round_run_serves_each_round_and_its_report_links_to_them(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    root = tmp_path / "runs" / "multi"
    for k in (1, 2):
        make_run(root, f"round-{k}")
    state = {"name": "multi", "rounds": [{"round": k, "decision": {"promote": k == 1, "reasons": ["r"]}} for k in (1, 2)]}
    (root / "rounds.json").write_text(json.dumps(state), encoding="utf-8")
    app = ReviewApp(root, token="tok")
    with TestClient(app.asgi()) as c:
        assert c.get("/api/rows", params={"token": "tok"}).json()["rounds"] == ["1", "2"]
        second = c.get("/api/rows", params={"token": "tok", "round": "2"}).json()
        assert second["round"] == "2" and len(second["rows"]) == 5
        assert post_round(c, "2", second["rows"][0]["id"]).status_code == 200
        assert c.get("/api/rows", params={"token": "tok", "round": "9"}).status_code == 400
        report = c.get("/report.html", params={"token": "tok"})
    assert (root / "round-2" / REVIEWED).exists() and not (root / "round-1" / REVIEWED).exists()
    assert '<a href="./?token=tok&amp;round=1">round 1</a>' in report.text
    assert '<a href="./?token=tok&amp;round=2">round 2</a>' in report.text
    assert "unsafe-inline" in report.headers["content-security-policy"]  # the report's own inline style only


def post_round(client, label: str, row_id: str):
    return client.post("/api/decision", content=json.dumps({"round": label, "id": row_id, "decision": "accept"}),
                       headers={TOKEN_HEADER: "tok"})


def test_the_cli_serves_on_localhost_prints_the_url_and_stops_on_ctrl_c(run_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "distill", "review", str(run_dir), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # Ctrl-C as in a terminal, even where this test runs as a background job
                            # (which starts with SIGINT ignored, and a child inherits that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and "review.js" in page.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.split("?")[0] + "api/rows", timeout=10)
        assert refused.value.code == 403
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


# ---------------------------------------------------------------- the page in a real browser

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("chromium is installed but chromedriver is not: install it (Debian: apt-get install chromium-driver)")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


@pytest.mark.browser
@pytest.mark.timeout(180)
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (Debian: apt-get install chromium chromium-driver)")
def test_a_reviewer_decides_in_the_browser_and_a_reload_keeps_every_decision(browser, run_dir: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ids = sft_ids(run_dir)
    wait = WebDriverWait(browser, 20)
    text = lambda css: browser.find_element(By.CSS_SELECTOR, css).text  # noqa: E731
    keys = lambda *k: ActionChains(browser).send_keys(*k).perform()  # noqa: E731

    def decided(row_id: str, decision: str) -> None:  # read in the page: the list is redrawn on every move
        wait.until(lambda d: d.execute_script(
            "const li = document.querySelector(`#list li[data-id='${arguments[0]}']`);"
            "return li && li.dataset.decision;", row_id) == decision)

    with ReviewServer(run_dir) as server:
        browser.get(server.url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#list li")) == 5)
        assert text("#progress") == "0 of 5 reviewed"
        assert text("#prompt") == PROMPTS["p0"][0] and text("#original") == PROMPTS["p0"][1]
        assert "The answer says wrong things." in text("#critiques") and "too short" in text("#critiques")
        assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#diff del")] == ["wrong,"]
        assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#diff ins")] == ["revised,"]
        assert "revision shown first" in text("#checks") and "revision shown second" in text("#checks")
        shot(browser, "01-first-row")

        keys("a")  # accept p0; the page moves on to p1, whose answer holds a <script>
        decided(ids[0], "accept")
        wait.until(lambda d: d.find_element(By.ID, "prompt").text == PROMPTS["p1"][0])
        assert text("#original") == PROMPTS["p1"][1]  # shown as text ...
        assert browser.find_elements(By.CSS_SELECTOR, "#detail script, #list script") == []  # ... never as markup
        assert browser.title == "distill review"  # the script did not run
        shot(browser, "02-script-shown-as-text")
        keys("a")
        decided(ids[1], "accept")

        keys("e")  # edit p2: the editor opens prefilled with the revision
        editor = wait.until(lambda d: d.find_element(By.ID, "editor") if d.find_element(By.ID, "editor").is_displayed()
                            else False)
        assert editor.get_attribute("value") == "revised hello"
        editor.clear()
        editor.send_keys("Hello there, reviewer.")
        browser.find_element(By.ID, "note").send_keys("friendlier")
        shot(browser, "03-editing")
        browser.find_element(By.ID, "note").send_keys(Keys.CONTROL, Keys.ENTER)
        decided(ids[2], "edit")

        keys("k", "j")  # back and forth with the keyboard, then reject p3
        wait.until(lambda d: d.find_element(By.ID, "prompt").text == PROMPTS["p3"][0])
        keys("r")
        decided(ids[3], "reject")
        wait.until(lambda d: d.find_element(By.ID, "progress").text == "4 of 5 reviewed")
        shot(browser, "04-after-four-decisions")

        browser.refresh()  # a reload resumes: every decision is kept, the page opens where the reviewer was
        wait.until(lambda d: d.find_element(By.ID, "progress").text == "4 of 5 reviewed")
        for row_id, decision in zip(ids, ("accept", "accept", "edit", "reject", "undecided")):
            decided(row_id, decision)
        assert text("#prompt") == PROMPTS["p4"][0]
        shot(browser, "05-after-reload")

        browser.find_element(By.ID, "show-rejected").click()
        wait.until(lambda d: d.find_element(By.ID, "reason").text.startswith("unchanged: "))
        assert text("#prompt") == PROMPTS["p5"][0]
        shot(browser, "06-rejected-rows")

        browser.get(server.url.split("?")[0] + "api/rows")  # no token
        assert "403" in browser.find_element(By.TAG_NAME, "body").text

    reviewed = [json.loads(line) for line in (run_dir / REVIEWED).read_text().splitlines()]
    assert [(r["id"], r["meta"]["review"]) for r in reviewed] == [(ids[0], "accept"), (ids[1], "accept"),
                                                                  (ids[2], "edit")]
    assert reviewed[2]["completion"][0]["content"] == "Hello there, reviewer."
    assert reviewed[2]["meta"]["review_note"] == "friendlier"
    assert reviewed[1]["completion"][0]["content"] == f"The revised colour is {SCRIPT} blue."
