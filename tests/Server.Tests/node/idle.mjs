// Stays connected without sending for STAY milliseconds (ws answers the server's pings by itself),
// then checks the connection still echoes. Prints the pings seen and the echo as one JSON line.
// Usage: node idle.mjs URL STAY
import WebSocket from 'ws';

const [url, stayArg = '1500'] = process.argv.slice(2);
const timer = setTimeout(() => {
  console.error('idle: no result within 15 s');
  process.exit(3);
}, 15_000);

const ws = new WebSocket(url);
let pings = 0;
let closed = null;
ws.on('ping', () => pings++);
ws.on('close', (code) => { closed = code; });
ws.on('error', (error) => {
  console.error(`idle: ${error}`);
  process.exit(2);
});
ws.on('open', () => {
  setTimeout(() => {
    if (closed !== null) {
      console.log(JSON.stringify({ pings, closedEarly: closed }));
      process.exit(0);
    }
    ws.once('message', (data) => {
      clearTimeout(timer);
      console.log(JSON.stringify({ pings, echo: data.toString() }));
      ws.close(1000);
    });
    ws.send('still here');
  }, Number(stayArg));
});
