// Replay of rejected rows from the console, in a real browser (Debian's
// chromium, headless, driven by playwright-core). Run by tests/serve.rs
// against a live `engine serve` whose pipeline PIPELINE is the fixed
// version of one that rejected ONE_OF rows by rule one_of:
//   CONSOLE_URL, API_TOKEN, OUT_DIR, PIPELINE, ONE_OF.
// Prints one line per check; exits 1 at the first failure.
import { check, env, fmt, launch } from "./lib.mjs";

const url = env("CONSOLE_URL");
const out = env("OUT_DIR");
const p = env("PIPELINE");
const oneOf = Number(env("ONE_OF"));

const browser = await launch();
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });

  // The rejects, filtered by rule.
  await page.goto(`${url}#/rejects/${p}`);
  await page.waitForSelector("table.reject-counts tbody tr");
  await page.selectOption("#rule", "one_of");
  await page.waitForFunction(() => location.hash.includes("rule=one_of"));
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("table.rejects tbody tr")];
    return rows.length > 0 && rows.every((t) => t.dataset.rule === "one_of");
  });
  const matching = await page.textContent("#reject-matching");
  check(matching.startsWith(`${fmt(oneOf)} matching`), `filtering by rule one_of: "${matching}"`);
  const label = await page.textContent("#replay");
  check(label.includes(`Replay ${fmt(oneOf)} rows`) && label.includes("rule=one_of"), `the replay button: "${label}"`);

  // Without the token the replay is refused.
  await page.click("#replay");
  await page.waitForSelector("#notice:not([hidden])");
  const refused = await page.textContent("#notice");
  check(/Replay refused \(401\)/.test(refused), `replay without the token: "${refused}"`);
  check((await page.evaluate(() => location.hash)).startsWith("#/rejects/"), "and nothing started");
  await page.screenshot({ path: `${out}/rejects.png`, fullPage: true });

  // With it, the replay runs, live.
  await page.fill("#token", env("API_TOKEN"));
  await page.click("#token-form button");
  await page.click("#replay");
  await page.waitForFunction(() => location.hash.startsWith("#/runs/"));
  const runId = decodeURIComponent((await page.evaluate(() => location.hash)).slice("#/runs/".length));
  check(runId.length > 0, `the replay started as run ${runId}`);
  await page.waitForFunction(() => document.querySelector("#run-outcome")?.textContent.trim() === "completed", null, { timeout: 60_000 });
  check(true, "the replay run completed");
  const trigger = await page.textContent(".figures div:nth-child(4) b");
  check(trigger === "replay", `its trigger: ${trigger}`);
  await page.waitForSelector("#checkpoint-events li", { timeout: 15_000 });
  const commits = await page.$$eval("#checkpoint-events li", (l) => l.map((x) => x.textContent));
  check(commits.length >= 1 && /^epoch \d+ committed/.test(commits[0]), `checkpoints listed as they committed: ${commits.length}, "${commits[0]}"`);
  await page.screenshot({ path: `${out}/replay-run.png`, fullPage: true });

  // Back on the rejects: the rows are marked, the replay is listed, and
  // they are not offered again.
  await page.goto(`${url}#/rejects/${p}?rule=one_of&replayed=true`);
  await page.waitForFunction(() => location.hash.includes("replayed=true") && document.querySelector("#reject-matching"));
  await page.waitForSelector("table.rejects tbody tr");
  const taken = await page.textContent("#reject-matching");
  check(taken.startsWith(`${fmt(oneOf)} matching`), `rows replayed: "${taken}"`);
  const statuses = await page.$$eval("table.rejects td.status", (t) => t.map((c) => c.textContent));
  check(statuses.length > 0 && statuses.every((s) => s === `replayed by ${runId}`), `each says which replay took it (${statuses.length} shown)`);
  const listed = await page.textContent(`#replays li[data-replay="${runId}"]`);
  check(listed.includes(`${fmt(oneOf)} rows (rule=one_of)`) && /rejected again/.test(listed), `the replay is listed: "${listed}"`);
  const again = await page.textContent("#replay");
  check(!again.includes(fmt(oneOf)), `the button no longer offers them: "${again}"`);
  await page.screenshot({ path: `${out}/rejects-replayed.png`, fullPage: true });
} catch (e) {
  failed = true;
  console.log(e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
