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
      state.events = [];
      state.outbox = [];
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

    // Send the outbox in order, one batch at a time.
    async function pump() {
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
      for (const batch of state.outbox) {
        if (batch.inFlight || batch.handedOver || state.stopped) continue;
        batch.handedOver = true;
        fetch(opts.endpoint, {
          method: 'POST',
          mode: 'cors',
          credentials: 'omit',
          headers: { 'Content-Type': 'application/json' },
          body: batch.json,
          keepalive: true,
        }).then(
          (response) => report(batch, { encoding: 'identity', status: response.status }),
          () => report(batch, { encoding: 'identity', status: 0, outcome: 'network_error' }),
        );
      }
      state.outbox = state.outbox.filter((batch) => !batch.handedOver);
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
