// What the e2e scripts (e2e.mjs, record-payloads.mjs) read batches with.
import { gunzipSync } from 'node:zlib';

// The module appends `,"_ingest":{...}` as the last member of the client's
// object: what comes before it must be the client's bytes.
export function splitIngest(raw) {
  const text = raw.toString('utf8');
  const at = text.lastIndexOf(',"_ingest":{');
  if (at < 0 || !text.endsWith('}}')) return null;
  return {
    client: Buffer.concat([raw.subarray(0, Buffer.byteLength(text.slice(0, at))), Buffer.from('}')]),
    ingest: JSON.parse(text.slice(at + ',"_ingest":'.length, -1)),
    ingestText: text.slice(at + ',"_ingest":'.length, -1),
  };
}

// The bodies the recorder handed to fetch or to a WebSocket, as logged by
// boot.js in sessionStorage: [{page, transport, encoding, keepalive,
// unloading, overlaps, ..., bytes (as sent), json (decompressed)}].
export async function sentLog(page) {
  const log = await page.evaluate(() => JSON.parse(sessionStorage.getItem('e2e-sent') || '[]'));
  return log.map((e) => {
    const bytes = e.text !== null ? Buffer.from(e.text, 'utf8') : Buffer.from(e.base64, 'base64');
    const json = e.encoding === 'gzip' ? gunzipSync(bytes) : bytes;
    return { ...e, bytes, json };
  });
}
