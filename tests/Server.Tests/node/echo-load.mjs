// Opens CONNECTIONS ws clients at once to an echo endpoint; each sends MESSAGES numbered text
// messages without waiting and checks they all come back in order. Prints one JSON line.
// Usage: node echo-load.mjs URL [CONNECTIONS] [MESSAGES]
import WebSocket from 'ws';

const [url, connectionsArg = '200', messagesArg = '50'] = process.argv.slice(2);
const connections = Number(connectionsArg);
const messages = Number(messagesArg);
const timer = setTimeout(() => {
  console.error('echo-load: no result within 60 s');
  process.exit(3);
}, 60_000);

function run(index) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const received = [];
    ws.on('open', () => {
      for (let i = 0; i < messages; i++) ws.send(`${index}:${i}`);
    });
    ws.on('message', (data) => {
      received.push(data.toString());
      if (received.length === messages) ws.close(1000, 'done');
    });
    ws.on('error', (error) => resolve({ index, received, error: String(error) }));
    ws.on('close', (code) => resolve({ index, received, code }));
  });
}

const results = await Promise.all(Array.from({ length: connections }, (_, index) => run(index)));
clearTimeout(timer);
const failures = [];
for (const { index, received, error, code } of results) {
  const expected = Array.from({ length: messages }, (_, i) => `${index}:${i}`);
  if (error) failures.push(`connection ${index}: ${error}`);
  else if (JSON.stringify(received) !== JSON.stringify(expected)) {
    failures.push(`connection ${index}: got ${received.length} messages, first wrong ${received.find((m, i) => m !== expected[i])}`);
  } else if (code !== 1000) failures.push(`connection ${index}: closed with ${code}`);
}
console.log(JSON.stringify({ connections: results.length, complete: results.length - failures.length, failures: failures.slice(0, 5) }));
