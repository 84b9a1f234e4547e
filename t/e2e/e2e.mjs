// The end-to-end test's browser part, run by scripts/e2e, which starts Redis
// and nginx (the module on one loopback origin, the pages on another) and
// passes their addresses in E2E_*.
//
// 1. A visit to site 1 (records everything): three pages with scripted
//    mouse moves, clicks, scrolling, typing and DOM changes, the last batch
//    of each page sent as it unloads. Checks that every batch the recorder
//    sent is in Redis, in the order sent, byte for byte apart from _ingest,
//    and that each page view's events replay in rrweb's replayer into the
//    page as it was when the visit left it.
// 2. Visits to site 2 (samples every session out) and site 3 (disabled):
//    the recorder stops after the first answer, for the rest of the visit.
// 3. The same visit with the recorder's WebSocket transport (?transport=ws):
//    a connection per page view, each batch a binary gzip message, every
//    batch in Redis once, byte for byte, the replay as above. Over
//    WebSocket, site 2 stops on its sampled_out acknowledgement; sites 3
//    (disabled) and 99 (unknown) refuse the upgrade, the recorder falls back
//    to POST and stops on its answer, as the POST path does.
// 4. A reconnect: nginx reloads (SIGHUP) during a WebSocket page view, the
//    old worker closes with 1001, the recorder reconnects and resends what
//    was not acknowledged: every batch is in Redis at least once, in seq
//    order once duplicates are dropped, and the page replays.
// 5. A resend of batches Redis already has: during a WebSocket page view,
//    Redis is stopped (SIGSTOP) while the page sends a few batches, so
//    their acknowledgements wait; once the module's RPUSH of the first is
//    in Redis's socket, our nginx's workers get SIGKILL (the socket drops
//    without a close frame), and Redis goes on (SIGCONT), running that
//    RPUSH. The recorder reconnects and sends the unacknowledged batches
//    again: Redis holds the first of them twice.
// 6. scripts/storage-worker drains the queues: the POST session's file
//    holds exactly its Redis elements, in page-view and seq order; the
//    files of the two reconnecting page views hold each batch once, in seq
//    order, as the browser sent it.
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as resp from './resp.mjs';
import { sentLog, splitIngest } from './batches.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
// playwright-core is pinned with rrweb in the recorder example's package.json.
const require = createRequire(path.join(repo, 'examples/recorder/package.json'));
const { chromium } = require('playwright-core');

const env = (name) => {
  if (!process.env[name]) throw new Error(`${name} is not set: run scripts/e2e`);
  return process.env[name];
};
const INGEST = env('E2E_INGEST');
const PAGES = env('E2E_PAGES');
const REDIS_PORT = Number(env('E2E_REDIS_PORT'));
const REDIS_PID = Number(env('E2E_REDIS_PID'));
const RUN = env('E2E_RUN');
const DEADLINE = Date.now() + 240_000;   // scripts/e2e kills us at 280 s
const STARTED = Date.now();

// --- results -------------------------------------------------------------

let passed = 0;
const failures = [];
function check(ok, name, detail) {
  if (ok) {
    passed++;
    console.log(`ok   - ${name}`);
  } else {
    failures.push(name);
    console.log(`FAIL - ${name}`);
    if (detail !== undefined) console.log(`       ${String(detail).slice(0, 2000)}`);
  }
  return ok;
}
const facts = [];   // the numbers for the summary
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(what, cond, ms = 10_000) {
  const until = Math.min(Date.now() + ms, DEADLINE);
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > until) {
      console.log(`       (gave up waiting for ${what})`);
      return false;
    }
    await sleep(100);
  }
}

// --- the page, as the test sees it ---------------------------------------

// What a page looks like, for comparing the live page with its replay: run
// in the page (live) and on the replayer's iframe document. The replayer
// adds a <style> of its own as the first child of <html>, turns <script>
// into <noscript> (it never runs the page's scripts) and inlines <link>ed
// stylesheets into <style>: that much is normalized, nothing else.
function domSummary(doc) {
  const tags = [];
  for (const el of doc.getElementsByTagName('*')) {
    let tag = el.tagName.toLowerCase();
    if (tag === 'style' && el.parentElement === doc.documentElement) continue;
    if (tag === 'script') tag = 'noscript';
    if (tag === 'link' && el.rel === 'stylesheet') tag = 'style';
    tags.push(tag);
  }
  const fields = [...doc.querySelectorAll('input, textarea, select')]
    .map((f) => (f.type === 'checkbox' ? f.checked : f.value));
  const scrollers = [...doc.querySelectorAll('.scroller')].map((s) => s.scrollTop);
  return {
    title: doc.title,
    elements: tags.length,
    tags: tags.join(' '),
    text: doc.body.innerText,   // what is rendered: CSS (display: none) counts
    fields,
    scrollY: doc.defaultView.scrollY,
    scrollers,
  };
}
const liveSummary = (page) => page.evaluate(`(${domSummary})(document)`);

// The WebSockets the recorder opened, as logged by boot.js in
// sessionStorage: [{page, opened, code}] (sentLog, in batches.mjs: the
// bodies it sent).
async function wsLog(page) {
  return page.evaluate(() => JSON.parse(sessionStorage.getItem('e2e-ws') || '[]'));
}

// POSTs to the module seen on the network: body bytes and answer.
function captureNetwork(context) {
  const posts = [];
  context.on('request', (request) => {
    if (request.method() !== 'POST' || !request.url().startsWith(INGEST)) return;
    const post = { body: request.postDataBuffer(), status: null, answer: null };
    posts.push(post);
    request.response().then(async (response) => {
      if (!response) return;
      // null: the body is gone (its page went away before it was read,
      // which the driver may report for a batch sent on leaving a page).
      post.answer = await response.text().catch(() => null);
      post.status = response.status();
    }).catch(() => {});
  });
  return posts;
}

// After the last interaction on a page: let the recorder's timer send what
// is buffered and wait for the answers, so that the batch sent on unload
// is never in flight together with another one (they could then reach
// Redis in either order, which is fine for the storage worker but would
// make "in the order sent" a race here).
async function settle(page) {
  await sleep(1000);
  await waitFor('the recorder\'s answers', () => page.evaluate(() =>
    window.__answers.length >= window.__sent));
}

// --- scripted visits ------------------------------------------------------

const PAGE_VIEWS = [
  {
    path: 'shop.html',
    async act(page) {
      await page.mouse.move(50, 120);
      await page.mouse.move(640, 420, { steps: 25 });
      for (const card of ['spade', 'tomato', 'watering can']) {
        await page.hover(`.card[data-name="${card}"]`);
        await page.click(`.card[data-name="${card}"] button`);   // the cart list grows
      }
      await sleep(800);
      await page.click('#search');
      await page.keyboard.type('seed', { delay: 40 });            // cards hide
      await page.selectOption('#sort', 'price');                  // cards move
      await page.check('#in-stock');
      await sleep(800);
      await page.mouse.wheel(0, 450);
      await page.mouse.move(300, 300, { steps: 10 });
    },
    leave: (page) => page.click('#to-article'),
  },
  {
    path: 'article.html',
    async act(page) {
      for (let i = 0; i < 4; i++) {
        await page.mouse.wheel(0, 250);
        await sleep(120);
      }
      await page.click('#details summary');
      // An inner scroller. rrweb throttles scroll events of all elements
      // together (100 ms) and keeps the first of a burst: a page scroll
      // just before or after would hide this one from the recording.
      await page.hover('#calendar');
      await sleep(300);
      await page.mouse.wheel(0, 180);
      await sleep(800);
      await page.click('#more');
      await page.click('#more');
      await page.fill('#comment', '');
      await page.type('#comment', 'Great plan, thanks!', { delay: 25 });
      await page.click('#post');
      await page.mouse.wheel(0, 300);
    },
    leave: (page) => page.click('#to-todo'),
  },
  {
    path: 'todo.html',
    async act(page) {
      for (const job of ['weed the carrots', 'water tomatoes', 'sow lettuce', 'turn compost']) {
        await page.click('#new-todo');
        await page.keyboard.type(job, { delay: 15 });
        await page.keyboard.press('Enter');
      }
      await sleep(800);
      await page.click('#todos li:nth-child(2) input[type=checkbox]');
      await page.click('#todos li:nth-child(4) input[type=checkbox]');
      await page.click('#todos li:nth-child(1) button');           // delete
      await page.type('#new-todo', 'half-typed', { delay: 15 });
    },
    // The visit ends on the replay page, of the same origin, so that the
    // log in sessionStorage can be read there. A last click first: events
    // for the batch sent on unload.
    async leave(page) {
      await page.click('h1');
      await page.goto(`${PAGES}/replay.html`);
    },
  },
];

// Wait until the page at `file` has loaded and started its recorder.
async function onPage(page, file) {
  try {
    await page.waitForURL((url) => url.pathname === `/${file}`, { timeout: 10_000 });
    await page.waitForFunction(() => window.__recorder, null, { timeout: 10_000 });
    return true;
  } catch (e) {
    return false;
  }
}

async function newContext() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`       [page error] ${e.message}`));
  return { context, page, posts: captureNetwork(context) };
}

async function recordedVisit(query = '') {
  const { context, page, posts } = await newContext();
  const views = [];
  await page.goto(`${PAGES}/${PAGE_VIEWS[0].path}${query}`);
  for (const view of PAGE_VIEWS) {
    // Reached by the previous page's leave(), as a visitor would.
    check(await onPage(page, view.path), `the visit is on ${view.path}`, page.url());
    const info = await page.evaluate(() => ({
      sessionId: window.__recorder.sessionId, pageId: window.__recorder.pageId,
      userAgent: navigator.userAgent,
    }));
    await view.act(page);
    await settle(page);
    views.push({ ...info, path: view.path, live: await liveSummary(page) });
    await view.leave(page);
  }
  const sent = await sentLog(page);
  const conns = await wsLog(page);
  await waitFor('the network answers', () => posts.every((p) => p.status !== null), 3000);
  await context.close();
  return { views, sent, posts, conns };
}

// One WebSocket page view during which nginx reloads: its old workers
// acknowledge what they read and close with 1001.
async function reconnectVisit() {
  const { context, page } = await newContext();
  await page.goto(`${PAGES}/shop.html?transport=ws`);
  await onPage(page, 'shop.html');
  const info = await page.evaluate(() => ({
    sessionId: window.__recorder.sessionId, pageId: window.__recorder.pageId,
  }));
  for (const card of ['spade', 'tomato']) await page.click(`.card[data-name="${card}"] button`);
  await settle(page);
  // Events, and the reload while their batch may be on the wire.
  await page.click('.card[data-name="watering can"] button');
  await page.mouse.move(50, 120);
  await page.mouse.move(640, 420, { steps: 15 });
  await sleep(500);
  process.kill(Number(fs.readFileSync(path.join(RUN, 'logs/nginx.pid'), 'utf8')), 'SIGHUP');
  for (let i = 0; i < 6; i++) {
    await page.click('#search');
    await page.keyboard.type(`s${i}`, { delay: 30 });
    await sleep(250);
  }
  await page.mouse.wheel(0, 300);
  await sleep(1500);   // the reconnect backoff is 1 s
  await settle(page);
  // No click after this: Playwright would scroll the target into view.
  const live = await liveSummary(page);
  const conns = await wsLog(page);
  await page.goto(`${PAGES}/replay.html`);
  const sent = await sentLog(page);
  await context.close();
  return { ...info, path: 'shop.html', live, sent, conns };
}

// The worker processes of our nginx: the children of the master named in
// its pid file.
function nginxWorkers() {
  const master = Number(fs.readFileSync(path.join(RUN, 'logs/nginx.pid'), 'utf8'));
  const workers = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    let stat;
    let cmdline;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      cmdline = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch (e) {
      continue;   // gone meanwhile
    }
    // "pid (comm) state ppid ...", where comm may hold anything.
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(ppid) === master && state !== 'Z' && cmdline.startsWith('nginx: worker process')) {
      workers.push(Number(name));
    }
  }
  return workers;
}

// The bytes sent to Redis that it has not read (while it is stopped): the
// receive queues of the connections on its port, from /proc/net/tcp.
function redisUnread() {
  const port = `:${REDIS_PORT.toString(16).toUpperCase().padStart(4, '0')}`;
  let bytes = 0;
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const [, local, , state, queues] = line.trim().split(/\s+/);
    if (state === '01' && local.endsWith(port)) bytes += parseInt(queues.split(':')[1], 16);
  }
  return bytes;
}

// A WebSocket page view whose nginx worker dies while Redis, stopped,
// holds the replies of its RPUSHes (see the top of this file).
async function workerKillVisit() {
  const { context, page } = await newContext();
  await page.goto(`${PAGES}/shop.html?transport=ws`);
  await onPage(page, 'shop.html');
  const info = await page.evaluate(() => ({
    sessionId: window.__recorder.sessionId, pageId: window.__recorder.pageId,
  }));
  // A batch acknowledged first: the site's settings are then in the
  // module's cache, and the next batches need Redis only for the RPUSH.
  await page.click('.card[data-name="spade"] button');
  await settle(page);
  const sentBefore = (await sentLog(page)).length;
  const answersBefore = await page.evaluate(() => window.__answers.length);
  const cards = ['tomato', 'carrot', 'gloves', 'watering can'];
  let pending = [];
  let unread = 0;
  let answersAtKill = -1;
  let killed = [];
  let respawned = false;
  process.kill(REDIS_PID, 'SIGSTOP');
  try {
    // Events until three more batches are on the socket.
    let step = 0;
    await waitFor('three batches sent while Redis is stopped', async () => {
      await page.mouse.move(80 + (step * 131) % 1000, 120 + (step * 71) % 560, { steps: 6 });
      if (step % 3 === 0) await page.click(`.card[data-name="${cards[(step / 3) % cards.length]}"] button`);
      step++;
      pending = (await sentLog(page)).slice(sentBefore);
      return pending.length >= 3;
    }, 30_000);
    // The module took the first and wrote its RPUSH (the element holds the
    // batch's JSON): those bytes wait in Redis's socket.
    await waitFor('the RPUSH of the first in Redis\'s socket',
      () => pending.length > 0 && redisUnread() >= pending[0].json.length);
    unread = redisUnread();
    answersAtKill = await page.evaluate(() => window.__answers.length);
    killed = nginxWorkers();
    for (const pid of killed) process.kill(pid, 'SIGKILL');
    // Redis goes on only once they are gone (and the master has started
    // new ones): no reply may reach a worker that could still acknowledge.
    respawned = await waitFor('the master to replace the killed workers', () => {
      const now = nginxWorkers();
      return now.length === killed.length && now.every((pid) => !killed.includes(pid));
    });
  } finally {
    process.kill(REDIS_PID, 'SIGCONT');
  }
  // The recorder reconnects (after its 1 s backoff) and sends again what
  // was not acknowledged; wait until every batch sent has been queued.
  await waitFor('every batch acknowledged after the reconnect', async () => {
    const seqs = (await sentLog(page)).map((s) => JSON.parse(s.json).seq);
    const queued = new Set((await page.evaluate(() => window.__answers))
      .filter((a) => a.outcome === 'queued').map((a) => a.seq));
    return seqs.every((seq) => queued.has(seq));
  }, 30_000);
  const answers = await page.evaluate(() => window.__answers);
  // No click after this: Playwright would scroll the target into view.
  const live = await liveSummary(page);
  const conns = await wsLog(page);
  await page.goto(`${PAGES}/replay.html`);
  const sent = await sentLog(page);
  await context.close();
  return {
    ...info, path: 'shop.html', live, sent, conns, answers, sentBefore, answersBefore,
    pending: pending.map((s) => JSON.parse(s.json).seq), firstBytes: pending[0] && pending[0].json.length,
    unread, answersAtKill, killed, respawned,
  };
}

// A visit to a site whose first answer stops the recorder: two page views.
async function stoppedVisit(site, transport = '') {
  const { context, page } = await newContext();
  await page.goto(`${PAGES}/shop.html?site=${site}${transport && `&transport=${transport}`}`);
  const sessionId = await page.evaluate(() => window.__recorder.sessionId);
  await page.click('.card[data-name="spade"] button');
  await waitFor('the first answer', () => page.evaluate(() => window.__answers.length > 0));
  const answers = await page.evaluate(() => window.__answers);
  const stopped = await page.evaluate(() => window.__recorder.stopped);
  // More to record, which must not be sent; then the next page of the visit.
  await page.click('.card[data-name="tomato"] button');
  await page.mouse.wheel(0, 300);
  await sleep(1000);
  await page.click('#to-article');
  await onPage(page, 'article.html');
  const next = await page.evaluate(() => ({
    sessionId: window.__recorder.sessionId, stopped: window.__recorder.stopped,
  }));
  await page.click('#more');
  await sleep(1000);
  const sent = await sentLog(page);
  const conns = await wsLog(page);
  await context.close();
  return { sessionId, answers, stopped, next, sent, conns };
}

// --- Redis -----------------------------------------------------------------

async function queueElements(redis) {
  const keys = (await redis.command('KEYS', 'recording:queue:*')).map(String).sort();
  const elements = [];
  for (const key of keys) {
    for (const raw of await redis.command('LRANGE', key, 0, -1)) {
      elements.push({ key, raw, doc: JSON.parse(raw) });
    }
  }
  return elements;
}

// The elements whose client bytes are not what the browser sent for their
// seq (each sent message's JSON, by seq; a resend is the same JSON).
function notAsSent(elements, sent) {
  const bySeq = new Map();
  for (const s of sent) bySeq.set(JSON.parse(s.json).seq, s.json);
  return elements.filter((e) => {
    const parts = splitIngest(e.raw);
    return !parts || !parts.client.equals(bySeq.get(e.doc.seq));
  });
}

// --- the checks ---------------------------------------------------------------

function checkRecordedVisit(visit, elements) {
  const { views, sent, posts } = visit;
  const session = views[0].sessionId;
  console.log(`\n# site 1: a visit of ${views.length} page views, session ${session}`);
  check(views.every((v) => v.sessionId === session), 'one session_id for the whole visit');
  check(new Set(views.map((v) => v.pageId)).size === views.length, 'a page_id per page view');

  // What the recorder sent.
  const docs = sent.map((s) => JSON.parse(s.json));
  console.log('#   page            seq  encoding  keepalive  bytes sent  JSON bytes  events (type.source)');
  sent.forEach((s, i) => {
    const kinds = docs[i].events.map((ev) => (ev.type === 3 ? `3.${ev.data.source}` : ev.type));
    console.log(`#   ${s.page.padEnd(14)} ${String(docs[i].seq).padStart(4)}  ${s.encoding.padEnd(8)}  `
      + `${String(s.keepalive).padEnd(9)}  ${String(s.bytes.length).padStart(10)}  `
      + `${String(s.json.length).padStart(10)}  ${kinds.join(' ').slice(0, 60)}`);
  });
  let eventCount = 0;
  for (const view of views) {
    const mine = docs.filter((d) => d.page_id === view.pageId);
    const seqs = mine.map((d) => d.seq);
    check(mine.length >= 2 && same(seqs, [...seqs.keys()]),
      `${view.path}: batches sent with seq 0..${mine.length - 1}, in order`, `seqs: ${seqs}`);
    const events = mine.flatMap((d) => d.events);
    eventCount += events.length;
    view.batches = mine.length;
    view.events = events.length;
  }
  check(docs.every((d) => d.session_id === session), 'every batch carries the session_id');
  const gzip = sent.filter((s) => s.encoding === 'gzip').length;
  const unload = sent.filter((s) => s.unloading);
  check(gzip > 0 && sent.every((s) => s.encoding === 'gzip' || s.keepalive),
    'batches are gzip-compressed (CompressionStream), those sent while unloading are not',
    `gzip ${gzip}, identity ${unload.length}`);
  // Usually a page's last batch goes out as it unloads; when the flush
  // timer fires between the last event and the navigation, it goes out
  // just before, compressed, and the unload has nothing left to send.
  const lastOfView = (s, i) => i === sent.length - 1 || sent[i + 1].page !== s.page
    || JSON.parse(sent[i + 1].json).seq === 0;
  check(unload.length >= 1 && unload.length <= views.length
    && sent.every((s, i) => s.encoding === 'gzip' || (s.unloading && s.keepalive && lastOfView(s, i))),
    `pages sent their last batch while unloading, with keepalive (${unload.length} of ${views.length})`,
    unload.map((s) => s.page).join(', '));
  check(sent.every((s) => s.keepalive === (s.bytes.length <= 60 * 1024)),
    'fetch keepalive for every batch small enough for it');

  // The network agrees with the recorder's log (Chromium's automation does
  // not see the requests of an unloading page: those are only in the log).
  const logged = sent.map((s) => s.bytes.toString('base64'));
  let at = 0;
  const inOrder = posts.every((p) => {
    at = logged.indexOf(p.body.toString('base64'), at);
    return at++ >= 0;
  });
  check(posts.length >= sent.length - views.length && inOrder,
    'the POST bodies on the network are the logged ones, in order',
    `${posts.length} on the network, ${sent.length} logged`);
  // A POST still in flight when its page went away has no answer to see
  // (it reached Redis all the same, checked below).
  // Likewise a body the page took with it is unknown, not wrong.
  const answered = posts.filter((p) => p.status !== null);
  const read = answered.filter((p) => p.answer !== null);
  check(answered.length >= posts.length - views.length
    && read.length >= posts.length - 2 * views.length
    && answered.every((p) => p.status === 202)
    && read.every((p) => p.answer === '{"status":"queued"}'),
    `every answer seen is 202 {"status":"queued"} (${answered.length} of ${posts.length}, `
    + `${read.length} bodies read)`,
    posts.map((p) => `${p.status} ${p.answer}`).join('; '));

  // Redis: every batch once, the client's bytes kept, in the order sent.
  const mine = elements.filter((e) => e.doc.session_id === session);
  check(new Set(mine.map((e) => e.key)).size === 1, 'the session is in one queue',
    [...new Set(mine.map((e) => e.key))].join(' '));
  const index = new Map(docs.map((d, i) => [`${d.page_id}/${d.seq}`, i]));
  const order = mine.map((e) => index.get(`${e.doc.page_id}/${e.doc.seq}`));
  check(mine.length === sent.length && same([...order].sort((a, b) => a - b), [...sent.keys()]),
    `Redis holds the ${sent.length} batches of the session, each once`,
    `found ${mine.length}: ${order}`);
  const mismatched = [];
  const ingests = [];
  mine.forEach((e, i) => {
    const parts = splitIngest(e.raw);
    if (!parts || order[i] === undefined || !parts.client.equals(sent[order[i]].json)) mismatched.push(i);
    if (parts) ingests.push(parts);
  });
  check(mismatched.length === 0,
    'each Redis element is the browser\'s JSON byte for byte, plus _ingest as its last member',
    `elements differing: ${mismatched}`);
  // A batch may be queued before one sent earlier only if it was sent
  // while that one could still be in flight.
  const overtakes = [];
  order.forEach((later, i) => order.slice(i + 1).forEach((earlier) => {
    if (earlier < later) overtakes.push([earlier, later]);
  }));
  const unexplained = overtakes.filter(([earlier, later]) =>
    !sent.slice(earlier + 1, later + 1).some((s) => s.overlaps));
  const overlapping = sent.filter((s) => s.overlaps).length;
  check(order.every((x) => x !== undefined) && unexplained.length === 0,
    `Redis has them in the order sent (${overlapping} sent while another could be in flight, `
    + `${overtakes.length} overtook one)`,
    `Redis order: ${order}`);
  const ua = views[0].userAgent;
  const badIngest = ingests.filter(({ ingest }) =>
    !same(Object.keys(ingest), ['site_id', 'received_at', 'ip', 'user_agent', 'country', 'request_id'])
    || ingest.site_id !== 1 || ingest.ip !== '127.0.0.1' || ingest.user_agent !== ua
    || ingest.country !== null || !/^[0-9a-f]{32}$/.test(ingest.request_id)
    || !(ingest.received_at >= STARTED - 1000 && ingest.received_at <= Date.now()));
  check(badIngest.length === 0, '_ingest: the six fields, site 1, the browser\'s address and User-Agent',
    badIngest.map((b) => b.ingestText).join('\n       '));
  check(new Set(ingests.map((p) => p.ingest.request_id)).size === ingests.length,
    'a distinct request_id per batch');

  // The kinds of events the interactions produce.
  const all = mine.flatMap((e) => e.doc.events);
  const incremental = (source) => all.filter((ev) => ev.type === 3 && ev.data.source === source).length;
  const kinds = {
    meta: all.filter((ev) => ev.type === 4).length,
    full_snapshot: all.filter((ev) => ev.type === 2).length,
    mutation: incremental(0),
    mouse_move: incremental(1),
    mouse_interaction: incremental(2),
    scroll: incremental(3),
    input: incremental(5),
  };
  check(kinds.meta === views.length && kinds.full_snapshot === views.length
    && Object.values(kinds).every((n) => n > 0),
    'events: a meta and a full snapshot per page view; mutations, mouse, scroll and input',
    JSON.stringify(kinds));
  facts.push(`site 1: ${views.length} page views, ${sent.length} batches (${gzip} gzip, `
    + `${unload.length} sent on unload), ${eventCount} events `
    + `(${views.map((v) => `${v.path}: ${v.batches}/${v.events}`).join(', ')}), `
    + `${mine.reduce((n, e) => n + e.raw.length, 0)} bytes in Redis`);
  facts.push(`events by kind: ${JSON.stringify(kinds)}`);
  return mine;
}

// Each page view's events, from Redis in seq order, in rrweb's replayer.
async function checkReplay(views, elements) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${PAGES}/replay.html`);
  for (const view of views) {
    const events = elements.filter((e) => e.doc.page_id === view.pageId)
      .sort((a, b) => a.doc.seq - b.doc.seq)
      .flatMap((e) => e.doc.events);
    const replayed = await page.evaluate(async ({ events, summary }) => {
      const root = document.getElementById('player');
      root.replaceChildren();
      const replayer = new rrweb.Replayer(events, { root, showWarning: false, mouseTail: false });
      // Jump to the end: every event applied.
      replayer.pause(replayer.getMetaData().totalTime + 1);
      await new Promise((r) => setTimeout(r, 300));
      return new Function(`return (${summary})`)()(replayer.iframe.contentDocument);
    }, { events, summary: domSummary.toString() });
    const live = view.live;
    const diffs = Object.keys(live).filter((k) => !same(live[k], replayed[k]));
    check(diffs.length === 0,
      `${view.path}: the replay rebuilds the page: title "${replayed.title}", `
      + `${replayed.elements} elements, text, form fields, scroll positions`,
      diffs.map((k) => `${k}: live ${JSON.stringify(live[k])} replayed ${JSON.stringify(replayed[k])}`)
        .join('\n       '));
  }
  await context.close();
}

function checkStoppedVisit(visit, site, status, outcome, elements, over = '') {
  console.log(`\n# site ${site}${over}: ${outcome}`);
  const first = visit.answers[0] || {};
  check(visit.answers.length === 1 && first.status === status && first.outcome === outcome,
    `the first batch is answered ${status} ${outcome}`, JSON.stringify(visit.answers));
  check(visit.stopped === outcome, 'the recorder stops', `stopped: ${visit.stopped}`);
  check(visit.next.sessionId === visit.sessionId && visit.next.stopped === outcome,
    'the next page of the visit does not record', JSON.stringify(visit.next));
  check(visit.sent.length === 1, 'one batch sent in the whole visit', `${visit.sent.length} sent`);
  check(!elements.some((e) => e.doc.session_id === visit.sessionId), 'nothing of it in Redis');
  facts.push(`site ${site}${over}: ${visit.sent.length} batch sent, answered `
    + `${status === null ? 'on the socket' : status} ${outcome}, then silence`);
}

// The same visit over the WebSocket transport.
function checkWsVisit(visit, elements) {
  const { views, sent, conns } = visit;
  const session = views[0].sessionId;
  console.log(`\n# site 1 over WebSocket: a visit of ${views.length} page views, session ${session}`);
  check(views.every((v) => v.sessionId === session), 'one session_id for the whole visit');
  check(new Set(views.map((v) => v.pageId)).size === views.length, 'a page_id per page view');
  check(conns.length === views.length && conns.every((c) => c.opened)
    && views.every((v) => conns.filter((c) => c.page === `/${v.path}`).length === 1),
    'one WebSocket per page view, each opened', JSON.stringify(conns));
  const docs = sent.map((s) => JSON.parse(s.json));
  console.log('#   page            seq  transport  encoding  bytes sent  JSON bytes');
  sent.forEach((s, i) => console.log(`#   ${s.page.padEnd(14)} ${String(docs[i].seq).padStart(4)}  `
    + `${s.transport.padEnd(9)}  ${s.encoding.padEnd(8)}  ${String(s.bytes.length).padStart(10)}  `
    + `${String(s.json.length).padStart(10)}`));
  for (const view of views) {
    const seqs = docs.filter((d) => d.page_id === view.pageId).map((d) => d.seq);
    check(seqs.length >= 2 && same(seqs, [...seqs.keys()]),
      `${view.path}: batches sent with seq 0..${seqs.length - 1}, in order`, `seqs: ${seqs}`);
    view.batches = seqs.length;
  }
  const ws = sent.filter((s) => s.transport === 'websocket');
  check(ws.length >= sent.length - views.length && ws.every((s) => s.encoding === 'gzip'),
    'batches are binary gzip messages on the socket',
    `${ws.length} of ${sent.length}; ${sent.map((s) => `${s.transport}/${s.encoding}`).join(' ')}`);
  check(sent.every((s) => s.transport === 'websocket'
    || (s.unloading && s.keepalive && s.encoding === 'identity' && s.contentType === null)),
    'only a batch cut as its page unloads goes by POST (fetch keepalive, no Content-Type: no preflight)',
    sent.filter((s) => s.transport !== 'websocket').map((s) => `${s.page} ${s.unloading}`).join(', '));

  const mine = elements.filter((e) => e.doc.session_id === session);
  const index = new Map(docs.map((d, i) => [`${d.page_id}/${d.seq}`, i]));
  const order = mine.map((e) => index.get(`${e.doc.page_id}/${e.doc.seq}`));
  check(mine.length === sent.length && same([...order].sort((a, b) => a - b), [...sent.keys()]),
    `Redis holds the ${sent.length} batches of the session, each once`, `found ${mine.length}: ${order}`);
  const mismatched = [];
  const badId = [];
  mine.forEach((e, i) => {
    const parts = splitIngest(e.raw);
    if (!parts || order[i] === undefined || !parts.client.equals(sent[order[i]].json)) mismatched.push(i);
    const idForm = order[i] !== undefined && sent[order[i]].transport === 'websocket'
      ? /^[0-9a-f]{32}-[1-9][0-9]*$/ : /^[0-9a-f]{32}$/;
    if (!parts || !idForm.test(parts.ingest.request_id) || parts.ingest.site_id !== 1) badId.push(i);
  });
  check(mismatched.length === 0, 'each Redis element is the browser\'s JSON byte for byte, plus _ingest',
    `elements differing: ${mismatched}`);
  check(badId.length === 0, '_ingest: site 1; request_id is the upgrade\'s followed by -n for messages',
    badId.map((i) => splitIngest(mine[i].raw)?.ingestText).join('\n       '));
  const inSeqOrder = views.every((v) => {
    const seqs = mine.filter((e) => e.doc.page_id === v.pageId).map((e) => e.doc.seq);
    return same(seqs, [...seqs.keys()]);
  });
  check(inSeqOrder, 'Redis has each page view\'s batches in seq order', `Redis order: ${order}`);
  facts.push(`site 1 over WebSocket: ${views.length} page views, ${sent.length} batches (${ws.length} `
    + `on the socket, ${sent.length - ws.length} by POST on unload) `
    + `(${views.map((v) => `${v.path}: ${v.batches}`).join(', ')})`);
  return mine;
}

// The page view during which nginx reloaded.
function checkReconnect(visit, elements) {
  console.log(`\n# site 1 over WebSocket, nginx reloaded mid-page: session ${visit.sessionId}`);
  const { sent, conns } = visit;
  const docs = sent.map((s) => JSON.parse(s.json));
  check(conns.length >= 2 && conns[0].opened && conns[0].code === 1001 && conns[1].opened,
    'the server closed the first connection with 1001, the recorder opened another',
    JSON.stringify(conns));
  const last = Math.max(...docs.map((d) => d.seq));
  const mine = elements.filter((e) => e.doc.session_id === visit.sessionId);
  const firstSeen = [];
  for (const e of mine) if (!firstSeen.includes(e.doc.seq)) firstSeen.push(e.doc.seq);
  check(last >= 2 && same(firstSeen, [...Array(last + 1).keys()]),
    `every batch (seq 0..${last}) is in Redis at least once, in seq order once duplicates are dropped`,
    `Redis seqs: ${mine.map((e) => e.doc.seq)}`);
  const differing = notAsSent(mine, sent);
  check(differing.length === 0 && mine.every((e) => e.doc.page_id === visit.pageId),
    'each element is the browser\'s JSON of its seq, byte for byte', `${differing.length} differ`);
  const resent = sent.length - new Set(docs.map((d) => d.seq)).size;
  facts.push(`reconnect: ${conns.length} connections (first closed ${conns[0] && conns[0].code}), `
    + `${sent.length} messages for ${last + 1} batches (${resent} resent), `
    + `${mine.length} elements in Redis (${mine.length - last - 1} duplicates)`);
  // Duplicates out, for the replay.
  return mine.filter((e, i) => mine.findIndex((o) => o.doc.seq === e.doc.seq) === i);
}

// The page view whose nginx worker was killed with batches unacknowledged.
function checkWorkerKill(visit, elements) {
  console.log(`\n# site 1 over WebSocket, nginx's workers killed with batches unacknowledged: session ${visit.sessionId}`);
  const { sent, conns, pending } = visit;
  const docs = sent.map((s) => JSON.parse(s.json));
  check(pending.length >= 3 && visit.answersAtKill === visit.answersBefore,
    `Redis stopped: ${pending.length} batches (seq ${pending.join(', ')}) went on the socket, none acknowledged`,
    `answers before ${visit.answersBefore}, at the kill ${visit.answersAtKill}`);
  check(visit.unread >= visit.firstBytes,
    `the module had sent the RPUSH of seq ${pending[0]}: ${visit.unread} bytes unread in Redis's socket `
    + `(its JSON: ${visit.firstBytes})`);
  check(visit.killed.length >= 1 && visit.respawned,
    `SIGKILL to our nginx's ${visit.killed.length} workers, which its master replaced`, visit.killed.join(' '));
  check(conns.length >= 2 && conns[0].opened && conns[0].code === 1006 && conns.slice(1).every((c) => c.opened),
    'the socket dropped without a close frame (1006), the recorder opened another', JSON.stringify(conns));
  // What went on the later connections, in order: first the batches left
  // unacknowledged, then the rest.
  const later = sent.map((s, i) => (s.transport === 'websocket' && s.conn > 0 ? docs[i].seq : null))
    .filter((seq) => seq !== null);
  check(same(later.slice(0, pending.length), pending),
    `the unacknowledged batches were sent again, in seq order, first on the new connection`,
    `on later connections: ${later}`);
  const resentQueued = pending.every((seq) => visit.answers.some((a) => a.seq === seq && a.outcome === 'queued'));
  check(resentQueued, 'and acknowledged queued there', JSON.stringify(visit.answers));

  const mine = elements.filter((e) => e.doc.session_id === visit.sessionId);
  const last = Math.max(...docs.map((d) => d.seq));
  const counts = new Map();
  for (const e of mine) counts.set(e.doc.seq, (counts.get(e.doc.seq) || 0) + 1);
  const twice = [...counts].filter(([, n]) => n > 1).map(([seq]) => seq);
  const firstCopies = mine.filter((e) => e.doc.seq === pending[0]).map((e) => splitIngest(e.raw));
  check(counts.get(pending[0]) === 2 && firstCopies.every(Boolean)
    && firstCopies[0].ingest.request_id !== firstCopies[1].ingest.request_id,
    `Redis holds seq ${pending[0]} twice, with two request_ids: the dead worker's RPUSH and the resend `
    + `(seqs twice: ${twice.join(', ')})`, `Redis seqs: ${mine.map((e) => e.doc.seq)}`);
  check(last >= pending[pending.length - 1] && [...Array(last + 1).keys()].every((seq) => counts.has(seq))
    && [...counts.values()].every((n) => n <= 2),
    `every batch (seq 0..${last}) is in Redis, none more than twice`, `Redis seqs: ${mine.map((e) => e.doc.seq)}`);
  const differing = notAsSent(mine, sent);
  check(differing.length === 0 && mine.every((e) => e.doc.page_id === visit.pageId),
    'each element (both copies too) is the browser\'s JSON of its seq, byte for byte', `${differing.length} differ`);
  facts.push(`worker kill: ${pending.length} batches unacknowledged, ${visit.unread} bytes unread by Redis, `
    + `${visit.killed.length} workers killed, ${conns.length} connections, ${sent.length} messages for `
    + `${last + 1} batches, ${mine.length} elements in Redis (seq ${twice.join(', ')} twice)`);
  return mine.filter((e, i) => mine.findIndex((o) => o.doc.seq === e.doc.seq) === i);
}

// A page view's file from the storage worker: each of its batches once, in
// seq order, the browser's JSON apart from _ingest.
function checkStoredOnce(out, visit, what) {
  const file = path.join(out, '1', `${visit.sessionId}.jsonl`);
  const lines = fs.existsSync(file) ? fs.readFileSync(file).toString('utf8').split('\n') : [];
  const lastEmpty = lines.pop() === '';
  const bySeq = new Map();
  for (const s of visit.sent) bySeq.set(JSON.parse(s.json).seq, s.json);
  const stored = lines.map((line) => {
    const raw = Buffer.from(line, 'utf8');
    const parts = splitIngest(raw);
    const doc = JSON.parse(line);
    return { seq: doc.seq, same: Boolean(parts) && doc.page_id === visit.pageId
      && parts.client.equals(bySeq.get(doc.seq) || Buffer.alloc(0)) };
  });
  check(lastEmpty && same(stored.map((b) => b.seq), [...Array(bySeq.size).keys()]) && stored.every((b) => b.same),
    `${path.relative(RUN, file)} (${what}): seq 0..${bySeq.size - 1} once each, in order, `
    + 'the browser\'s JSON byte for byte apart from _ingest',
    `seqs: ${stored.map((b) => b.seq)}; differing: ${stored.filter((b) => !b.same).map((b) => b.seq)}`);
}

// scripts/storage-worker drains the queues into files.
async function checkStorageWorker(redis, session, elements, sessions, resent) {
  console.log('\n# storage worker');
  const out = path.join(RUN, 'out');
  const started = Date.now();
  const worker = spawnSync(path.join(repo, 'scripts/storage-worker'),
    ['--redis', `redis://127.0.0.1:${REDIS_PORT}`, '--out', out, '--name', 'e2e', '--drain'],
    { encoding: 'utf8', timeout: 30_000 });
  check(worker.status === 0, 'scripts/storage-worker --drain exits 0',
    `${worker.status} ${worker.error || ''}\n${worker.stderr}`);
  const left = (await redis.command('KEYS', 'recording:*')).map(String)
    .filter((k) => !k.startsWith('recording:site:') && !k.startsWith('recording:budget:'));
  check(left.length === 0, 'queues and the processing list are empty', left.join(' '));
  const file = path.join(out, '1', `${session}.jsonl`);
  const lines = fs.existsSync(file) ? fs.readFileSync(file).toString('utf8').split('\n') : [];
  const lastEmpty = lines.pop() === '';
  // Page views in the order they started, each one's batches by seq: here,
  // as the browser sent them.
  const expected = elements.map((e) => e.raw.toString('utf8'));
  check(lastEmpty && same(lines, expected),
    `${path.relative(RUN, file)}: the ${expected.length} batches, one per line, in page view and seq order`,
    `${lines.length} lines`);
  const files = fs.readdirSync(out, { recursive: true }).filter((f) => f.endsWith('.jsonl'));
  check(files.length === sessions, `${sessions} files, one per site 1 session: the sampled-out, disabled, `
    + 'unknown and over-budget visits have none', files.join(' '));
  for (const [visit, what] of resent) checkStoredOnce(out, visit, what);
  facts.push(`storage worker: ${lines.length} batches into ${files.length} file in ${Date.now() - started} ms`);
}

// --- main ----------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',   // Debian's; never a downloaded one
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  timeout: 30_000,
});
const redis = await resp.connect(REDIS_PORT);
try {
  console.log(`# Chromium ${browser.version()}, pages on ${PAGES}, module on ${INGEST}`);
  const visit = await recordedVisit();
  const sampled = await stoppedVisit(2);
  const disabled = await stoppedVisit(3);
  const overBudget = await stoppedVisit(4);
  const wsVisit = await recordedVisit('?transport=ws');
  const wsSampled = await stoppedVisit(2, 'ws');
  const wsDisabled = await stoppedVisit(3, 'ws');
  const wsUnknown = await stoppedVisit(99, 'ws');
  // The module's figures before the reload (which may start them afresh).
  await waitFor('every batch in Redis',
    async () => (await queueElements(redis)).length >= visit.sent.length + wsVisit.sent.length);
  const status = await (await fetch(`${INGEST}/recording-status`)).json();
  const queuedBefore = (await queueElements(redis)).filter((e) => e.doc._ingest.site_id === 1).length;
  const reconnect = await reconnectVisit();
  const seqsOf = (v) => new Set(v.sent.map((s) => JSON.parse(s.json).seq)).size;
  await waitFor('every batch in Redis',
    async () => (await queueElements(redis)).length >= visit.sent.length + wsVisit.sent.length + seqsOf(reconnect));
  const killVisit = await workerKillVisit();
  const killSeqs = seqsOf(killVisit);
  await waitFor('every batch of the worker kill in Redis, the first unacknowledged one twice', async () => {
    const theirs = (await queueElements(redis)).filter((e) => e.doc.session_id === killVisit.sessionId);
    return new Set(theirs.map((e) => e.doc.seq)).size >= killSeqs
      && theirs.filter((e) => e.doc.seq === killVisit.pending[0]).length >= 2;
  });
  const elements = await queueElements(redis);

  const mine = checkRecordedVisit(visit, elements);
  await checkReplay(visit.views, mine);
  checkStoppedVisit(sampled, 2, 200, 'sampled_out', elements);
  checkStoppedVisit(disabled, 3, 403, 'site_disabled', elements);
  checkStoppedVisit(overBudget, 4, 429, 'quota_exceeded', elements);

  const wsMine = checkWsVisit(wsVisit, elements);
  await checkReplay(wsVisit.views, wsMine);
  checkStoppedVisit(wsSampled, 2, null, 'sampled_out', elements, ' over WebSocket');
  check(wsSampled.conns.length === 1 && wsSampled.conns[0].opened
    && wsSampled.sent.every((s) => s.transport === 'websocket'),
    'the batch went on the socket; its acknowledgement stopped the recorder', JSON.stringify(wsSampled.conns));
  checkStoppedVisit(wsDisabled, 3, 403, 'site_disabled', elements, ' over WebSocket');
  checkStoppedVisit(wsUnknown, 99, 404, 'unknown_site', elements, ' over WebSocket');
  for (const [v, what] of [[wsDisabled, 'disabled'], [wsUnknown, 'unknown']]) {
    check(v.conns.length === 1 && !v.conns[0].opened && v.sent.every((s) => s.transport === 'post'),
      `${what} site: the upgrade fails before open, the batch goes by POST, no other socket`,
      JSON.stringify({ conns: v.conns, sent: v.sent.map((s) => s.transport) }));
  }

  const reMine = checkReconnect(reconnect, elements);
  await checkReplay([reconnect], reMine);
  const killMine = checkWorkerKill(killVisit, elements);
  await checkReplay([killVisit], killMine);

  console.log('\n# the module');
  // site 3: a POST, and over WebSocket the refused upgrade and the POST.
  check(status.preflights >= 1 && status.batches.queued === queuedBefore
    && status.batches.sampled_out === 2 && status.batches.site_disabled === 3
    && status.batches.quota_exceeded === 1,
    'its figures (before the reload): CORS preflights answered, batches queued, sampled out, refused',
    JSON.stringify({ preflights: status.preflights, batches: status.batches }));
  facts.push(`module: ${status.preflights} CORS preflight(s), ${status.batches.queued} queued`);

  await checkStorageWorker(redis, visit.views[0].sessionId, mine, 4,
    [[reconnect, 'the nginx reload'], [killVisit, 'the workers killed']]);
} catch (e) {
  check(false, 'the test ran to its end', e.stack);
} finally {
  redis.close();
  await browser.close();
}

console.log('\n# summary');
for (const fact of facts) console.log(`#   ${fact}`);
console.log(`#   browser part: ${((Date.now() - STARTED) / 1000).toFixed(1)} s`);
if (failures.length) console.log(`#   failed: ${failures.join('; ')}`);
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
