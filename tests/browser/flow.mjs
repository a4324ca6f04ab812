// The browser test's script (run by tests/it/browser/chromium.rs): three headless
// Chromium sessions, each with its own HOME whose NSS database holds one
// personal development certificate (a clinician, a local authority's duty
// social worker, an auditor), selected by the AutoSelectCertificateForUrls
// policy. The clinician searches a flagged child and sees the flag; the
// notification arrives live in the authority's open inbox, which
// acknowledges it; the auditor sees the access. axe-core runs on every page
// and any serious or critical violation fails the test. Every wait is on an
// event or a condition of the page, never a sleep.
//
// Environment: CPIS_WEB_URL, CPIS_CHROMIUM, CPIS_ED_HOME, CPIS_LA_HOME,
// CPIS_AUDITOR_HOME, CPIS_NHS_NUMBER, CPIS_NHS_SHOWN, optional CPIS_SCREENSHOTS.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import puppeteer from "puppeteer-core";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("CPIS_WEB_URL");
const nhsNumber = env("CPIS_NHS_NUMBER");
const shown = env("CPIS_NHS_SHOWN");
const screenshots = process.env.CPIS_SCREENSHOTS;

async function open(home) {
  const browser = await puppeteer.launch({
    executablePath: env("CPIS_CHROMIUM"),
    headless: true,
    userDataDir: path.join(home, "profile"),
    env: { ...process.env, HOME: home },
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
    defaultViewport: { width: 1100, height: 900 },
  });
  const page = await browser.newPage();
  page.on("pageerror", (error) => console.error(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") console.error(`console error: ${message.text()}`);
  });
  return { browser, page };
}

async function go(page, url) {
  const response = await page.goto(url, { waitUntil: "load" });
  if (!response || response.status() !== 200) {
    throw new Error(`GET ${url}: ${response ? response.status() : "no answer"}`);
  }
}

async function submit(page, selector) {
  const [response] = await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click(selector)]);
  return response;
}

async function check(page, name) {
  if (screenshots) {
    await page.screenshot({ path: path.join(screenshots, `${name}.png`), fullPage: true });
  }
  await page.evaluate(axeSource);
  const results = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] } }),
  );
  for (const violation of results.violations) {
    console.log(`axe ${name}: ${violation.impact} ${violation.id}: ${violation.help} (${violation.nodes.length} nodes)`);
  }
  const blocking = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (blocking.length > 0) {
    throw new Error(`axe found ${blocking.length} serious or critical violations on ${name}: ${blocking.map((v) => v.id).join(", ")}`);
  }
  console.log(`axe ${name}: ${results.passes.length} rules passed, no serious or critical violation`);
}

const text = (page, selector) => page.$eval(selector, (element) => element.textContent.trim());

const sessions = [];
try {
  const la = await open(env("CPIS_LA_HOME"));
  sessions.push(la);
  const ed = await open(env("CPIS_ED_HOME"));
  sessions.push(ed);
  const auditor = await open(env("CPIS_AUDITOR_HOME"));
  sessions.push(auditor);

  // The authority's inbox is open, its live stream connected, and empty.
  await go(la.page, `${base}/inbox`);
  await la.page.waitForSelector('#notifications[data-live="open"]');
  if ((await text(la.page, "#backlog")) !== "0") throw new Error("the inbox starts empty");
  await check(la.page, "inbox-empty");

  // The clinician mistypes the NHS number first: the error summary takes focus.
  await go(ed.page, `${base}/card`);
  await check(ed.page, "card-form");
  await ed.page.type("#nhs_number", "943 476 5918");
  const mistyped = await submit(ed.page, "form.search button[type=submit]");
  if (mistyped.status() !== 400) throw new Error(`a wrong check digit answered ${mistyped.status()}`);
  await ed.page.waitForFunction(() => document.activeElement && document.activeElement.classList.contains("error-summary"));
  await check(ed.page, "card-error");

  // Then searches the flagged child.
  await ed.page.$eval("#nhs_number", (input) => { input.value = ""; });
  await ed.page.type("#nhs_number", nhsNumber);
  await ed.page.select("#care_setting", "EmergencyDepartment");
  const answer = await submit(ed.page, "form.search button[type=submit]");
  if (answer.status() !== 200) throw new Error(`the search answered ${answer.status()}`);
  if (answer.url().includes(nhsNumber)) throw new Error(`the NHS number is in the URL ${answer.url()}`);
  const flag = await text(ed.page, "#cpis-flag h1");
  if (!flag.includes("Child protection information is held")) throw new Error(`no flag: ${flag}`);
  const telephones = await ed.page.$$eval("a.tel", (links) => links.map((link) => link.getAttribute("href")));
  if (telephones.length < 2 || !telephones.every((href) => href.startsWith("tel:"))) {
    throw new Error(`phone numbers are not telephone links: ${telephones}`);
  }
  console.log(`clinician sees: ${flag}`);
  await check(ed.page, "card-flagged");

  // The notification arrives in the other session's inbox without a reload.
  await la.page.waitForFunction(
    (number) => [...document.querySelectorAll("#notifications .notification")].some((row) => row.textContent.includes(number)),
    {},
    shown,
  );
  if ((await text(la.page, "#backlog")) !== "1") throw new Error("the backlog counts the new notification");
  if ((await la.page.$eval("#notifications", (list) => list.getAttribute("data-live-count"))) !== "1") {
    throw new Error("the notification did not come over the live stream");
  }
  console.log("the local authority's inbox received the notification live");
  await check(la.page, "inbox-notified");

  // ... and acknowledges it.
  const acked = await submit(la.page, "#notifications .notification form button[type=submit]");
  if (acked.status() !== 200 || new URL(acked.url()).pathname !== "/inbox") throw new Error(`acknowledging answered ${acked.status()} at ${acked.url()}`);
  if ((await la.page.$$("#notifications .notification")).length !== 0) throw new Error("the acknowledged notification is still listed");
  if ((await text(la.page, "#backlog")) !== "0") throw new Error("the backlog is not 0 after acknowledging");
  console.log("acknowledged");

  // The auditor sees who looked.
  await go(auditor.page, `${base}/audit`);
  await auditor.page.type("#nhs_number", nhsNumber);
  await submit(auditor.page, "form.search button[type=submit]");
  const log = await text(auditor.page, "table.table tbody");
  if (!log.includes("Dr Alex Example (development)")) throw new Error(`the access log misses the search: ${log}`);
  const verified = await text(auditor.page, ".log-status h3");
  if (verified !== "Verified") throw new Error(`the access log's verification status is "${verified}", not "Verified"`);
  await check(auditor.page, "access-log");

  await go(ed.page, `${base}/ops`);
  await check(ed.page, "ops");
  console.log("browser flow passed");
} finally {
  for (const session of sessions) {
    await session.browser.close();
  }
}
