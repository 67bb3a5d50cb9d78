// Peer server for the Realtime benchmarks: Node + ws, the same contract as samples/Echo.
//   /echo    every message goes back to its sender, same kind, same bytes.
//   /fanout  every message goes to every OTHER /fanout connection (broadcast by iterating clients).
// Usage: node server.mjs --port PORT [--tls CERT.pem KEY.pem]
// permessage-deflate is accepted (no context takeover, like the other servers) when a client offers it;
// on such a connection every send is compressed (threshold 0), which is what the load generator's compressed runs expect.
import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import { WebSocketServer } from 'ws';

const args = process.argv.slice(2);
const port = Number(args[args.indexOf('--port') + 1] || 8080);
const tlsAt = args.indexOf('--tls');
const deflate = {
  zlibDeflateOptions: { level: 1 },
  serverNoContextTakeover: true,
  clientNoContextTakeover: true,
  threshold: 0,
  concurrencyLimit: 10,
};

const handler = (req, res) => { res.writeHead(200); res.end('node-ws echo server: /echo and /fanout'); };
const server = tlsAt >= 0
  ? https.createServer({ cert: fs.readFileSync(args[tlsAt + 1]), key: fs.readFileSync(args[tlsAt + 2]) }, handler)
  : http.createServer(handler);

const echo = new WebSocketServer({ noServer: true, perMessageDeflate: deflate, maxPayload: 64 * 1024 * 1024 });
const fanout = new WebSocketServer({ noServer: true, perMessageDeflate: deflate, maxPayload: 64 * 1024 * 1024 });

echo.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

fanout.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    // ws compresses every send on a connection that negotiated permessage-deflate (threshold 0),
    // once per recipient: ws has no compress-once publish.
    const options = { binary: isBinary };
    for (const client of fanout.clients) {
      if (client !== ws && client.readyState === 1) client.send(data, options);
    }
  });
});

server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0];
  const target = path === '/echo' ? echo : path === '/fanout' ? fanout : null;
  if (!target) { socket.destroy(); return; }
  target.handleUpgrade(req, socket, head, (ws) => target.emit('connection', ws, req));
});

server.listen(port, '127.0.0.1', () => console.log(`node-ws listening on ${port}`));
