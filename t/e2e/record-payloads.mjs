// scripts/record-payloads' browser part (scripts/record-payloads starts
// Redis and nginx as scripts/e2e does and passes their addresses in E2E_*).
//
// Records one visit with rrweb in Debian's Chromium: a shop's product
// listing (t/e2e/pages/catalog.html: mega menu, facets, 48 product tiles,
// a quick-view dialog, a newsletter form, a cookie banner, a 63 KB
// stylesheet), then its checkout form (checkout.html), driven at a
// person's pace by playwright (mouse, wheel, clicks, typing), the recorder
// at its default flush interval (5 s). The batches are read back from Redis
// as the module stored them (each must be the browser's JSON, byte for
// byte, apart from _ingest) and two are written to RECORD_OUT:
//   real-snapshot.json.gz  the listing's first batch: meta and full snapshot
//   real-median.json.gz    the incremental batch (no full snapshot) of
//                          median JSON size
// both the browser's own gzip bytes (CompressionStream) when it sent them
// compressed; and each .json too when at most KEEP_JSON bytes. Then each
// file is POSTed to the module, which must answer 202 queued; and
// RECORD_OUT/README.md says how they were made.
import { createRequire } from 'node:module';
import { gzipSync } from 'node:zlib';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as resp from './resp.mjs';
import { sentLog, splitIngest } from './batches.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const require = createRequire(path.join(repo, 'examples/recorder/package.json'));
const { chromium } = require('playwright-core');

const env = (name) => {
  if (!process.env[name]) throw new Error(`${name} is not set: run scripts/record-payloads`);
  return process.env[name];
};
const INGEST = env('E2E_INGEST');
const PAGES = env('E2E_PAGES');
const REDIS_PORT = Number(env('E2E_REDIS_PORT'));
const OUT = env('RECORD_OUT');
const KEEP_JSON = 256 * 1024;   // larger JSON is kept gzipped only
const FLUSH = 5000;             // the recorder's default flushInterval
// rrweb's event types and incremental sources, for the README.
const TYPES = ['DomContentLoaded', 'Load', 'FullSnapshot', 'IncrementalSnapshot', 'Meta', 'Custom', 'Plugin'];
const SOURCES = ['Mutation', 'MouseMove', 'MouseInteraction', 'Scroll', 'ViewportResize', 'Input',
  'TouchMove', 'MediaInteraction', 'StyleSheetRule', 'CanvasMutation', 'Font', 'Log', 'Drag',
  'StyleDeclaration', 'Selection', 'AdoptedStyleSheet', 'CustomElement'];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function die(message) {
  console.error(`record-payloads: ${message}`);
  process.exit(1);
}

async function waitFor(what, cond, ms) {
  const until = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > until) die(`gave up waiting for ${what}`);
    await sleep(200);
  }
}

// The listing: look around, open the menu, scroll, filter, sort, a quick
// view, the wishlist, the cookie banner, the newsletter; then the basket.
async function browseCatalog(page) {
  await page.mouse.move(683, 300);
  await page.mouse.move(420, 180, { steps: 30 });
  await sleep(1200);
  await page.click('#cookie-ok');
  for (const menu of ['Women', 'Men', 'Footwear']) {
    await page.hover(`.mega > li[data-menu="${menu}"] > a`);
    await sleep(600);
    await page.mouse.move(500 + menu.length * 20, 260, { steps: 20 });
    await sleep(500);
  }
  await page.mouse.move(900, 450, { steps: 25 });
  for (let i = 0; i < 6; i++) {
    await page.mouse.wheel(0, 280);
    await sleep(350);
    await page.mouse.move(300 + i * 120, 350 + (i % 2) * 120, { steps: 15 });
  }
  await sleep(1500);
  await page.hover('.product[data-id="10413"] .product__media');
  await sleep(700);
  await page.click('.product[data-id="10413"] .product__wish');
  await page.click('.product[data-id="10413"] [data-quick]');
  await sleep(900);
  await page.click('#quick-view .sizes label:nth-child(3)');
  await sleep(600);
  await page.click('#qv-add');
  await sleep(1800);
  await page.mouse.wheel(0, -1400);
  await sleep(800);
  await page.check('#facets input[value="Kestrel"]');
  await sleep(900);
  await page.check('#facets input[value="Storm Ridge"]');
  await sleep(900);
  await page.click('#facets .swatch[title="Teal"]');
  await page.selectOption('#sort', 'price-asc');
  await sleep(1500);
  await page.uncheck('#facets input[value="Kestrel"]');
  await page.uncheck('#facets input[value="Storm Ridge"]');
  await sleep(800);
  await page.click('#q');
  await page.keyboard.type('rain jacket', { delay: 140 });
  await sleep(1200);
  for (let i = 0; i < 3; i++) await page.keyboard.press('Backspace', { delay: 120 });
  await page.fill('#q', '');
  await sleep(1000);
  await page.selectOption('#sort', 'rating');
  await page.mouse.move(700, 500, { steps: 30 });
  for (let i = 0; i < 8; i++) {
    await page.mouse.wheel(0, 400);
    await sleep(300);
  }
  await page.click('.product[data-id="10431"] [data-add]', { force: true });
  await sleep(1000);
  await page.click('#email');
  await page.keyboard.type('kim.berger@example.org', { delay: 110 });
  await page.check('#consent');
  await sleep(700);
  await page.click('#subscribe');
  await sleep(2000);
  await page.mouse.wheel(0, -6000);
  await sleep(1200);
  await page.click('#to-checkout');
}

// The checkout form, typed into as a person would.
async function fillCheckout(page) {
  await sleep(1500);
  const fields = [['#email', 'kim.berger@example.org'], ['#first', 'Kim'], ['#last', 'Berger'],
    ['#street', 'Lindenstraße 14'], ['#zip', '1030'], ['#city', 'Wien']];
  for (const [sel, text] of fields) {
    await page.click(sel);
    await page.keyboard.type(text, { delay: 120 });
    await sleep(400);
  }
  await page.selectOption('#country', 'AT');
  await sleep(800);
  await page.click('#phone');
  await page.keyboard.type('+43 660 1234567', { delay: 100 });
  await page.click('#notes');
  await page.keyboard.type('Please leave the parcel with the neighbours at number 12.', { delay: 60 });
  await page.check('input[name=delivery][value="9.95"]');
  await sleep(1000);
  await page.click('#pay');   // the terms are not accepted yet: a message
  await sleep(1200);
  await page.check('#terms');
  await page.click('#pay');
  await sleep(1500);
  await page.mouse.move(1100, 200, { steps: 20 });
  await sleep(FLUSH + 1000);   // the last timer flush before leaving
}

async function record(browser) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(`${PAGES}/catalog.html?flush=${FLUSH}`);
  await page.waitForFunction(() => window.__recorder, null, { timeout: 10_000 });
  const info = await page.evaluate(() => ({
    sessionId: window.__recorder.sessionId, userAgent: navigator.userAgent,
  }));
  await browseCatalog(page);
  await page.waitForURL((url) => url.pathname === '/checkout.html', { timeout: 10_000 });
  await page.waitForFunction(() => window.__recorder, null, { timeout: 10_000 });
  await fillCheckout(page);
  await page.goto(`${PAGES}/replay.html`);
  const sent = await sentLog(page);
  await context.close();
  return { ...info, sent };
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',   // Debian's; never a downloaded one
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  timeout: 30_000,
});
const chromiumVersion = browser.version();
let visit;
try {
  visit = await record(browser);
} finally {
  await browser.close();
}
console.log(`record-payloads: Chromium ${chromiumVersion}, session ${visit.sessionId}, ${visit.sent.length} batches sent`);

// What the module stored: every batch, the browser's JSON byte for byte.
const redis = await resp.connect(REDIS_PORT);
const stored = async () => {
  const found = [];
  for (const key of (await redis.command('KEYS', 'recording:queue:*')).map(String)) {
    for (const raw of await redis.command('LRANGE', key, 0, -1)) {
      const parts = splitIngest(raw);
      if (parts && JSON.parse(parts.client).session_id === visit.sessionId) found.push(parts.client);
    }
  }
  return found;
};
await waitFor('every batch in Redis', async () => (await stored()).length >= visit.sent.length, 20_000);
const elements = await stored();
redis.close();
const batches = visit.sent.map((s) => {
  const doc = JSON.parse(s.json);
  return { ...s, doc, types: new Set(doc.events.map((e) => e.type)) };
});
for (const b of batches) {
  if (!elements.some((e) => e.equals(b.json))) die(`${b.page} seq ${b.doc.seq}: not in Redis as sent`);
}
if (elements.length !== batches.length) die(`${elements.length} elements in Redis for ${batches.length} batches`);

const snapshot = batches.find((b) => b.page === '/catalog.html' && b.types.has(2));
const incremental = batches.filter((b) => !b.types.has(2)).sort((a, b) => a.json.length - b.json.length);
if (!snapshot || incremental.length < 5) die(`a snapshot and 5 incremental batches wanted, got ${incremental.length}`);
const median = incremental[Math.floor((incremental.length - 1) / 2)];

// The files: the browser's gzip when it sent one, else gzip level 6.
fs.mkdirSync(OUT, { recursive: true });
const written = [];
for (const [name, b] of [['real-snapshot', snapshot], ['real-median', median]]) {
  const browserGzip = b.encoding === 'gzip';
  const gz = browserGzip ? b.bytes : gzipSync(b.json, { level: 6 });
  fs.writeFileSync(path.join(OUT, `${name}.json.gz`), gz);
  const keepJson = b.json.length <= KEEP_JSON;
  const jsonPath = path.join(OUT, `${name}.json`);
  if (keepJson) fs.writeFileSync(jsonPath, b.json);
  else fs.rmSync(jsonPath, { force: true });
  const kinds = {};
  for (const e of b.doc.events) {
    const k = e.type === 3 ? `${SOURCES[e.data.source] || `source ${e.data.source}`} (3.${e.data.source})`
      : `${TYPES[e.type] || 'type'} (${e.type})`;
    kinds[k] = (kinds[k] || 0) + 1;
  }
  written.push({ name, b, gz, browserGzip, keepJson, kinds });
}

// Valid batches per CONTRACT.md: the module takes each file (202 queued).
for (const w of written) {
  const bodies = [[`${w.name}.json.gz`, w.gz, 'gzip']];
  if (w.keepJson) bodies.push([`${w.name}.json`, w.b.json, null]);
  for (const [file, body, encoding] of bodies) {
    const headers = { 'Content-Type': 'application/json' };
    if (encoding) headers['Content-Encoding'] = encoding;
    const r = await fetch(`${INGEST}/v1/sites/1/recordings`, { method: 'POST', headers, body });
    const text = await r.text();
    if (r.status !== 202 || text !== '{"status":"queued"}') die(`${file}: ${r.status} ${text}`);
    console.log(`record-payloads: ${file}: ${body.length} bytes, POST answered 202 ${text}`);
  }
}

const rrwebVersion = JSON.parse(fs.readFileSync(
  path.join(repo, 'examples/recorder/node_modules/rrweb/package.json'), 'utf8')).version;
const n = (x) => x.toLocaleString('en-US');
const row = (w) => `| \`${w.name}.json.gz\`${w.keepJson ? ` and \`${w.name}.json\`` : ''} | ${n(w.b.json.length)} B | `
  + `${n(w.gz.length)} B (${(w.b.json.length / w.gz.length).toFixed(1)}x, `
  + `${w.browserGzip ? 'the browser\'s CompressionStream' : 'zlib level 6'}) | ${w.b.page} seq ${w.b.doc.seq}: `
  + `${w.b.doc.events.length} events (${Object.entries(w.kinds).map(([k, c]) => `${c}× ${k}`).join(', ')}) |`;
const sizes = incremental.map((b) => b.json.length);
const readme = `# Real rrweb batches

Recorded by \`scripts/record-payloads\` (written by it; run it again to
record them afresh: the bytes differ from run to run, as timings and mouse
paths do). Benchmark payloads of issue 13: a full snapshot and an
incremental batch of median size, as rrweb in Chromium records them.

| file | JSON | gzip | batch |
| --- | --- | --- | --- |
${written.map(row).join('\n')}

Each file is one batch exactly as the browser sent it (the recorder's JSON,
\`session_id\`, \`page_id\`, \`seq\`, \`events\`; no \`_ingest\`), and the
\`.json.gz\` are the browser's own gzip bytes when it sent the batch
compressed. JSON over ${n(KEEP_JSON)} bytes is kept gzipped only.

**How.** \`scripts/record-payloads\` builds the module, starts Redis and
nginx with it on loopback ports (the setup of \`scripts/e2e\`,
\`t/e2e/servers.sh\`), and drives Debian's Chromium ${chromiumVersion}
(headless, playwright-core) through \`t/e2e/pages/catalog.html\` (a shop's
product listing: mega menu, facets, 48 product tiles, a quick-view dialog,
a newsletter form, a cookie banner; a 63 KB stylesheet, which rrweb
inlines) and then \`checkout.html\` (a checkout form), with mouse moves,
wheel scrolling, clicks, filtering, sorting and typing at a person's pace
(\`t/e2e/record-payloads.mjs\`). The recorder is \`examples/recorder\` with
rrweb ${rrwebVersion}, at its default flush interval (${FLUSH} ms) and
batch cut (48 KiB), over POST. Viewport 1366x768.

The visit: ${batches.length} batches (${batches.filter((b) => b.types.has(2)).length} with a full snapshot, one per page view;
${incremental.length} incremental, JSON sizes ${n(sizes[0])} to ${n(sizes[sizes.length - 1])} B,
median ${n(median.json.length)} B). Every batch was read back from Redis, as
the module stored it: the browser's JSON, byte for byte, plus \`_ingest\`.
\`real-snapshot\` is the listing's first batch (its meta and full snapshot
events); \`real-median\` the incremental batch of median JSON size (the
lower median).

**Valid per CONTRACT.md**: the script POSTs each file to the module
(\`Content-Encoding: gzip\` for \`.json.gz\`) and requires \`202
{"status":"queued"}\` for every one.

User-Agent: \`${visit.userAgent}\`
`;
fs.writeFileSync(path.join(OUT, 'README.md'), readme);
console.log(`record-payloads: wrote ${written.map((w) => w.name).join(', ')} and README.md in ${OUT}`);
