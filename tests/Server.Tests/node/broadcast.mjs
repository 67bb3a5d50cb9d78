// Opens COUNT clients; once the server greeted each ("id:N" from its Open handler), client 0
// sends one message that the server broadcasts to every other client. Prints, per client, the
// messages it received after the greeting (waiting 300 ms more for stray ones) as one JSON line.
// Usage: node broadcast.mjs URL COUNT
import WebSocket from 'ws';

const [url, countArg = '3'] = process.argv.slice(2);
const count = Number(countArg);
const timer = setTimeout(() => {
  console.error('broadcast: no result within 15 s');
  process.exit(3);
}, 15_000);

const clients = await Promise.all(Array.from({ length: count }, () => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  const client = { ws, received: [] };
  ws.on('error', reject);
  ws.on('message', (data) => {
    const text = data.toString();
    if (text.startsWith('id:')) resolve(client);
    else client.received.push(text);
  });
})));

clients[0].ws.send('hello from node 0');
while (clients.slice(1).some((c) => c.received.length === 0)) await new Promise((r) => setTimeout(r, 10));
await new Promise((r) => setTimeout(r, 300));
for (const { ws } of clients) ws.close(1000);
clearTimeout(timer);
console.log(JSON.stringify({ received: clients.map((c) => c.received) }));
