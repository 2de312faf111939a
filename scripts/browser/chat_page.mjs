// Loads baimo's chat page in headless Chromium, sends a message, waits for the streamed answer,
// checks the statistics line and that the stop button is enabled only while streaming, and
// saves a screenshot.
//
//   node scripts/browser/chat_page.mjs http://127.0.0.1:8080 [screenshot.png]
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const fail = async (message) => {
  console.error("FAIL:", message);
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/");
  await page.waitForSelector("#model option", { state: "attached", timeout: 10000 });
  const title = await page.title();
  if (!title.includes("baimo")) await fail(`title ${title}`);
  if (!(await page.isDisabled("#stop"))) await fail("stop enabled before sending");
  await page.fill("#max_tokens", "24");
  await page.fill("#temperature", "0");
  await page.fill("#input", "Hello! 你好，请介绍一下自己。");
  await page.press("#input", "Enter");
  await page.waitForSelector(".msg.user", { timeout: 10000 });
  // The answer streams into the assistant message; the stats line appears when it ends.
  await page.waitForFunction(() => {
    const stats = document.querySelector(".pane .stats");
    return stats && /tok\/s/.test(stats.textContent);
  }, null, { timeout: 30000 });
  const answer = await page.textContent(".msg.assistant .body");
  if (!answer || !answer.trim()) await fail("empty answer");
  if (await page.isDisabled("#send")) await fail("send still disabled after the answer");
  if (errors.length) await fail("page errors: " + errors.join("; "));
  // A second turn keeps the history.
  await page.fill("#input", "And then?");
  await page.press("#input", "Enter");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant").length === 2 &&
    !document.querySelector("#send").disabled, null, { timeout: 30000 });
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`chat page: streamed answers (${answer.trim().length} chars first), two turns, no page errors: ok`);
} catch (e) {
  await fail(String(e));
}
await browser.close();
