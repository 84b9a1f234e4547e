// A minimal Redis client for the e2e checks: one command at a time over one
// connection, replies as Buffers (list elements are compared byte for byte),
// integers as numbers, arrays as arrays, errors thrown.
import net from 'node:net';

export async function connect(port, host = '127.0.0.1') {
  const socket = net.createConnection({ port, host });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let buffer = Buffer.alloc(0);
  let waiting = null;   // {resolve, reject} of the command in progress
  socket.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    if (!waiting) return;
    let parsed;
    try {
      parsed = parse(buffer, 0);
    } catch (e) {
      waiting.reject(e);
      waiting = null;
      return;
    }
    if (!parsed) return;   // incomplete: wait for more
    buffer = buffer.subarray(parsed.end);
    const w = waiting;
    waiting = null;
    if (parsed.value instanceof Error) w.reject(parsed.value);
    else w.resolve(parsed.value);
  });
  socket.on('error', (e) => waiting && waiting.reject(e));

  function command(...args) {
    if (waiting) throw new Error('resp: one command at a time');
    const parts = [`*${args.length}\r\n`];
    for (const arg of args) {
      const b = Buffer.isBuffer(arg) ? arg : Buffer.from(String(arg));
      parts.push(`$${b.length}\r\n`, b, '\r\n');
    }
    return new Promise((resolve, reject) => {
      waiting = { resolve, reject };
      socket.write(Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)))));
    });
  }
  return { command, close: () => socket.end() };
}

// One reply from buf at pos: {value, end}, or null when more bytes are needed.
function parse(buf, pos) {
  const eol = buf.indexOf('\r\n', pos);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString('utf8', pos + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+': return { value: line, end: next };
    case '-': return { value: new Error(line), end: next };
    case ':': return { value: Number(line), end: next };
    case '$': {
      const len = Number(line);
      if (len < 0) return { value: null, end: next };
      if (buf.length < next + len + 2) return null;
      return { value: buf.subarray(next, next + len), end: next + len + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parse(buf, at);
        if (!item) return null;
        items.push(item.value);
        at = item.end;
      }
      return { value: items, end: at };
    }
    default:
      throw new Error(`resp: unexpected reply type ${JSON.stringify(type)}`);
  }
}
