"""The console in a real headless browser (Debian's chromium, driven by Playwright) against the
session's server (issue 17, Done-when 1-3).

An SDK client trains a few steps and saves a sampler checkpoint; the browser opens the links the
SDK itself hands out (``get_console_url()``, the checkpoint's console and playground links) with
Tinker's host replaced by the server's ``/console``, signs in with the API key, sees one point
per step on the run's loss plot, opens the checkpoint, samples from it in the playground, and
finds another tenant's run and checkpoint "not found". Every page is screenshotted: into a
temporary directory, or into ``$TINSMITH_CONSOLE_SCREENSHOTS`` (``docs/console`` for the
README's pictures).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL, OTHER_TENANT_KEY
from tests.integration.helpers import datum

pytestmark = [pytest.mark.integration]

TINKER_CONSOLE = "https://tinker.thinkingmachines.ai"
CHROMIUM = "/usr/bin/chromium"
STEPS = 3
# What the probe of this machine found chromium needs in a closed network, as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def shots() -> Iterator[Path]:
    target = os.environ.get("TINSMITH_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        yield Path(target)
        return
    with tempfile.TemporaryDirectory(prefix="tinsmith-console-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), (
        f"{CHROMIUM} is missing: `make install` installs Debian's chromium"
    )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_console_shows_a_run_its_checkpoint_and_samples_from_it(
    server: object, service_client: tinker.ServiceClient, browser: object, shots: Path
) -> None:
    console = server.base_url + "/console"  # type: ignore[attr-defined]

    def local(url: str) -> str:
        assert url.startswith(TINKER_CONSOLE), url
        return console + url[len(TINKER_CONSOLE) :]

    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    batch = [datum([1, 504, 1234, 9921, 42, 17, 301, 2]), datum([1, 77, 88, 99, 2])]
    for _ in range(STEPS):
        tc.forward_backward(batch, "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    saved = tc.save_weights_for_sampler("console").result()

    other = tinker.ServiceClient(base_url=server.base_url, api_key=OTHER_TENANT_KEY)  # type: ignore[attr-defined]
    other_tc = other.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    other_saved = other_tc.save_weights_for_sampler("theirs").result()

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    # The run's link: first the sign-in page, which then comes back to the run.
    page.goto(local(tc.get_console_url()))
    assert "/console/login" in page.url
    page.screenshot(path=str(shots / "login.png"))
    page.fill("input[name=api_key]", "tml-tests")
    page.click("button[type=submit]")
    page.wait_for_selector('svg[data-metric="loss:sum"]')
    assert "/console/training_runs/" in page.url
    points = page.locator('svg[data-metric="loss:sum"] circle.point')
    assert points.count() == STEPS
    page.screenshot(path=str(shots / "training_run.png"), full_page=True)

    page.goto(local(saved.get_console_url()))
    assert page.locator("text=sampler_weights/console").count() > 0
    assert "private" in page.inner_text("main")
    page.screenshot(path=str(shots / "checkpoint.png"), full_page=True)

    page.goto(local(saved.get_playground_url()))
    assert page.input_value("input[name=checkpoint]") == saved.path
    page.fill("textarea[name=prompt]", "What is 2 + 3?")
    page.fill("input[name=max_tokens]", "12")
    page.click("#sample")
    page.wait_for_selector("#results .token", timeout=120_000)
    logprobs = [
        float(v)
        for v in page.locator("#results .token").evaluate_all(
            "els => els.map(e => e.dataset.logprob)"
        )
    ]
    assert logprobs and all(lp <= 0 for lp in logprobs)
    page.screenshot(path=str(shots / "playground.png"), full_page=True)

    page.goto(local(service_client.get_console_url()))
    assert tc.model_id in page.inner_text("main")  # the session lists its training client
    page.screenshot(path=str(shots / "session.png"), full_page=True)
    page.goto(console + "/sessions")
    page.screenshot(path=str(shots / "sessions.png"), full_page=True)
    page.goto(console + "/cluster")
    assert re.search(r"sampler replicas alive", page.inner_text("main"))
    page.screenshot(path=str(shots / "cluster.png"), full_page=True)

    # Another tenant's run and checkpoint do not exist for this one.
    for url in (local(other_tc.get_console_url()), local(other_saved.get_console_url())):
        response = page.goto(url)
        assert response is not None and response.status == 404, url
        assert "does not exist" in page.inner_text("main")
    page.close()
