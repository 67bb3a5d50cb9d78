// Connects, sends the given text messages, then closes with CODE and REASON; prints the close code
// and reason the server answered with as one JSON line.
// Usage: node close.mjs URL CODE REASON [MESSAGE...]
import WebSocket from 'ws';

const [url, code, reason, ...texts] = process.argv.slice(2);
const timer = setTimeout(() => {
  console.error('close: no close within 10 s');
  process.exit(3);
}, 10_000);

const ws = new WebSocket(url);
ws.on('open', () => {
  for (const text of texts) ws.send(text);
  ws.close(Number(code), reason);
});
ws.on('error', (error) => {
  console.error(`close: ${error}`);
  process.exit(2);
});
ws.on('close', (answered, answeredReason) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ code: answered, reason: answeredReason.toString() }));
});
