/*
 * A recording script for ngx_http_recording_module: records the page with
 * rrweb and sends the events in batches to
 * POST <origin>/v1/sites/<site_id>/recordings, as the contract describes.
 *
 * Load rrweb's UMD build first (it defines the global `rrweb`), then this
 * file, then start it:
 *
 *   <script src="/rrweb/rrweb.umd.min.cjs"></script>
 *   <script src="/recorder.js"></script>
 *   <script>
 *     RecordingRecorder.start({
 *       endpoint: 'https://rec.example.com/v1/sites/42/recordings',
 *     });
 *   </script>
 *
 * What it does, and why:
 * - session_id: one per visit, kept in localStorage and renewed after 30
 *   minutes without a batch, so that every page of a visit (and every tab
 *   of it) lands in the same session.
 * - page_id and seq: each page view gets a random page_id and numbers its
 *   batches 0, 1, 2, ... (the contract's seq is per page view).
 * - Batches are sent one at a time, in seq order, gzip-compressed with the
 *   browser's CompressionStream, with fetch(keepalive) so that a batch in
 *   flight survives the page going away. The endpoint is on another origin
 *   and the request carries Content-Encoding, so the browser sends a CORS
 *   preflight first (cached by the browser afterwards).
 * - When the page goes away (pagehide), CompressionStream cannot be used:
 *   it is asynchronous, and an unloading page does not get to run what
 *   comes after an await. So whatever is not yet handed to fetch is sent at
 *   once, uncompressed. The browser allows 64 KiB of keepalive bodies in
 *   flight per page, which is why batches are cut at maxBatchBytes.
 * - 202 queued: done. 200 sampled_out, 403 site_disabled, 404 unknown_site
 *   or 429 quota_exceeded (the site's sessions of the day are used up): the
 *   server will refuse every batch of this visit, so
 *   recording stops, and the visit remembers it so that its next pages do
 *   not record at all. 5xx and network errors: a few retries with backoff.
 *   Other 4xx: this batch can never be accepted; it is dropped.
 * - transport: 'websocket' (opt-in; POST is the default): one WebSocket per
 *   page view to the same URL (ws: or wss:), one message per batch, binary
 *   gzip when CompressionStream is there, else the JSON as text. The batches
 *   sent and not yet acknowledged stay in the outbox, in seq order. The
 *   server answers each message, in order, with {"n":N,...}, N counting the
 *   messages of the connection from 1: queued is done; sampled_out and the
 *   errors of STOP_OUTCOMES stop as for POST; queue_unavailable is sent
 *   again later (up to `retries` times); any other error drops the batch.
 *   If the socket fails before it opens (unknown site 404, disabled 403,
 *   no WebSocket on the server, a proxy in the way), the rest of the page
 *   view goes by POST, which then gets the same answers as always. If it
 *   closes after opening (1001 on a server reload, 1000 idle, the network),
 *   it reconnects with backoff and sends every unacknowledged batch again,
 *   in order, before new ones: the server may have some of them already,
 *   so storage must dedup by session_id, page_id and seq. A 1002 or 1009
 *   close (protocol, message too big) also switches the page view to POST.
 *   On pagehide the batches not yet sent go by fetch(keepalive), as for
 *   POST, but without a Content-Type (the text goes as text/plain, which
 *   the module does not look at): a CORS-simple request needs no
 *   preflight, and a page view on the socket has none cached; a keepalive
 *   request waiting for its preflight as the page unloads was seen lost.
 *   The batches already on the socket are the server's (it acknowledges
 *   what it read before it closes).
 */
(function (global) {
  'use strict';

  const VISIT_IDLE_MS = 30 * 60 * 1000;
  // quota_exceeded: the site's daily session budget is used up; no retry.
  const STOP_OUTCOMES = ['sampled_out', 'site_disabled', 'unknown_site', 'quota_exceeded'];
  // Keepalive bodies in flight are limited to 64 KiB per page, all of them
  // together; bigger bodies go without keepalive (the page is still there).
  const KEEPALIVE_LIMIT = 60 * 1024;

  // The visit: {id, last, stopped} in localStorage, per endpoint. Without
  // storage (privacy modes), a visit is one page view.
  function loadVisit(key, now) {
    let visit = null;
    try {
      visit = JSON.parse(global.localStorage.getItem(key));
    } catch (e) { /* no storage, or not ours */ }
    if (!visit || typeof visit.id !== 'string' || !(now - visit.last < VISIT_IDLE_MS)) {
      visit = { id: newId(), last: now, stopped: null };
    }
    return visit;
  }

  function saveVisit(key, visit) {
    try {
      global.localStorage.setItem(key, JSON.stringify(visit));
    } catch (e) { /* see loadVisit */ }
  }

  // 32 hex digits: within the contract's 1 to 64 of [A-Za-z0-9_-].
  function newId() {
    const bytes = new Uint8Array(16);
    global.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  async function gzip(text) {
    const stream = new Blob([text]).stream().pipeThrough(new CompressionStream('gzip'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function start(options) {
    const opts = Object.assign({
      endpoint: null,          // required: the full URL of the recordings endpoint
      flushInterval: 5000,     // ms between batches while events come in
      maxBatchBytes: 48 * 1024, // a batch is sent once its events reach this
      retries: 3,              // extra attempts after a 5xx or a network error
      retryDelay: 1000,        // ms before the first retry, doubled each time
      recordOptions: {},       // passed to rrweb.record
      onBatch: null,           // called with {seq, encoding, status, outcome} per answer
      transport: 'post',       // or 'websocket' (see the top of this file)
      maxReconnectDelay: 30000, // ms, the cap of the WebSocket reconnect backoff
    }, options);
    if (!opts.endpoint) throw new Error('RecordingRecorder: endpoint is required');

    const visitKey = 'recording-recorder:' + opts.endpoint;
    const visit = loadVisit(visitKey, Date.now());
    saveVisit(visitKey, visit);
    const state = {
      sessionId: visit.id,
      pageId: newId(),
      stopped: visit.stopped,  // an earlier page of this visit was refused
      seq: 0,
      events: [],              // JSON texts of the events not yet in a batch
      eventBytes: 0,
      outbox: [],              // batches not yet answered, in seq order
      pumping: false,
      stopRecording: null,
      timer: null,
      // WebSocket transport: the current connection {ws, open, sent: the
      // batches sent on it, message n at sent[n - 1]}; usePost once the
      // page view has given up on WebSocket.
      usePost: opts.transport !== 'websocket' || typeof global.WebSocket !== 'function',
      conn: null,
      reconnects: 0,
      reconnectTimer: null,
    };

    function report(batch, extra) {
      if (!opts.onBatch) return;
      try {
        opts.onBatch(Object.assign({ seq: batch.seq }, extra));
      } catch (e) { /* a broken callback must not stop the recording */ }
    }

    // Cut the buffered events into a batch. The events were serialized as
    // they came, so the batch text is built by joining them; it is exactly
    // what JSON.stringify would give for the whole object.
    function cutBatch() {
      if (state.events.length === 0 || state.stopped) return;
      const seq = state.seq++;
      const json = '{"session_id":' + JSON.stringify(state.sessionId)
        + ',"page_id":' + JSON.stringify(state.pageId)
        + ',"seq":' + seq
        + ',"events":[' + state.events.join(',') + ']}';
      state.events = [];
      state.eventBytes = 0;
      state.outbox.push({ seq, json, handedOver: false });
      visit.last = Date.now();
      saveVisit(visitKey, visit);
    }

    function stop(reason) {
      if (state.stopped) return;
      state.stopped = reason;
      if (state.stopRecording) state.stopRecording();
      clearInterval(state.timer);
      clearTimeout(state.reconnectTimer);
      state.events = [];
      state.outbox = [];
      if (state.conn) {
        const ws = state.conn.ws;
        state.conn = null;
        try { ws.close(1000); } catch (e) { /* already closing */ }
      }
      if (STOP_OUTCOMES.includes(reason)) {
        visit.stopped = reason;
        saveVisit(visitKey, visit);
      }
    }

    // What the server said: 'done' (move on), 'retry' or 'stop'.
    async function outcomeOf(response) {
      let body = null;
      try {
        body = await response.json();
      } catch (e) { /* not JSON: the status decides */ }
      const outcome = body && (body.status || body.error);
      if (STOP_OUTCOMES.includes(outcome)) return { verdict: 'stop', outcome };
      if (response.status >= 500) return { verdict: 'retry', outcome };
      return { verdict: 'done', outcome };
    }

    // Send one batch, retrying what may work later. Resolves when the batch
    // is answered for good (or given up on).
    async function deliver(batch) {
      let body = new TextEncoder().encode(batch.json);
      let encoding = 'identity';
      if (typeof CompressionStream === 'function') {
        body = await gzip(batch.json);
        encoding = 'gzip';
      }
      for (let attempt = 0; ; attempt++) {
        // The page went away while we were compressing or waiting: the
        // pagehide handler has sent it already.
        if (batch.handedOver || state.stopped) return;
        batch.inFlight = true;
        let result;
        let status = 0;
        try {
          const headers = { 'Content-Type': 'application/json' };
          if (encoding !== 'identity') headers['Content-Encoding'] = encoding;
          const response = await fetch(opts.endpoint, {
            method: 'POST',
            mode: 'cors',
            credentials: 'omit',
            headers,
            body,
            keepalive: body.length <= KEEPALIVE_LIMIT,
          });
          status = response.status;
          result = await outcomeOf(response);
        } catch (e) {
          // A keepalive request of a page that is going away is the
          // browser's to deliver: its promise fails with the page, not
          // with the request. Sending it again would reach the server twice.
          if (body.length <= KEEPALIVE_LIMIT && global.document.visibilityState === 'hidden') {
            batch.inFlight = false;
            batch.handedOver = true;
            return;
          }
          result = { verdict: 'retry', outcome: 'network_error' };
        }
        batch.inFlight = false;
        report(batch, { encoding, status, outcome: result.outcome });
        if (result.verdict === 'stop') {
          stop(result.outcome);
          return;
        }
        if (result.verdict === 'done' || attempt >= opts.retries) return;
        await sleep(opts.retryDelay * 2 ** attempt);
      }
    }

    // --- WebSocket transport -------------------------------------------

    function wsUrl() {
      const url = new URL(opts.endpoint, global.location.href);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      return url.href;
    }

    // Give up on WebSocket for the rest of the page view: what is in the
    // outbox (acknowledged batches are gone from it) goes by POST.
    function toPost() {
      state.usePost = true;
      clearTimeout(state.reconnectTimer);
      state.reconnectTimer = null;
      for (const batch of state.outbox) batch.wsSent = false;
      pump();
    }

    function connect() {
      if (state.conn || state.stopped || state.usePost) return;
      let ws;
      try {
        ws = new global.WebSocket(wsUrl());
      } catch (e) {
        toPost();
        return;
      }
      ws.binaryType = 'arraybuffer';
      const conn = { ws, open: false, sent: [] };
      state.conn = conn;
      ws.onopen = () => {
        if (state.conn !== conn) return;
        conn.open = true;
        wsPump();
      };
      ws.onmessage = (message) => {
        if (state.conn !== conn || typeof message.data !== 'string') return;
        let ack = null;
        try { ack = JSON.parse(message.data); } catch (e) { /* not an ack */ }
        if (ack && typeof ack.n === 'number') onAck(conn, ack);
      };
      ws.onerror = () => { /* onclose follows */ };
      ws.onclose = (event) => {
        if (state.conn !== conn) return;
        state.conn = null;
        for (const batch of state.outbox) batch.wsSent = false;
        if (state.stopped) return;
        // Never opened: the upgrade was refused or the server has no
        // WebSocket. Protocol errors would happen again.
        if (!conn.open || event.code === 1002 || event.code === 1009) {
          toPost();
          return;
        }
        // 1001 (the server reloads), 1000 (idle) or the network: again,
        // later, and resend what was not acknowledged.
        const delay = Math.min(opts.retryDelay * 2 ** state.reconnects, opts.maxReconnectDelay);
        state.reconnects++;
        clearTimeout(state.reconnectTimer);
        state.reconnectTimer = setTimeout(() => {
          state.reconnectTimer = null;
          if (state.outbox.length > 0) connect();
        }, delay);
      };
    }

    function onAck(conn, ack) {
      const batch = conn.sent[ack.n - 1];
      if (!batch) return;
      conn.sent[ack.n - 1] = null;
      state.reconnects = 0;
      const outcome = ack.status || ack.error;
      report(batch, { encoding: batch.wsEncoding, status: null, transport: 'websocket', n: ack.n, outcome });
      if (STOP_OUTCOMES.includes(outcome)) {
        stop(outcome);
        return;
      }
      if (outcome === 'queue_unavailable' && (batch.wsRetries = (batch.wsRetries || 0) + 1) <= opts.retries) {
        // Again after a while, on whichever connection is there then.
        batch.wsSent = false;
        setTimeout(wsPump, opts.retryDelay * 2 ** (batch.wsRetries - 1));
        return;
      }
      // queued, or an error that no resend would change: done with it.
      const at = state.outbox.indexOf(batch);
      if (at >= 0) state.outbox.splice(at, 1);
    }

    // Send, in seq order, every outbox batch not yet on this connection.
    async function wsPump() {
      if (state.pumping || state.stopped) return;
      if (!state.conn) {
        if (state.outbox.length > 0 && !state.reconnectTimer) connect();
        return;
      }
      if (!state.conn.open) return;
      state.pumping = true;
      try {
        for (;;) {
          const conn = state.conn;
          const batch = state.outbox.find((b) => !b.wsSent && !b.handedOver);
          if (!batch || !conn || !conn.open || state.stopped || state.usePost) break;
          if (batch.wsBody === undefined) {
            if (typeof CompressionStream === 'function') {
              batch.wsBody = await gzip(batch.json);
              batch.wsEncoding = 'gzip';
            } else {
              batch.wsBody = batch.json;
              batch.wsEncoding = 'identity';
            }
            continue;   // the connection may have changed meanwhile
          }
          if (conn.ws.readyState !== 1) break;
          conn.ws.send(batch.wsBody);
          batch.wsSent = true;
          conn.sent.push(batch);
        }
      } finally {
        state.pumping = false;
      }
      if (state.usePost) pump();
    }

    // Send the outbox in order, one batch at a time.
    async function pump() {
      if (!state.usePost) {
        wsPump();
        return;
      }
      if (state.pumping) return;
      state.pumping = true;
      try {
        while (state.outbox.length > 0 && !state.stopped) {
          const batch = state.outbox[0];
          await deliver(batch);
          if (state.outbox[0] === batch) state.outbox.shift();
        }
      } finally {
        state.pumping = false;
      }
    }

    function flush() {
      cutBatch();
      pump();
    }

    // The page is going away: hand everything still unsent to the browser
    // now, without compression (see the top of this file). A batch already
    // in flight is the browser's business (keepalive).
    function flushNow() {
      cutBatch();
      // See the top of this file: no preflight on the socket's page views.
      const headers = state.usePost ? { 'Content-Type': 'application/json' } : {};
      for (const batch of state.outbox) {
        if (batch.inFlight || batch.handedOver || batch.wsSent || state.stopped) continue;
        batch.handedOver = true;
        fetch(opts.endpoint, {
          method: 'POST',
          mode: 'cors',
          credentials: 'omit',
          headers,
          body: batch.json,
          keepalive: true,
        }).then(
          (response) => report(batch, { encoding: 'identity', status: response.status }),
          () => report(batch, { encoding: 'identity', status: 0, outcome: 'network_error' }),
        );
      }
      state.outbox = state.outbox.filter((batch) => !batch.handedOver);
      clearTimeout(state.reconnectTimer);
    }

    if (state.stopped) {
      return { sessionId: state.sessionId, pageId: state.pageId, stopped: state.stopped };
    }

    state.stopRecording = global.rrweb.record(Object.assign({}, opts.recordOptions, {
      emit(event) {
        const text = JSON.stringify(event);
        state.events.push(text);
        state.eventBytes += text.length;
        if (state.eventBytes >= opts.maxBatchBytes) flush();
      },
    }));
    state.timer = setInterval(flush, opts.flushInterval);
    global.addEventListener('pagehide', flushNow);
    // A hidden page may be frozen or discarded without a pagehide: send
    // what there is while it can still be compressed.
    global.document.addEventListener('visibilitychange', () => {
      if (global.document.visibilityState === 'hidden') flush();
    });

    return {
      sessionId: state.sessionId,
      pageId: state.pageId,
      get stopped() { return state.stopped; },
      flush,
      stop: () => stop('stopped'),
    };
  }

  global.RecordingRecorder = { start };
})(window);
