"""The dashboard in a real browser: headless Chromium against a real API and worker.

Each main page is also saved as a screenshot under ``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from ulid import ULID

from jobyard.keys import Keys
from jobyard.models import Priority, Run, RunStatus, Trigger
from tests.dashboard.system import ADMIN_TOKEN, System
from tests.helpers import RedisServer, wait_until

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1320, "height": 900}
WAIT_MS = 15_000

# Prints a line, waits for a file the test creates (bounded), then prints to stderr.
GATED = """#!/bin/bash
echo "first line"
for i in $(seq 1 600); do [ -f "$1" ] && break; sleep 0.05; done
echo "second line" >&2
"""
LONG = "#!/bin/bash\necho started\nfor i in $(seq 1 1200); do sleep 0.05; done\n"
FAILS = "#!/bin/bash\necho 'about to fail'\nexit 1\n"
TICKER = "#!/bin/bash\necho tick\nwhile true; do sleep 0.2; done\n"  # a continuous job: the worker ends it


def login(page: Page, token: str) -> None:
    """Log in through the form (from any page: it redirects to the login form first)."""
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Jobs")


@pytest.fixture(scope="module")
def admin(browser: Any, system: System) -> Iterator[Page]:
    """A browser tab logged in as the bootstrap admin."""
    context = browser.new_context(base_url=system.url, viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() of cancel and purge
    login(page, ADMIN_TOKEN)
    yield page
    context.close()


def test_login_refuses_a_bad_token_and_sets_a_locked_down_cookie(
    browser: Any, system: System, artifacts: Path
) -> None:
    context = browser.new_context(base_url=system.url, viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto("/cluster")
        expect(page).to_have_url(re.compile(r"/login\?next=%2Fcluster$"))
        page.screenshot(path=str(artifacts / "dashboard-login.png"), full_page=True)

        page.fill("input[name=token]", "jy_not-a-real-token-at-all-0000000000")
        page.click("button[type=submit]")
        expect(page.locator(".flash-error")).to_contain_text("not valid")

        page.fill("input[name=token]", ADMIN_TOKEN)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{system.url}/cluster")  # back where the user was going
        cookie = next(c for c in context.cookies() if c["name"] == "jobyard_session")
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/"
        assert cookie["secure"] is False  # plain http on loopback; https sets it

        page.click("text=Log out")
        expect(page).to_have_url(re.compile(r"/login$"))
        page.goto("/")
        expect(page).to_have_url(re.compile(r"/login"))
    finally:
        context.close()


def test_deploy_from_the_page_run_it_and_watch_the_log_live(
    admin: Page, system: System, artifacts: Path, tmp_path: Path
) -> None:
    # given: a script on disk, deployed through the page's upload form
    script = tmp_path / "greet.sh"
    script.write_text(GATED)
    gate = tmp_path / "gate"
    admin.goto("/")
    if admin.locator("#deploy-panel").is_hidden():
        admin.click("text=Deploy a job")
    admin.set_input_files("input[name=package]", str(script))
    admin.click("#deploy-panel button[type=submit]")
    expect(admin).to_have_url(f"{system.url}/jobs/greet")
    expect(admin.locator(".flash-ok")).to_contain_text("Deployed job greet")

    # when: it is run with arguments (one of them markup) at high priority
    admin.fill("input[name=arguments]", f"{gate} '<b>bold</b>'")
    admin.select_option("select[name=priority]", "high")
    admin.click("#run-now")
    expect(admin).to_have_url(re.compile(r"/runs/[0-9A-Z]{26}$"))
    expect(admin.locator("#log")).to_contain_text("first line")
    admin.evaluate("window.__not_reloaded = true")
    gate.touch()

    # then: the stderr line arrives without a reload, told apart from stdout
    expect(admin.locator("#log .line.s-err")).to_contain_text("second line")
    expect(admin.locator("#log .line.s-out")).to_contain_text("first line")
    expect(admin.locator(".page-head [data-field=status]")).to_have_text("succeeded")
    assert admin.evaluate("window.__not_reloaded") is True
    expect(admin.locator("form[data-when=active]")).to_be_hidden()
    expect(admin.locator("form[data-when=terminal]")).to_be_visible()
    # user data stays text: the argument is shown as typed, not rendered as markup
    expect(admin.locator("code.arg").nth(1)).to_have_text("<b>bold</b>")
    assert admin.locator(".facts b").count() == 0
    admin.screenshot(path=str(artifacts / "dashboard-run.png"), full_page=True)

    admin.click("#toggle-output")
    expect(admin.locator("#log-panel")).to_be_hidden()
    admin.click("#toggle-output")
    expect(admin.locator("#log-panel")).to_be_visible()
    admin.select_option("#log-filter", "err")
    expect(admin.locator("#log .line.s-out").first).to_be_hidden()
    expect(admin.locator("#log .line.s-err")).to_be_visible()

    with admin.expect_download() as download:
        admin.click("text=Download")
    text = Path(download.value.path()).read_text()
    assert "INFO first line" in text and "ERR  second line" in text

    first = admin.url.rsplit("/", 1)[1]
    admin.click("form[data-when=terminal] button")  # Retry: a new run with the same arguments
    expect(admin).not_to_have_url(re.compile(f"/runs/{first}$"))
    expect(admin.locator(".facts")).to_contain_text(f"retry of {first}")
    expect(admin.locator(".page-head [data-field=status]")).to_have_text("succeeded")  # the gate is open

    admin.click(".crumbs a[href='/jobs/greet']")
    expect(admin.locator("#history-body tr")).to_have_count(2)
    expect(admin.locator("#history-body tr").first).to_contain_text("retry")
    admin.screenshot(path=str(artifacts / "dashboard-job.png"), full_page=True)
    admin.goto("/")
    expect(admin.locator("tr[data-job=greet] [data-cell=status]")).to_have_text("succeeded")


def test_the_jobs_and_cluster_pages_update_without_a_reload(
    admin: Page, system: System, tmp_path: Path
) -> None:
    system.deploy("pulse", GATED)
    gate = tmp_path / "gate"
    admin.goto("/")
    admin.evaluate("window.__not_reloaded = true")
    run = system.enqueue("pulse", arguments=[str(gate)])
    status = admin.locator("tr[data-job=pulse] [data-cell=status]")
    expect(status).to_have_text("running")
    gate.touch()
    expect(status).to_have_text("succeeded")
    expect(admin.locator("tr[data-job=pulse] [data-cell=last_result]")).to_contain_text("exit 0")
    assert admin.evaluate("window.__not_reloaded") is True
    assert system.run(run["id"])["status"] == "succeeded"

    admin.goto("/cluster")
    admin.evaluate("window.__not_reloaded = true")
    delayed = admin.locator("[data-queue=delayed]")
    expect(delayed).to_have_text("0")
    later = system.enqueue("pulse", arguments=[str(gate)], delay_s=600)
    expect(delayed).to_have_text("1")
    assert admin.evaluate("window.__not_reloaded") is True
    assert system.http.post(f"/api/runs/{later['id']}/cancel").status_code == 200


def _bulk_history(redis_server: RedisServer, job: str, count: int) -> list[str]:
    """Write ``count`` finished runs of ``job`` straight into Redis; their ids, newest first."""
    client = redis_server.client()
    keys = Keys()
    start = time.time() - count - 60
    ids = []
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        ts = start + i
        run_id = str(ULID.from_timestamp(ts))
        status = RunStatus.FAILED if i % 7 == 0 else RunStatus.SUCCEEDED
        run = Run(
            id=run_id,
            job=job,
            status=status,
            trigger=Trigger.SCHEDULE if i % 3 else Trigger.API,
            priority=Priority.NORMAL,
            attempt=1,
            enqueued_at=ts,
            started_at=ts + 0.05,
            ended_at=ts + 0.05 + (i % 90),
            exit_code=1 if status == RunStatus.FAILED else 0,
        )
        pipe.hset(keys.run(run_id), mapping=run.to_hash())
        pipe.zadd(keys.job_runs(job), {run_id: int(ts * 1000)})
        ids.append(run_id)
    pipe.execute()
    client.close()
    return ids[::-1]


def test_history_pages_through_ten_thousand_runs(
    admin: Page, system: System, redis_server: RedisServer, artifacts: Path
) -> None:
    system.deploy("bulk", "#!/bin/bash\necho bulk\n", {"history_size": 10_000, "schedule": "0 */15 * * * *"})
    ids = _bulk_history(redis_server, "bulk", 10_000)

    # Server side: a page of history costs the same at the top and 5,000 runs deep.
    client = system.session(ADMIN_TOKEN)
    try:
        timings = []
        for url in ("/jobs/bulk", f"/jobs/bulk?before={ids[5000]}", "/live/jobs/bulk"):
            started = time.perf_counter()
            resp = client.get(url)
            timings.append(time.perf_counter() - started)
            assert resp.status_code == 200, resp.text
        print(f"history with 10,000 runs: page times {[f'{t * 1000:.0f} ms' for t in timings]}")
        assert max(timings) < 1.0, timings
        newer = client.get(f"/jobs/bulk?after={ids[5050]}").text  # the page before 5,050: 5,000-5,049
        assert newer.index(f'data-run="{ids[5000]}"') < newer.index(f'data-run="{ids[5049]}"')
        assert f'data-run="{ids[5050]}"' not in newer and f"?before={ids[5049]}" in newer
    finally:
        client.close()

    admin.goto("/jobs/bulk")
    expect(admin.locator("#history-body tr")).to_have_count(50)
    expect(admin.locator("#history-total")).to_contain_text("runs 1\u201350 of 10000")
    expect(admin.locator("#history-body tr").first).to_have_attribute("data-run", ids[0])
    admin.click("a[rel=next]")
    expect(admin.locator("#history-total")).to_contain_text("runs 51\u2013100 of 10000")
    expect(admin.locator("#history-body tr").first).to_have_attribute("data-run", ids[50])
    admin.click("a[rel=next]")
    expect(admin.locator("#history-body tr").first).to_have_attribute("data-run", ids[100])
    admin.click("a[rel=prev]")
    expect(admin.locator("#history-total")).to_contain_text("runs 51\u2013100 of 10000")
    expect(admin.locator("#history-body tr").first).to_have_attribute("data-run", ids[50])
    admin.screenshot(path=str(artifacts / "dashboard-history.png"))


def test_cancel_a_long_run_from_its_page(admin: Page, system: System) -> None:
    system.deploy("long", LONG)
    run = system.enqueue("long")
    system.wait_status(run["id"], {"running"})
    admin.goto(f"/runs/{run['id']}")
    expect(admin.locator("#log")).to_contain_text("started")
    admin.click("form[data-when=active] button")
    expect(admin.locator(".flash-ok")).to_contain_text(run["id"])
    expect(admin.locator(".page-head [data-field=status]")).to_have_text("cancelled")
    expect(admin.locator("form[data-when=terminal]")).to_be_visible()
    assert system.run(run["id"])["status"] == "cancelled"


def test_replay_and_purge_dead_letters_from_the_cluster_page(
    admin: Page, system: System, artifacts: Path
) -> None:
    # given: a job that exits 1 with no retries left is dead-lettered
    system.deploy("fails", FAILS, {"max_retries": 0})
    dead = system.enqueue("fails")["id"]
    system.wait_status(dead, {"failed"})
    wait_until(lambda: _dead_letters(system) >= {dead}, what="the dead letter")

    admin.goto("/cluster")
    expect(admin.locator("[data-queue=high]")).to_have_text("0")
    expect(admin.locator("#workers-body")).to_contain_text("dash-worker-1")
    row = admin.locator(f"tr[data-run='{dead}']")
    expect(row).to_contain_text("fails")
    admin.screenshot(path=str(artifacts / "dashboard-cluster.png"), full_page=True)

    # when: it is replayed, then: a new run of it, and the dead letter is gone
    row.locator("text=Replay").click()
    expect(admin).not_to_have_url(re.compile(f"/runs/{dead}$"))
    expect(admin).to_have_url(re.compile(r"/runs/[0-9A-Z]{26}$"))
    expect(admin.locator(".facts")).to_contain_text(f"replay of {dead}")
    replay = admin.url.rsplit("/", 1)[1]
    admin.goto("/cluster")
    expect(admin.locator(f"tr[data-run='{dead}']")).to_have_count(0)

    # the replay fails the same way; purging it takes it off the list without a new run
    wait_until(lambda: replay in _dead_letters(system), what="the replay to be dead-lettered")
    admin.goto("/cluster")
    admin.locator(f"tr[data-run='{replay}']").locator("text=Purge").click()
    expect(admin.locator(".flash-ok")).to_contain_text(f"Purged dead letter {replay}")
    expect(admin.locator(f"tr[data-run='{replay}']")).to_have_count(0)
    assert replay not in _dead_letters(system)


def _dead_letters(system: System) -> set[str]:
    return {d["run_id"] for d in system.http.get("/api/deadletters").json()["deadletters"]}


def test_a_viewer_sees_no_buttons_and_its_forged_posts_are_refused(browser: Any, system: System) -> None:
    system.deploy("viewed", "#!/bin/bash\necho viewed\n")
    done = system.enqueue("viewed")["id"]
    system.wait_status(done, {"succeeded"})
    secret, token_id = system.token("viewer")
    context = browser.new_context(base_url=system.url, viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        login(page, secret)
        expect(page.locator(".role")).to_have_text("viewer")
        assert page.locator("text=Deploy a job").count() == 0
        page.goto("/jobs/viewed")
        expect(page.locator("h1")).to_contain_text("viewed")
        assert page.locator("#run-now").count() == 0
        assert page.locator("textarea[name=settings]").count() == 0
        assert page.locator("form[action$='/delete']").count() == 0
        page.goto(f"/runs/{done}")
        assert page.locator("form[data-when]").count() == 0  # neither cancel nor retry

        # a post it could not make from the page, with its own valid session and CSRF token
        csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
        resp = page.request.post("/jobs/viewed/runs", form={"csrf_token": csrf or "", "arguments": "x"})
        assert resp.status == 403
        resp = page.request.post(f"/runs/{done}/retry", form={"csrf_token": csrf or ""})
        assert resp.status == 403
        assert len(system.http.get("/api/jobs/viewed/runs").json()["runs"]) == 1

        # revoking its token ends the session at the next request
        assert system.http.delete(f"/api/tokens/{token_id}").status_code == 200
        page.goto("/")
        expect(page).to_have_url(re.compile(r"/login"))
    finally:
        context.close()


def test_posts_without_the_csrf_token_or_from_another_site_are_refused(admin: Page, system: System) -> None:
    system.deploy("guarded", "#!/bin/bash\necho guarded\n")
    admin.goto("/jobs/guarded")
    csrf = admin.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    assert admin.request.post("/jobs/guarded/runs", form={"arguments": "x"}).status == 403
    assert (
        admin.request.post("/jobs/guarded/runs", form={"csrf_token": "forged", "arguments": "x"}).status
        == 403
    )
    other_site = {"Origin": "https://evil.example"}
    resp = admin.request.post("/jobs/guarded/runs", form={"csrf_token": csrf}, headers=other_site)
    assert resp.status == 403
    assert system.http.get("/api/jobs/guarded/runs").json()["runs"] == []
    # and with the token, from the page's own origin, the same post runs the job
    resp = admin.request.post("/jobs/guarded/runs", form={"csrf_token": csrf}, max_redirects=0)
    assert resp.status == 303
    assert len(system.http.get("/api/jobs/guarded/runs").json()["runs"]) == 1


def test_start_and_stop_a_continuous_job_from_its_page(admin: Page, system: System, artifacts: Path) -> None:
    system.deploy("ticker", TICKER, {"type": "continuous", "stopping_wait_time": 1})
    admin.goto("/jobs/ticker")
    assert admin.locator("#run-now").count() == 0  # kept running, not run on demand
    instances = admin.locator("#instances-body")
    expect(instances).to_contain_text("dash-worker-1", timeout=20_000)  # appears without a reload
    expect(instances.locator(".badge")).to_have_text("running")

    admin.click("form[action$='/stop'] button")
    expect(admin.locator(".flash-ok")).to_contain_text("Stopping ticker")
    expect(admin.locator("#job-status")).to_have_text("stopped")
    expect(instances.locator(".badge")).to_have_text("stopped", timeout=20_000)

    admin.click("form[action$='/start'] button")
    expect(admin.locator(".flash-ok")).to_contain_text("Started ticker")
    expect(instances.locator(".badge")).to_have_text("running", timeout=20_000)
    expect(admin.locator("#history-body")).to_contain_text("continuous")
    admin.screenshot(path=str(artifacts / "dashboard-continuous.png"), full_page=True)
    # leave the worker quiet for the rest of the module
    assert system.http.post("/api/jobs/ticker/stop").status_code == 200


def test_the_jobs_page_shows_schedules_in_cron_and_in_words(
    admin: Page, system: System, artifacts: Path
) -> None:
    system.deploy("nightly", "#!/bin/bash\necho nightly\n", {"schedule": "0 30 2 * * *"})
    admin.goto("/")
    row = admin.locator("tr[data-job=nightly]")
    expect(row).to_contain_text("0 30 2 * * *")
    expect(row).to_contain_text("At 02:30")
    expect(row.locator("[data-cell=next_fire]")).to_contain_text("in ")
    expect(row.locator("[data-cell=status]")).to_have_text("never run")
    expect(admin.locator("tr[data-job=fails] [data-cell=status]")).to_have_text("failed")
    expect(admin.locator("tr[data-job=long] [data-cell=last_result]")).to_contain_text("cancelled")
    admin.screenshot(path=str(artifacts / "dashboard-jobs.png"), full_page=True)

    admin.click("a[href='/jobs/nightly']")
    admin.click("text=Pause schedule")
    expect(admin.locator(".flash-ok")).to_contain_text("Paused the schedule of nightly")
    assert system.http.get("/api/jobs/nightly").json()["paused"] is True
    admin.goto("/")
    expect(row.locator("[data-cell=next_fire]")).to_have_text("paused")
    admin.click("a[href='/jobs/nightly']")
    admin.click("text=Resume schedule")
    expect(admin.locator(".flash-ok")).to_contain_text("Resumed the schedule of nightly")
    assert system.http.get("/api/jobs/nightly").json()["paused"] is False
