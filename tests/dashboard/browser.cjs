// The dashboard in a real browser: headless Chromium (Debian's package) driven by
// puppeteer-core opens /dashboard, pastes the API key, and checks what a person would
// look at: the live stream subscribed, the device table filled, and the live chart's
// values changing between two looks a few seconds apart while devices publish. Then it
// saves a screenshot of the window (after TRIBUTARY_DASHBOARD_LINGER_SECONDS, if set).
//
//   node browser.cjs PUPPETEER_DIR BASE_URL KEY_FILE SCREENSHOT
//
// The key is read from a file (never an argument: process lists are readable). Exits
// non-zero with the reason on the first check that fails.
"use strict";
const fs = require("fs");
const path = require("path");

const [puppeteerDir, baseUrl, keyFile, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: node browser.cjs PUPPETEER_DIR BASE_URL KEY_FILE SCREENSHOT");
  process.exit(2);
}
const puppeteer = require(path.join(puppeteerDir, "node_modules", "puppeteer-core"));
const key = fs.readFileSync(keyFile, "utf8").trim();
const say = (text) => console.log(`[dashboard ${new Date().toISOString().slice(11, 19)}] ${text}`);

async function look(page) {
  return page.evaluate(() => ({
    stream: document.getElementById("stream-state").textContent,
    online: document.getElementById("online").textContent,
    rate: document.getElementById("rate").textContent,
    backlog: document.getElementById("backlog").textContent,
    devices: [...document.querySelectorAll("#devices tr")].filter((row) => !row.querySelector(".empty")).length,
    field: document.getElementById("field").value,
    legend: [...document.querySelectorAll("#legend li")].map((item) => item.textContent),
    chart: document.getElementById("chart").toDataURL(),
  }));
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // Root in a container-less host: Chromium's sandbox needs user namespaces it may not get.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
  });
  const problems = [];
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 1000, deviceScaleFactor: 1 });
    page.on("pageerror", (error) => problems.push(`script error: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console error: ${message.text()}`);
    });
    page.on("requestfailed", (request) => {
      // The live stream is cut when the page closes; anything else failing is a problem.
      if (!request.url().includes("/v1/stream")) {
        problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`);
      }
    });

    say(`opening ${baseUrl}/dashboard`);
    const response = await page.goto(`${baseUrl}/dashboard`, { waitUntil: "load", timeout: 30000 });
    if (!response || response.status() !== 200) throw new Error(`dashboard answered ${response?.status()}`);
    await page.type("#key", key);
    await page.click("#connect");

    say("waiting for the live stream, the device table and the chart");
    await page.waitForFunction(() => document.getElementById("stream-state").textContent === "live", { timeout: 30000 });
    await page.waitForFunction(() => [...document.querySelectorAll("#devices tr")].some((row) => !row.querySelector(".empty")), { timeout: 30000 });
    await page.waitForFunction(() => document.querySelectorAll("#legend li").length > 0, { timeout: 60000 });
    const fields = await page.evaluate(() => [...document.querySelectorAll("#field option")].map((o) => o.value));
    const preferred = fields.find((f) => f === "payload.temperatureC") || fields.find((f) => f.startsWith("payload."));
    if (preferred) await page.select("#field", preferred);

    await new Promise((resolve) => setTimeout(resolve, 2000));
    const first = await look(page);
    say(`first look: stream ${first.stream}, ${first.devices} devices (${first.online} online), ${first.rate} msg/s, ${first.field}: ${first.legend.join(", ")}`);
    await new Promise((resolve) => setTimeout(resolve, 6000));
    const second = await look(page);
    say(`second look: stream ${second.stream}, ${second.devices} devices (${second.online} online), ${second.rate} msg/s, backlog ${second.backlog}, ${second.field}: ${second.legend.join(", ")}`);

    const checks = [
      [first.devices > 0, "the device table lists devices"],
      [Number(first.online) > 0, "devices are shown online"],
      [second.stream === "live", "the live stream is still subscribed"],
      [/^[0-9][0-9,.\u202f\u00a0]*$/.test(second.backlog), `the backlog shows the pipeline queue's depth (${second.backlog})`],
      [second.legend.length > 0, "the chart has series"],
      [JSON.stringify(first.legend) !== JSON.stringify(second.legend), "the chart's latest values changed between the two looks"],
      [first.chart !== second.chart, "the chart was redrawn with new points"],
      [problems.length === 0, `no script, console or request errors (${problems.join("; ")})`],
    ];
    // A longer look for a screenshot that shows a few minutes of the chart (docs).
    const linger = Number(process.env.TRIBUTARY_DASHBOARD_LINGER_SECONDS || 0);
    if (linger > 0) {
      say(`lingering ${linger} s before the screenshot`);
      await new Promise((resolve) => setTimeout(resolve, linger * 1000));
    }
    await page.screenshot({ path: screenshot });
    say(`screenshot: ${screenshot}`);
    const failed = checks.filter(([ok]) => !ok).map(([, what]) => what);
    for (const [ok, what] of checks) say(`${ok ? "ok  " : "FAIL"} ${what}`);
    if (failed.length) throw new Error(`failed: ${failed.join("; ")}`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(`dashboard check failed: ${error.message}`);
  process.exit(1);
});
