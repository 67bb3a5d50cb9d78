// Tries to connect and prints the HTTP status the server refused the upgrade with (or that it opened).
// Usage: node reject.mjs URL
import WebSocket from 'ws';

const [url] = process.argv.slice(2);
const ws = new WebSocket(url, { handshakeTimeout: 10_000 });
ws.on('unexpected-response', (request, response) => {
  console.log(JSON.stringify({ opened: false, status: response.statusCode }));
  request.destroy();
  process.exit(0);
});
ws.on('open', () => {
  console.log(JSON.stringify({ opened: true }));
  ws.terminate();
});
ws.on('error', (error) => {
  console.error(`reject: ${error}`);
  process.exit(2);
});
