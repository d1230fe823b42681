// The console in a real browser (Debian's chromium, headless, driven by
// playwright-core). Run by tests/serve.rs against a live `engine serve`:
//   CONSOLE_URL, API_TOKEN, OUT_DIR, SLOW (pipeline name), NODES, EDGES,
//   ROWS (rows the slow pipeline reads), XSS (pipeline whose description is
//   markup), XSS_TEXT (that markup).
// Prints one line per check; exits 1 at the first failure.
import { check, env, fmt, launch } from "./lib.mjs";

const url = env("CONSOLE_URL");
const out = env("OUT_DIR");
const slow = env("SLOW");
const rows = Number(env("ROWS"));

const browser = await launch();
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
  const cspErrors = [];
  page.on("console", (m) => { if (m.type() === "error") cspErrors.push(m.text()); });

  // Pipelines.
  await page.goto(url);
  await page.waitForSelector(`tr[data-pipeline="${slow}"]`);
  const names = await page.$$eval("tr[data-pipeline]", (trs) => trs.map((t) => t.dataset.pipeline));
  check(names.includes(slow) && names.includes(env("XSS")) && names.includes("rejecting"), `the pipelines are listed: ${names.join(", ")}`);

  // Without the token, actions are refused.
  await page.click(`tr[data-pipeline="${slow}"] button`);
  await page.waitForSelector("#notice:not([hidden])");
  const refused = await page.textContent("#notice");
  check(/refused \(401\)/.test(refused), `Run now without the token is refused: "${refused}"`);
  const direct = await page.evaluate(async (p) => (await fetch(`/api/pipelines/${p}/runs`, { method: "POST" })).status, slow);
  check(direct === 401, `a POST without the token gets ${direct}`);

  // The pipeline's DAG against the file.
  await page.goto(`${url}#/pipelines/${slow}`);
  await page.waitForFunction((n) => document.querySelector("main h1")?.textContent === `Pipeline ${n}`, slow);
  await page.waitForSelector("svg.dag g.node");
  const nodes = await page.$$eval("svg.dag g.node", (g) => g.length);
  const edges = await page.$$eval("svg.dag g.edge", (g) => g.length);
  check(nodes === Number(env("NODES")) && edges === Number(env("EDGES")), `the DAG has ${nodes} nodes and ${edges} edges`);
  await page.waitForSelector("#checkpoints pre");
  const cps = await page.textContent("#checkpoints pre");
  check(/checkpoints/.test(cps), `the checkpoints section: ${cps.split("\n")[0]}`);

  // The token, then a run, live.
  await page.fill("#token", env("API_TOKEN"));
  await page.click("#token-form button");
  await page.click("main button");
  await page.waitForFunction(() => location.hash.startsWith("#/runs/"));
  const runId = decodeURIComponent((await page.evaluate(() => location.hash)).slice("#/runs/".length));
  check(runId.length > 0, `the run started: ${runId}`);
  const seen = [];
  let full = "";
  let shot = false;
  const until = Date.now() + 60_000;
  while (Date.now() < until) {
    const text = await page.textContent('[data-figure="rows-read"]');
    const n = Number((text || "").replace(/[^0-9]/g, ""));
    if (Number.isFinite(n) && n > 0 && (seen.length === 0 || n > seen[seen.length - 1])) seen.push(n);
    const f = await page.$$eval("svg.dag g.edge.full", (g) => g.map((e) => `${e.dataset.edge}: ${e.querySelector(".edge-fill").textContent}`));
    if (f.length && !full) full = f[0];
    if (seen.length >= 2 && full && !shot) {
      await page.screenshot({ path: `${out}/run-live.png`, fullPage: true });
      shot = true;
    }
    const outcome = await page.textContent("#run-outcome");
    if (outcome.trim() === "completed") break;
    await page.waitForTimeout(150);
  }
  check(seen.length >= 3, `the rows counter rose ${seen.length} times: ${seen.join(" < ")}`);
  check(/ full$/.test(full), `a backpressured edge is marked: ${full}`);
  await page.waitForFunction(() => document.querySelector("#run-outcome").textContent.trim() === "completed", null, { timeout: 60_000 });
  check(true, "the run completed");
  await page.waitForSelector('#report tr[data-operator="hole"]');
  const holeIn = await page.textContent('#report tr[data-operator="hole"] td:nth-child(3)');
  check(holeIn === fmt(rows), `the report says the sink got ${holeIn} rows`);
  const read = await page.textContent('[data-figure="rows-read"]');
  check(read === fmt(rows), `rows read ${read}`);
  check((await page.$$("svg.dag g.edge.full")).length === 0, "no edge stays marked full after the run");
  await page.screenshot({ path: `${out}/run-done.png`, fullPage: true });

  // Markup from data is shown as text.
  // Only the hash changes: wait for this page's heading, not the run page's DAG.
  await page.goto(`${url}#/pipelines/${env("XSS")}`);
  await page.waitForFunction((n) => document.querySelector("main h1")?.textContent === `Pipeline ${n}`, env("XSS"));
  await page.waitForSelector("main svg.dag");
  const body = await page.textContent("main");
  check(body.includes(env("XSS_TEXT")), "the markup in a description shows as its characters");
  check((await page.$$("main img")).length === 0 && dialogs.length === 0, "and makes no element and runs no script");

  // The pipelines page charts the last runs, in words too.
  await page.goto(url);
  await page.waitForSelector(`tr[data-pipeline="${slow}"] svg.runs-chart rect`);
  const bars = await page.$$eval(`tr[data-pipeline="${slow}"] svg.runs-chart rect`, (r) => r.length);
  const label = await page.getAttribute(`tr[data-pipeline="${slow}"] svg.runs-chart`, "aria-label");
  check(bars === 1 && label.includes("completed") && label.includes(`${fmt(rows)} rows`), `the last runs chart: ${bars} bar, "${label}"`);

  // Rejected rows: counts, a filter by rule, markup as text.
  await page.goto(`${url}#/rejects/rejecting`);
  await page.waitForSelector("table.reject-counts tbody tr");
  const countRows = await page.$$eval("table.reject-counts tbody tr", (t) => t.length);
  check(countRows >= 2, `rejects counted by operator, rule and reason: ${countRows} groups`);
  await page.selectOption("#rule", "parse");
  await page.waitForFunction(() => location.hash.includes("rule=parse"));
  await page.waitForFunction(() => [...document.querySelectorAll("table.rejects tbody tr")].every((t) => t.dataset.rule === "parse") && document.querySelectorAll("table.rejects tbody tr").length === 2);
  check(true, "filtering by rule parse shows its 2 rows");
  const rawCells = await page.$$eval("table.rejects td.raw", (t) => t.map((c) => c.textContent));
  check(rawCells.some((c) => c.includes("<b>Bo</b>")) && (await page.$$("table.rejects b")).length === 0, "markup in a rejected row shows as text");
  // The rejects the completed run wrote, as the service kept them.
  const kept = await page.$$eval("#run option", (o) => o.map((x) => x.value).filter(Boolean));
  check(kept.length === 1, `the rejects of ${kept.length} completed run are kept`);
  await page.selectOption("#run", kept[0]);
  await page.waitForFunction((id) => location.hash.includes(`run=${encodeURIComponent(id)}`) && (document.querySelector("main p.muted")?.textContent || "").includes(`/0-rejects.ndjson (run ${id})`), kept[0]);
  check((await page.textContent("#replay")).includes("as they are now"), "and a kept run's rows are not offered for replay");

  // A phone-width window still shows the table.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(url);
  await page.waitForSelector(`tr[data-pipeline="${slow}"] button`);
  check(await page.isVisible(`tr[data-pipeline="${slow}"] button`), "the action button is visible at 390 px");
  check(cspErrors.filter((e) => /Content Security Policy/.test(e)).length === 0, `no CSP violations (${cspErrors.length} console errors)`);
} catch (e) {
  failed = true;
  console.log(e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
