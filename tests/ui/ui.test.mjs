// Browser tests of the patchbay web UI (issue 8): Debian's chromium driven by playwright-core.
//
// Starts the real binary on a free port with a fresh data directory, signs in as `admin`
// (initial-admin-password), adds a PostgreSQL connection to the scram + TLS server on
// 127.0.0.1:5433 (scripts/peers-probe.sh) through the catalog picker and the generated form,
// tests it (a wrong password first: the auth stage fails; then every stage passes), saves
// it, finds it in the overview, changes the password to a wrong one (the auth stage fails),
// registers two dependents on it and deletes it through the delete dialog (leaving one out
// is refused; picking both cascades). On every page: an axe-core scan (no serious or
// critical violation), no CSP violation, and no HTML response containing either password.
// Then the workspace administration pages: a zone with an agent token (shown once), a
// webhook (secret shown once) with its deliveries, disable; members (change a role).
// Screenshots (1280x800): docs/screenshots/{overview,add-failed-test,delete-dialog}.png;
// the layout is checked for horizontal overflow at 1024 px.
//
// Environment: PATCHBAY_BIN (default: $CARGO_TARGET_DIR or target, debug/patchbay),
// CHROMIUM (default /usr/bin/chromium). A missing browser, binary or peer is SKIPPED, and
// a failure under CI=true.

import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const CI = process.env.CI === "true";
const shots = path.join(root, "docs/screenshots");

function skip(reason) {
  if (CI) {
    console.error(`FAILED: ${reason} (CI=true: a missing prerequisite is a failure)`);
    process.exit(1);
  }
  console.log(`SKIPPED: ${reason}`);
  process.exit(0);
}

function check(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(browserPath)) skip(`no browser at ${browserPath} (scripts/peers-browser.sh installs Debian's chromium)`);
const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, "target");
const bin = process.env.PATCHBAY_BIN || path.join(targetDir, "debug/patchbay");
if (!existsSync(bin)) skip(`no patchbay binary at ${bin} (cargo build -p patchbay first)`);

async function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.setTimeout(500);
    s.on("connect", () => { s.destroy(); resolve(true); });
    s.on("error", () => resolve(false));
    s.on("timeout", () => { s.destroy(); resolve(false); });
  });
}
if (!(await portOpen(5433))) skip("PostgreSQL (scram + TLS) on 127.0.0.1:5433 not reachable (scripts/peers.sh starts it)");
const caPath = "/tmp/patchbay-peers/probe/ca.pem";
if (!existsSync(caPath)) skip(`no test CA at ${caPath} (scripts/peers-probe.sh makes it)`);
const ca = readFileSync(caPath, "utf8");

// Two canary passwords: the right one (set on a role made for this run) and a wrong one.
const canary = `canary-ui-${randomBytes(8).toString("hex")}`;
const wrong = `canary-wrong-${randomBytes(8).toString("hex")}`;
const psql = spawnSync(
  "psql",
  ["-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", "5433", "-U", "postgres", "-d", "postgres"],
  {
    env: { ...process.env, PGPASSWORD: process.env.PB_PG5433_SUPERUSER_PASSWORD || "pb-postgres-pass" },
    input: `DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pb_ui') THEN CREATE ROLE pb_ui LOGIN; END IF; END$$;
ALTER ROLE pb_ui LOGIN PASSWORD '${canary}';
GRANT CONNECT ON DATABASE pbtest TO pb_ui;\n`,
    encoding: "utf8",
  },
);
if (psql.status !== 0) skip(`could not create the test role on 5433: ${psql.stderr || psql.error}`);

async function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const dataDir = mkdtempSync(path.join(tmpdir(), "patchbay-ui-"));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = spawn(bin, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
  env: { ...process.env, PATCHBAY_NETWORK_ALLOW: "127.0.0.1", PATCHBAY_LOG: "warn" },
  stdio: ["ignore", "inherit", "inherit"],
});
let browser;
function cleanup() {
  server.kill("SIGTERM");
  rmSync(dataDir, { recursive: true, force: true });
}

async function waitReady() {
  for (let i = 0; i < 150; i++) {
    try {
      const r = await fetch(`${base}/api/v1/ready`);
      if (r.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("patchbay did not become ready");
}

const axeSource = readFileSync(path.join(here, "node_modules/axe-core/axe.min.js"), "utf8");
const htmlSeen = []; // [url, body] of every HTML response
const cspViolations = [];
const scanned = [];

async function axe(page, name) {
  // Evaluated through the DevTools protocol, which the page's CSP does not govern.
  const result = await page.evaluate(`${axeSource};
    axe.run(document, { resultTypes: ["violations"] }).then(r =>
      r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5) })))`);
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `axe on ${name}: ${JSON.stringify(bad, null, 2)}`);
  scanned.push(`${name} (${result.length} minor)`);
}

// PB_UI_MORE_SHOTS=<dir>: also screenshots of the other pages, for looking at them.
const moreShots = process.env.PB_UI_MORE_SHOTS;
async function extraShot(page, name) {
  if (moreShots) await page.screenshot({ path: path.join(moreShots, `${name}.png`), fullPage: true });
}

function record(page) {
  page.on("console", (m) => {
    if (m.type() === "error" && /Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  page.on("response", async (r) => {
    const type = r.headers()["content-type"] || "";
    if (type.startsWith("text/html")) {
      try { htmlSeen.push([r.url(), await r.text()]); } catch {}
    }
  });
}

async function noOverflow(page, name) {
  const w = await page.evaluate(() => document.documentElement.scrollWidth);
  const vw = page.viewportSize().width;
  check(w <= vw, `${name} overflows ${vw} px horizontally (${w} px)`);
  const scrolled = await page.evaluate(() =>
    [...document.querySelectorAll(".table-wrap")].filter((e) => e.scrollWidth > e.clientWidth).length);
  check(scrolled === 0, `${name}: a table scrolls sideways`);
}

async function api(token, method, p, body) {
  const r = await fetch(`${base}${p}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

try {
  await waitReady();
  const password = readFileSync(path.join(dataDir, "initial-admin-password"), "utf8").trim();
  const token = readFileSync(path.join(dataDir, "initial-admin-token"), "utf8").trim();
  mkdirSync(shots, { recursive: true });

  browser = await chromium.launch({ executablePath: browserPath, args: ["--no-sandbox"] });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  record(page);

  // 1. Sign in.
  await page.goto(`${base}/`);
  check(page.url().endsWith("/login"), `signed out, / leads to /login (at ${page.url()})`);
  await axe(page, "login");
  await extraShot(page, "login");
  await page.fill("#username", "admin");
  await page.fill("#password", password);
  await Promise.all([page.waitForURL(/\/projects\/[^/]+\/connections$/), page.click("button[type=submit]")]);
  const project = page.url().match(/\/projects\/([^/]+)\/connections/)[1];
  await page.getByRole("heading", { name: "No connections yet" }).waitFor();
  await axe(page, "overview (empty)");

  // 2. Add a PostgreSQL connection through the picker and the generated form.
  await page.click("text=Add a connection >> nth=0");
  await page.waitForURL(/\/connections\/new$/);
  await axe(page, "catalog picker");
  await extraShot(page, "picker");
  await page.fill("#q", "postgres");
  await Promise.all([page.waitForURL(/q=postgres/), page.click("button:has-text('Search')")]);
  await Promise.all([page.waitForURL(/\/new\/postgresql$/), page.click("a.catalog-item[href$='/new/postgresql']")]);
  await page.fill("#f-name", "orders-db");
  await page.fill("#f-environment", "prod");
  await page.fill("#f-tags", "team:orders, nightly");
  await page.fill("#f-description", "Orders replica for the nightly loads");
  await page.fill("#f-settings-host", "127.0.0.1");
  await page.fill("#f-settings-port", "5433");
  await page.fill("#f-settings-database", "pbtest");
  await page.fill("#f-settings-username", "pb_ui");
  await page.fill("#f-secrets-password", wrong);
  await page.selectOption("#f-settings-sslmode", "verify-full");
  await page.fill("#f-settings-ssl_root_cert", ca);
  await axe(page, "add form");

  // Test with the wrong password: the auth stage fails, the form keeps its values.
  await page.click("button:has-text('Test connection')");
  await page.locator("#test-result .result").waitFor();
  const failedText = await page.locator("#test-result").innerText();
  check(/Test failed/.test(failedText), `the test fails: ${failedText}`);
  check(/Failed at the Authentication stage/.test(failedText), `auth stage named: ${failedText}`);
  check(/auth_failed/.test(failedText), `class auth_failed: ${failedText}`);
  check((await page.locator(".stage-failed .stage-name").innerText()) === "Authentication", "the failed stage is auth");
  check((await page.inputValue("#f-settings-host")) === "127.0.0.1", "htmx kept the form");
  await axe(page, "add form with a failed test");
  await page.screenshot({ path: path.join(shots, "add-failed-test.png") });

  // The right password: every stage passes.
  await page.fill("#f-secrets-password", canary);
  await page.click("button:has-text('Test connection')");
  await page.locator("#test-result .result-ok").waitFor();
  const stages = await page.locator("#test-result .stage").evaluateAll((els) =>
    els.map((e) => [e.querySelector(".stage-name").textContent, e.className]));
  check(stages.length >= 4, `stages shown: ${JSON.stringify(stages)}`);
  check(stages.every(([, cls]) => cls.includes("stage-ok")), `all stages ok: ${JSON.stringify(stages)}`);
  check(stages.some(([name]) => name === "Authentication"), "auth is among the stages");

  // Save: the detail page.
  await Promise.all([page.waitForURL(/\/connections\/[0-9a-f-]+$/), page.click("button:has-text('Save')")]);
  const id = page.url().split("/").pop();
  await page.getByRole("heading", { name: "orders-db" }).waitFor();
  await axe(page, "connection detail");
  await page.click("button:has-text('Test connection')");
  await page.locator("#test-result .result-ok").waitFor();
  await extraShot(page, "detail");

  // A few more connections, so the overview shows what a team sees.
  const more = [
    { name: "events-stream", type: "kafka", environment: "prod", tags: ["team:data"],
      settings: { bootstrap_servers: ["127.0.0.1:1"], security_protocol: "PLAINTEXT" } },
    { name: "warehouse", type: "snowflake", environment: "prod", tags: ["team:finance"],
      settings: { account: "acme-eu1", username: "loader", warehouse: "LOAD_WH" }, secrets: { password: canary } },
    { name: "lake-raw", type: "s3", environment: "staging",
      settings: { bucket: "lake-raw", region: "eu-west-1", access_key_id: "AKIAEXAMPLE" }, secrets: { secret_access_key: canary } },
    { name: "cache", type: "redis", environment: "dev", settings: { host: "127.0.0.1", port: 1 } },
  ];
  for (const c of more) {
    const r = await api(token, "POST", `/api/v1/projects/${project}/connections`, c);
    if (r.status !== 201) console.log(`note: could not add ${c.name} for the screenshot: ${JSON.stringify(r.body)}`);
    else if (c.name === "cache") await api(token, "POST", `/api/v1/connections/${r.body.id}/test`);
    else if (c.name === "warehouse") {
      for (const [kind, ref, name] of [["dashboard", "revenue", "Revenue"], ["dataset", "orders", "Orders"], ["pipeline", "dbt-daily", "dbt daily"]]) {
        await api(token, "PUT", `/api/v1/connections/${r.body.id}/dependents/${kind}/${ref}`, { name });
      }
    }
  }

  // 3. The overview lists it with its last test.
  await page.click("nav.sidebar >> text=Connections");
  await page.waitForURL(/\/projects\/[^/]+\/connections$/);
  const row = page.locator("tr", { has: page.locator(`a[href='/connections/${id}']`) });
  check((await row.count()) === 1, "the new connection is in the overview");
  check(/OK/.test(await row.locator(".pill").innerText()), "its last test is OK");
  await axe(page, "overview");
  await page.screenshot({ path: path.join(shots, "overview.png") });
  await page.setViewportSize({ width: 1024, height: 800 });
  await noOverflow(page, "overview at 1024 px");
  await extraShot(page, "overview-1024");
  await page.goto(`${base}/projects/${project}/connections/new/postgresql`);
  await noOverflow(page, "add form at 1024 px");
  await extraShot(page, "add-1024");
  await page.goto(`${base}/connections/${id}`);
  await noOverflow(page, "detail at 1024 px");
  await page.setViewportSize({ width: 1280, height: 800 });

  // Filters and search narrow the list.
  await page.goto(`${base}/projects/${project}/connections?category=databases&q=orders`);
  check((await page.locator("tbody tr").count()) === 1, "filtering by category and search");

  // 4. Change the password to a wrong one: the test fails at the auth stage.
  await page.goto(`${base}/connections/${id}`);
  await Promise.all([page.waitForURL(/\/edit$/), page.click("a:has-text('Edit')")]);
  await axe(page, "edit form");
  await extraShot(page, "edit");
  check((await page.inputValue("#f-secrets-password")) === "", "the stored password is not in the form");
  await page.fill("#f-secrets-password", wrong);
  await Promise.all([page.waitForURL(/\/connections\/[0-9a-f-]+$/), page.click("button:has-text('Save')")]);
  await page.click("button:has-text('Test connection')");
  await page.locator("#test-result .result-failed").waitFor();
  const afterEdit = await page.locator("#test-result").innerText();
  check(/Failed at the Authentication stage/.test(afterEdit) && /auth_failed/.test(afterEdit), `auth fails after the edit: ${afterEdit}`);
  await page.reload();
  check(/Failed/.test(await page.locator(".page-head .pill").innerText()), "the status pill says failed");

  // 5. Delete with registered dependents: the dialog shows them; picking all cascades.
  const deps = [
    ["pipeline", "nightly-orders", "Nightly orders load", "https://airflow.example.com/dags/nightly-orders"],
    ["dashboard", "sales-kpis", "Sales KPIs", "https://grafana.example.com/d/sales-kpis"],
  ];
  for (const [kind, ref, name, url] of deps) {
    const r = await api(token, "PUT", `/api/v1/connections/${id}/dependents/${kind}/${ref}`, { name, url });
    check(r.status === 201, `dependent ${kind}/${ref} registered: ${JSON.stringify(r.body)}`);
  }
  await page.reload();
  check(/Nightly orders load/.test(await page.locator("#h-dependents").locator("..").innerText()), "the detail page lists the dependents");
  await Promise.all([page.waitForURL(/\/delete$/), page.click("a:has-text('Delete')")]);
  await page.getByRole("heading", { name: "Delete orders-db?" }).waitFor();
  const boxes = page.locator("input[name=cascade]");
  check((await boxes.count()) === 2, "the dialog lists both dependents");
  await axe(page, "delete dialog");
  await page.screenshot({ path: path.join(shots, "delete-dialog.png") });
  // Leaving one out is refused and nothing is deleted.
  await page.uncheck("input[value='dashboard/sales-kpis']");
  await page.click("button:has-text('Delete connection')");
  await page.locator(".alert-error", { hasText: "One dependent was not picked" }).waitFor();
  check((await api(token, "GET", `/api/v1/connections/${id}`)).status === 200, "still there");
  await page.check("input[value='dashboard/sales-kpis']");
  await Promise.all([page.waitForURL(/deleted=orders-db/), page.click("button:has-text('Delete connection')")]);
  check((await page.locator(`a[href='/connections/${id}']`).count()) === 0, "deleted from the overview");
  const gone = await api(token, "GET", `/api/v1/connections/${id}`);
  check(gone.status === 404, "deleted in the API");
  const ws = (await api(token, "GET", "/api/v1/workspaces")).body.items.find((w) => w.name === "default").id;
  const cascaded = await api(token, "GET", `/api/v1/workspaces/${ws}/audit?action=dependent.cascade_delete`);
  check(cascaded.body.items.length === 2, `both dependents cascaded: ${JSON.stringify(cascaded.body)}`);

  // Every other page passes the scan too.
  await page.click("nav.sidebar >> text=Credentials");
  await axe(page, "credentials");
  await extraShot(page, "credentials");
  await page.click("nav.sidebar >> text=Audit log");
  await axe(page, "audit log");
  await extraShot(page, "audit");
  await page.click("nav.sidebar >> text=API tokens");
  await axe(page, "API tokens");

  // Workspace administration: zones and agents, webhooks, members.
  await page.click("nav.sidebar >> text=Zones and agents");
  await axe(page, "zones (empty)");
  await page.fill("#z-name", "vpc-eu");
  await page.fill("#z-description", "EU VPC, reached through an agent");
  await Promise.all([page.waitForURL(/\/zones$/), page.click("button:has-text('Create zone')")]);
  await page.fill("input[placeholder='agent name (optional)']", "eu-agent-1");
  await page.click("button:has-text('Issue token')");
  const agentToken = await page.inputValue("#minted");
  check(agentToken.startsWith("pbt_"), "the agent token is shown");
  check((await page.locator(".pill", { hasText: "unhealthy" }).count()) === 1, "an agent that never called in is unhealthy");
  await axe(page, "zones with a new agent token");
  await noOverflow(page, "zones");
  await extraShot(page, "zones");
  await page.goto(`${base}/workspaces/${ws}/zones`);
  check(!(await page.content()).includes(agentToken), "the agent token is shown once");

  await page.click("nav.sidebar >> text=Webhooks");
  await axe(page, "webhooks (empty)");
  await page.fill("#w-url", "http://127.0.0.1:9/patchbay");
  await page.fill("#w-description", "pipeline bus");
  await page.check("#ev-connection\\.created");
  await page.click("button:has-text('Create webhook')");
  const hookSecret = await page.inputValue("#secret");
  check(hookSecret.startsWith("whsec_"), "the webhook secret is shown");
  await axe(page, "webhooks with a new secret");
  const created = await api(token, "POST", `/api/v1/projects/${project}/connections`,
    { name: "hooked", type: "redis", settings: { host: "127.0.0.1", port: 1 } });
  check(created.status === 201, `an event for the webhook: ${JSON.stringify(created.body)}`);
  await page.goto(`${base}/workspaces/${ws}/webhooks`);
  check(!(await page.content()).includes(hookSecret), "the webhook secret is shown once");
  await page.click("a.row-link:has-text('127.0.0.1:9')");
  await page.locator("code", { hasText: "connection.created" }).first().waitFor();
  await axe(page, "webhook deliveries");
  await noOverflow(page, "webhook deliveries");
  await extraShot(page, "webhook");
  await Promise.all([page.waitForURL(/\/webhooks\/[0-9a-f-]+$/), page.click("button:has-text('Disable')")]);
  await page.locator("button", { hasText: "Enable" }).waitFor();

  const viewerUser = await api(token, "POST", "/api/v1/users", { username: "viewer-vi", password: "a long enough password" });
  check(viewerUser.status === 201, "a second member");
  await api(token, "PUT", `/api/v1/workspaces/${ws}/members/${viewerUser.body.id}`, { role: "viewer" });
  await page.click("nav.sidebar >> text=Members");
  await axe(page, "members");
  await noOverflow(page, "members");
  await extraShot(page, "members");
  await page.selectOption(`#role-${viewerUser.body.id}`, "editor");
  await Promise.all([page.waitForURL(/\/members$/), page.click(`form:has(#role-${viewerUser.body.id}) button`)]);
  check((await page.inputValue(`#role-${viewerUser.body.id}`)) === "editor", "the role changed");
  for (const secret of [agentToken, hookSecret]) {
    const shown = htmlSeen.filter(([, body]) => body.includes(secret)).length;
    check(shown === 1, `a minted secret appears in exactly one HTML response (the creating one), not ${shown}`);
  }

  // Without JavaScript the pages still work: the test button posts the form and the page
  // comes back with the result (and an empty password input).
  const plain = await browser.newContext({ viewport: { width: 1280, height: 800 }, javaScriptEnabled: false });
  const nojs = await plain.newPage();
  record(nojs);
  await nojs.goto(`${base}/login`);
  await nojs.fill("#username", "admin");
  await nojs.fill("#password", password);
  await Promise.all([nojs.waitForURL(/\/connections$/), nojs.click("button[type=submit]")]);
  await nojs.goto(`${base}/projects/${project}/connections/new/postgresql`);
  await nojs.fill("#f-name", "nojs-db");
  await nojs.fill("#f-settings-host", "127.0.0.1");
  await nojs.fill("#f-settings-port", "5433");
  await nojs.fill("#f-settings-database", "pbtest");
  await nojs.fill("#f-settings-username", "pb_ui");
  await nojs.fill("#f-secrets-password", wrong);
  await nojs.selectOption("#f-settings-sslmode", "require");
  await Promise.all([nojs.waitForURL(/\/connections\/test$/), nojs.click("button:has-text('Test connection')")]);
  const nojsResult = await nojs.locator("#test-result").innerText();
  check(/Failed at the Authentication stage/.test(nojsResult), `no-JS test result: ${nojsResult}`);
  check((await nojs.inputValue("#f-settings-host")) === "127.0.0.1", "no-JS: the form comes back filled");
  check((await nojs.inputValue("#f-secrets-password")) === "", "no-JS: the secret is not sent back");
  await nojs.fill("#f-secrets-password", canary);
  await Promise.all([nojs.waitForURL(/\/connections\/[0-9a-f-]+$/), nojs.click("button:has-text('Save')")]);
  await plain.close();

  // Keyboard: the skip link is the first stop and leads to the content.
  await page.keyboard.press("Tab");
  check((await page.evaluate(() => document.activeElement.className)) === "skip-link", "the skip link comes first");

  // 4'. No HTML response carried either password; no CSP violation.
  check(htmlSeen.length > 10, `HTML responses recorded: ${htmlSeen.length}`);
  for (const [url, body] of htmlSeen) {
    check(!body.includes(canary) && !body.includes(wrong), `${url} contains a password`);
  }
  check(cspViolations.length === 0, `CSP violations: ${cspViolations.join("\n")}`);
  console.log(`ui tests: ok — axe clean on ${scanned.length} pages (${scanned.join(", ")}); ` +
    `${htmlSeen.length} HTML responses free of the canary; screenshots in docs/screenshots/`);
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
  cleanup();
}
