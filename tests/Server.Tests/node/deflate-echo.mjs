// Opens one ws client with permessage-deflate to an echo endpoint, sends text and binary messages
// of several sizes (each compressed: threshold 0) and checks every echo. Counts how many messages
// arrived compressed by counting ws's inflations. Prints one JSON line.
// Usage: node deflate-echo.mjs URL [PERMESSAGE_DEFLATE_OPTIONS_JSON]
import WebSocket, { PerMessageDeflate } from 'ws';

const [url, optionsArg = '{}'] = process.argv.slice(2);
const perMessageDeflate = { threshold: 0, ...JSON.parse(optionsArg) };
const timer = setTimeout(() => {
  console.error(`deflate-echo: no result within 20 s (extensions ${extensions}, received ${received}, inflated ${inflated}, state ${ws.readyState})`);
  process.exit(3);
}, 20_000);

// Every compressed message the client receives ends in one decompress call with fin set.
let inflated = 0;
const decompress = PerMessageDeflate.prototype.decompress;
PerMessageDeflate.prototype.decompress = function (data, fin, callback) {
  if (fin) inflated++;
  return decompress.call(this, data, fin, callback);
};

const words = ['alpha', 'κόσμε', 'message', '€', 'realtime', '𤭢', 'deflate', 'window', '{"seq":', '},'];
function textOf(size, seed) {
  const parts = [];
  let length = 0;
  let state = seed + 1;
  while (length < size) {
    state = (state * 1103515245 + 12345) % 2147483648;
    const part = words[state % words.length] + (state % 3 === 0 ? String(state % 100000) : '') + ' ';
    parts.push(part);
    length += Buffer.byteLength(part);
  }
  return parts.join('');
}
function binaryOf(size, seed) {
  const bytes = Buffer.alloc(size);
  let state = seed + 7;
  for (let i = 0; i < size; i++) {
    state = (state * 1103515245 + 12345) % 2147483648;
    bytes[i] = (state >> 16) % 16 * 17;
  }
  return bytes;
}

const messages = [];
for (const size of [1, 100, 1000, 20_000, 200_000]) {
  messages.push({ binary: false, data: textOf(size, messages.length) });
  messages.push({ binary: true, data: binaryOf(size, messages.length) });
}

let extensions = null;
let received = 0;
const mismatches = [];
const ws = new WebSocket(url, { perMessageDeflate });
ws.on('upgrade', (response) => {
  extensions = response.headers['sec-websocket-extensions'] ?? null;
});
ws.on('open', () => {
  for (const { binary, data } of messages) ws.send(data, { binary, compress: true });
});
ws.on('message', (data, isBinary) => {
  const expected = messages[received];
  const same = isBinary === expected.binary &&
    (isBinary ? Buffer.compare(data, expected.data) === 0 : data.toString() === expected.data);
  if (!same) mismatches.push(received);
  received++;
  if (received === messages.length) ws.close(1000, 'done');
});
ws.on('error', (error) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ error: String(error), extensions, received, mismatches }));
  process.exit(0);
});
ws.on('close', (code) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ extensions, sent: messages.length, received, inflated, mismatches, code }));
});
