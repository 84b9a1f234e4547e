// Starts the recorder on the e2e pages. The ingest origin comes from
// /e2e-config.js (written by scripts/e2e, as nginx serves these pages on
// another port than the module), the site id from ?site=N (default 1),
// the transport from ?transport=ws, the flush interval from ?flush=MS.
(function () {
  'use strict';
  const params = new URLSearchParams(location.search);
  const site = params.get('site') || '1';
  // Links keep ?site=N, so a visit stays on its site.
  document.querySelectorAll('a[href]').forEach((a) => {
    if (a.origin === location.origin) a.search = location.search;
  });

  // Test only: log every body the recorder hands to fetch for the module,
  // in sessionStorage, which outlives the page. The test reads it at the
  // end of the visit: batches sent while a page unloads are not seen by
  // the browser's automation, but they are here.
  //
  // Two batches in flight at once may reach Redis in either order; the
  // log says when a batch may have overlapped an earlier one: sent while
  // another was unanswered, or first of a page whose predecessor's last
  // batch left as it unloaded (its answer is never seen).
  const realFetch = window.fetch;
  let inFlight = 0;
  let unloading = false;
  window.addEventListener('pagehide', () => { unloading = true; });   // before the recorder's
  window.__sent = 0;   // by this page view
  window.fetch = function (url, init) {
    if (String(url).startsWith(window.E2E_INGEST) && init && init.method === 'POST') {
      const log = JSON.parse(sessionStorage.getItem('e2e-sent') || '[]');
      const previous = log[log.length - 1];
      const body = init.body;
      const entry = {
        page: location.pathname,
        transport: 'post',
        encoding: (init.headers && init.headers['Content-Encoding']) || 'identity',
        contentType: (init.headers && init.headers['Content-Type']) || null,
        keepalive: Boolean(init.keepalive),
        unloading,
        overlaps: inFlight > 0 || (window.__sent === 0 && Boolean(previous && previous.unloading)),
        // Exactly the bytes: a string as it is (fetch sends it as UTF-8),
        // bytes in base64.
        text: typeof body === 'string' ? body : null,
        base64: typeof body === 'string' ? null : btoa(Array.from(body, (b) => String.fromCharCode(b)).join('')),
      };
      log.push(entry);
      sessionStorage.setItem('e2e-sent', JSON.stringify(log));
      window.__sent++;
      inFlight++;
      const done = () => { inFlight--; };
      const response = realFetch.apply(this, arguments);
      response.then(done, done);
      return response;
    }
    return realFetch.apply(this, arguments);
  };

  // Likewise every WebSocket message the recorder sends to the module
  // (transport 'websocket', with the connection's number in the visit), and
  // every connection in 'e2e-ws': [{page, opened, code}], code once closed.
  const RealWebSocket = window.WebSocket;
  const wsLog = (change) => {
    const log = JSON.parse(sessionStorage.getItem('e2e-ws') || '[]');
    const result = change(log);
    sessionStorage.setItem('e2e-ws', JSON.stringify(log));
    return result;
  };
  window.WebSocket = function (url, protocols) {
    const ws = protocols === undefined ? new RealWebSocket(url) : new RealWebSocket(url, protocols);
    const conn = wsLog((log) => log.push({ page: location.pathname, opened: false, code: null }) - 1);
    ws.addEventListener('open', () => wsLog((log) => { log[conn].opened = true; }));
    ws.addEventListener('close', (e) => wsLog((log) => { log[conn].code = e.code; }));
    const realSend = ws.send;
    ws.send = function (data) {
      const log = JSON.parse(sessionStorage.getItem('e2e-sent') || '[]');
      log.push({
        page: location.pathname,
        transport: 'websocket',
        conn,
        encoding: typeof data === 'string' ? 'identity' : 'gzip',
        keepalive: false,
        unloading,
        overlaps: true,
        text: typeof data === 'string' ? data : null,
        base64: typeof data === 'string' ? null
          : btoa(Array.from(data instanceof Uint8Array ? data : new Uint8Array(data), (b) => String.fromCharCode(b)).join('')),
      });
      sessionStorage.setItem('e2e-sent', JSON.stringify(log));
      window.__sent++;
      return realSend.apply(ws, arguments);
    };
    return ws;
  };
  window.WebSocket.prototype = RealWebSocket.prototype;
  window.WebSocket.OPEN = RealWebSocket.OPEN;

  window.__answers = [];
  window.__recorder = RecordingRecorder.start({
    endpoint: window.E2E_INGEST + '/v1/sites/' + site + '/recordings',
    // Several batches per page in a short test; ?flush=MS for another
    // pace (scripts/record-payloads uses the recorder's default, 5000).
    flushInterval: Number(params.get('flush')) || 700,
    onBatch: (answer) => window.__answers.push(answer),
    transport: params.get('transport') === 'ws' ? 'websocket' : 'post',
  });
})();
